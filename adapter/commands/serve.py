"""`wattscale serve`: the aggregated API server for custom.metrics.k8s.io (and optionally external)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HELP = "serve custom.metrics.k8s.io (v1beta1, v1beta2) as an aggregated API server"

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML settings: collectors, racks, window (see README)")
    parser.add_argument("--kubeconfig", type=Path, help="cluster access; default: in-cluster when in a pod")
    parser.add_argument("--bind-address", default="0.0.0.0")
    parser.add_argument("--secure-port", type=int, default=6443)
    parser.add_argument("--tls-cert-file", type=Path)
    parser.add_argument("--tls-private-key-file", type=Path)
    parser.add_argument(
        "--cert-dir", type=Path, help="where a self-signed pair is written when none is given"
    )
    parser.add_argument(
        "--enable-external-metrics",
        action="store_true",
        help="also serve external.metrics.k8s.io/v1beta1 (off: KEDA owns that group in most clusters)",
    )
    parser.add_argument(
        "--insecure-disable-auth",
        action="store_true",
        help="serve without authentication or authorization (only for a cluster-less test bench)",
    )
    parser.add_argument("--log-level", default="info")


_invalid_budgets_logged: set[str] = set()


def power_budget_racks(objects: Sequence[Any]) -> list[Any]:
    """Racks defined by PowerBudget objects, parsed exactly as the operator parses them (the operator
    owns the PowerBudget API: one definition of what a valid budget is); an invalid budget defines no
    rack, and says why once."""
    from adapter.selectors import parse_selector
    from adapter.settings import RackSettings
    from poweroperator.budget import BudgetError, parse_budget

    racks = []
    for obj in objects:
        try:
            budget = parse_budget({"metadata": {"name": obj.name}, "spec": dict(obj.spec)})
        except BudgetError as exc:
            if obj.name not in _invalid_budgets_logged:
                _invalid_budgets_logged.add(obj.name)
                log.warning("racks.power_budget_invalid", extra={"rack": obj.name, "problems": exc.problems})
            continue
        racks.append(
            RackSettings(
                name=budget.name,
                cap_watts=budget.cap_watts,
                margin_ratio=budget.margin_ratio,
                node_selector=parse_selector(budget.node_selector),
            )
        )
    return racks


_overridden_racks_logged: set[str] = set()


def merge_racks(configured: Sequence[Any], from_budgets: Sequence[Any]) -> list[Any]:
    """Config racks plus PowerBudget racks; a PowerBudget replaces a config rack of the same name,
    because the cluster's object is what operators edit and what the capper enforces."""
    budget_names = {rack.name for rack in from_budgets}
    for name in budget_names & {rack.name for rack in configured} - _overridden_racks_logged:
        _overridden_racks_logged.add(name)
        log.warning("racks.config_overridden", extra={"rack": name, "by": "PowerBudget"})
    return [*(rack for rack in configured if rack.name not in budget_names), *from_budgets]


def cluster_racks(settings: Any, index: Any) -> list[Any]:
    """Config racks and the PowerBudgets' racks, from the worker's object index."""
    from adapter.catalogue import POWER_BUDGETS

    return merge_racks(settings.racks, power_budget_racks(index.objects(POWER_BUDGETS, None)))


async def _serve(args: argparse.Namespace) -> int:
    from kubernetes_asyncio import client, config

    from adapter.api import ApiSettings
    from adapter.auth import AllowAllAuthenticator, Authenticator, Authorizer
    from adapter.kube_auth import (
        AUTH_WATCH_TASK,
        ExtensionAuthentication,
        KubeAccessReviewer,
        KubeTokenReviewer,
    )
    from adapter.kube_cache import KubeIndexSource
    from adapter.plugins import settings_collectors
    from adapter.selfmetrics import SelfMetrics
    from adapter.server import ServingSettings, running, serving_tls, until_signalled
    from adapter.settings import Settings
    from adapter.store import MetricStore
    from adapter.worker import NoIndexSource, WorkerSpec

    settings = Settings.from_file(args.config) if args.config else Settings()
    collectors = functools.partial(settings_collectors, settings)
    store = MetricStore(max_age_seconds=settings.max_age_seconds)
    self_metrics = SelfMetrics()
    serving = ServingSettings(
        bind_address=args.bind_address,
        port=args.secure_port,
        tls_cert_file=args.tls_cert_file,
        tls_private_key_file=args.tls_private_key_file,
        cert_dir=args.cert_dir,
    )
    in_cluster = "KUBERNETES_SERVICE_HOST" in os.environ
    if args.kubeconfig is None and not in_cluster:
        if not args.insecure_disable_auth:
            print(
                "wattscale serve: no cluster (no --kubeconfig, not in a pod), so no way to authenticate callers; "
                "pass --insecure-disable-auth to serve anyway",
                file=sys.stderr,
            )
            return 2
        log.warning("auth.disabled", extra={"reason": "--insecure-disable-auth"})
        worker = WorkerSpec(
            settings=settings, collectors=collectors, index=NoIndexSource(), log_level=args.log_level
        )
        async with running(
            serving=serving,
            tls=serving_tls(serving, request_client_certificates=False),
            worker=worker,
            store=store,
            index=worker.index.serving_index(store),
            authenticator=AllowAllAuthenticator(),
            authorizer=None,
            self_metrics=self_metrics,
            api_settings=ApiSettings(enable_external_metrics=args.enable_external_metrics),
        ):
            await until_signalled()
        return 0

    if args.kubeconfig is not None:
        await config.load_kube_config(config_file=str(args.kubeconfig))
    else:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    async with client.ApiClient() as api:
        tls_holder: list[Any] = []

        def on_auth_change(auth_config: Any) -> None:
            if tls_holder:
                tls_holder[0].update_client_cas(auth_config.ca_pem())

        extension = ExtensionAuthentication(api, on_auth_change, self_metrics=self_metrics)
        resource_version = await extension.load()
        tls = serving_tls(serving, request_client_certificates=True, client_ca_pem=extension.current.ca_pem())
        tls_holder.append(tls)
        # The object cache runs in the worker, which needs the objects for estimation; the server
        # mirrors it from the worker's reports.
        worker = WorkerSpec(
            settings=settings,
            collectors=collectors,
            index=KubeIndexSource(args.kubeconfig),
            racks=cluster_racks,
            log_level=args.log_level,
        )
        async with running(
            serving=serving,
            tls=tls,
            worker=worker,
            store=store,
            index=worker.index.serving_index(store),
            authenticator=Authenticator(lambda: extension.current, KubeTokenReviewer(api, self_metrics)),
            authorizer=Authorizer(KubeAccessReviewer(api, self_metrics)),
            self_metrics=self_metrics,
            api_settings=ApiSettings(enable_external_metrics=args.enable_external_metrics),
        ) as serving_now:
            # The first watch resumes from the version just loaded; a restarted one lists again.
            resume_from = iter([resource_version])
            serving_now.supervisor.start(AUTH_WATCH_TASK, lambda: extension.follow(next(resume_from, "")))
            log.info("serve.listening", extra={"address": args.bind_address, "port": args.secure_port})
            await until_signalled()
    return 0


def run(args: argparse.Namespace) -> int:
    from adapter import logs
    from adapter.errors import ConfigError

    logs.configure(args.log_level)
    try:
        return asyncio.run(_serve(args))
    except ConfigError as exc:
        print(f"wattscale serve: {exc}", file=sys.stderr)
        return 2

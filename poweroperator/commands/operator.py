"""`wattscale operator` (alias `capper`): reconcile every PowerBudget (leader-elected; see poweroperator)."""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from collectors.durations import duration_seconds

HELP = (
    "keep racks under their PowerBudget caps: GPU power limits, KEDA-scaled workloads bounded by the "
    "budget, and placement away from overdrawn racks"
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", type=Path, help="cluster access; default: in-cluster when in a pod")
    parser.add_argument(
        "--identity",
        default=os.environ.get("POD_NAME") or socket.gethostname(),
        help="this replica's name in the Lease (default: $POD_NAME, else the host name)",
    )
    parser.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE", "kube-system"),
        help="namespace of the leader-election Lease (default: $POD_NAMESPACE, else kube-system)",
    )
    parser.add_argument(
        "--lease-name", default="wattscale-operator", help="Lease name (default: wattscale-operator)"
    )
    parser.add_argument("--lease-seconds", type=int, default=15, help="lease duration (default: 15)")
    parser.add_argument(
        "--interval-seconds", type=duration_seconds, default=1.0, help="control period (default: 1)"
    )
    parser.add_argument(
        "--replica-period-seconds",
        type=duration_seconds,
        default=15.0,
        help="how often replica ceilings are reconsidered (default: 15, one HPA sync)",
    )
    parser.add_argument(
        "--agent-url-template",
        default="http://{node_ip}:9477",
        help="node agent base URL; {node_name} and {node_ip} are filled in; a node's annotation "
        "wattscale.io/agent-url overrides it (default: http://{node_ip}:9477)",
    )
    parser.add_argument(
        "--agent-token-file", type=Path, help="bearer token the agents accept for power-limit changes"
    )
    parser.add_argument(
        "--adapter-url",
        default="https://wattscale.wattscale.svc:443",
        help="where KEDA reaches the adapter: the power trigger's URL starts with it "
        "(default: https://wattscale.wattscale.svc:443)",
    )
    parser.add_argument(
        "--keda-namespace", default="keda", help="namespace of KEDA's operator (default: keda)"
    )
    parser.add_argument(
        "--keda-service-account",
        default="keda-operator",
        help="KEDA operator's ServiceAccount, allowed to mint the power reader's token (default: keda-operator)",
    )
    parser.add_argument(
        "--placement-after-seconds",
        type=duration_seconds,
        default=30.0,
        help="how long a rack must be without headroom (or back above the hysteresis band) before its "
        "nodes are marked PreferNoSchedule (or cleared) (default: 30)",
    )
    parser.add_argument(
        "--reconcile-period-seconds",
        type=duration_seconds,
        default=15.0,
        help="how often KEDA objects and placement marks are reconciled (default: 15)",
    )
    parser.add_argument(
        "--metrics-address", default="0.0.0.0", help="bind address of /metrics (default: 0.0.0.0)"
    )
    parser.add_argument(
        "--metrics-port", type=int, default=9465, help="port of /metrics and /healthz (default: 9465)"
    )
    parser.add_argument("--once", action="store_true", help="run one period (if leader) and exit")
    parser.add_argument("--log-level", default="info")


def run(args: argparse.Namespace) -> int:
    import asyncio
    import sys

    if args.interval_seconds <= 0:
        print("operator: --interval-seconds must be > 0", file=sys.stderr)
        return 2
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib
    import logging
    import signal
    import sys

    import aiohttp
    from aiohttp import web
    from kubernetes_asyncio import client, config
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from poweroperator.agents import AgentClient
    from poweroperator.cluster import KubeCluster, KubeObjectClient
    from poweroperator.keda import FIELD_MANAGER, KedaSettings
    from poweroperator.lease import LeaseElector
    from poweroperator.loop import Capper, CapperMetrics
    from poweroperator.placement import PlacementReconciler
    from poweroperator.scaling import ScalingReconciler

    log = logging.getLogger("poweroperator")

    if args.kubeconfig is not None:
        await config.load_kube_config(config_file=str(args.kubeconfig))
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    else:
        print("operator: no cluster (no --kubeconfig, not in a pod)", file=sys.stderr)
        return 2
    token = args.agent_token_file.read_text(encoding="utf-8").strip() if args.agent_token_file else None

    metrics = CapperMetrics()

    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.metrics_address, args.metrics_port).start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)

    async with client.ApiClient() as api, aiohttp.ClientSession() as session:
        elector = LeaseElector(
            client.CoordinationV1Api(api),
            namespace=args.lease_namespace,
            name=args.lease_name,
            identity=args.identity,
            lease_seconds=args.lease_seconds,
        )
        cluster = KubeCluster(api, agent_url_template=args.agent_url_template, identity=args.identity)
        capper = Capper(
            cluster,
            AgentClient(session, token=token),
            metrics=metrics,
            identity=args.identity,
            replica_period_seconds=args.replica_period_seconds,
            reconcile_period_seconds=args.reconcile_period_seconds,
        )
        keda = KedaSettings(
            adapter_url=args.adapter_url,
            keda_namespace=args.keda_namespace,
            keda_service_account=args.keda_service_account,
        )
        capper.reconcilers += [
            ScalingReconciler(KubeObjectClient(api, field_manager=FIELD_MANAGER), keda, capper.event),
            PlacementReconciler(cluster, capper.event, after_seconds=args.placement_after_seconds),
        ]
        try:
            while not stop.is_set():
                started = loop.time()
                leading = await elector.try_acquire_or_renew()
                metrics.leader.set(1.0 if leading else 0.0)
                if leading:
                    try:
                        await capper.run_once()
                    except (aiohttp.ClientError, OSError, TimeoutError) as exc:  # API server unreachable
                        log.warning("operator.period_failed", extra={"error": f"{type(exc).__name__}: {exc}"})
                if args.once:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        stop.wait(), max(0.0, args.interval_seconds - (loop.time() - started))
                    )
        finally:
            await elector.release()
            await runner.cleanup()
    return 0

"""`wattscale demo`: the whole adapter on a simulated H100 fleet, no cluster needed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import multiprocessing
import sys
from collections.abc import Iterable, Sequence
from typing import Any

HELP = "serve the custom metrics API over a simulated fleet of H100 LLM servers (no cluster needed)"

log = logging.getLogger(__name__)
FIRST_RATES_TIMEOUT_SECONDS = 60.0
RACKS = (
    {"name": "rack-a", "cap_watts": 17000, "margin_ratio": 0.05},
    {"name": "rack-b", "cap_watts": 17000, "margin_ratio": 0.05},
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=6443, help="HTTPS port (default 6443)")
    parser.add_argument("--window-seconds", type=float, default=30.0, help="estimator window (default 30)")
    parser.add_argument(
        "--exit-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop after this long (default: run until ^C)",
    )
    parser.add_argument(
        "--surge-rack",
        action="append",
        default=[],
        metavar="RACK",
        help="start with every GPU of RACK at 700 W, driving it over its cap (repeatable); "
        "at run time: POST or DELETE /demo/surge/RACK",
    )
    parser.add_argument("--log-level", default="warning")


class SurgeSwitch:
    """Which racks surge: flags in memory shared with the worker process, where the simulated
    collector runs, so the demo's HTTP knob reaches it without a restart."""

    def __init__(self, racks: Sequence[str], surging: Iterable[str] = ()) -> None:
        self.racks = tuple(racks)
        # The worker is spawned; shared memory from the same context travels with its arguments.
        self._flags = multiprocessing.get_context("spawn").Array("b", len(self.racks))
        for rack in surging:
            self.set(rack, surging=True)

    def set(self, rack: str, *, surging: bool) -> None:
        self._flags[self.racks.index(rack)] = surging

    def __contains__(self, rack: object) -> bool:
        return rack in self.racks and bool(self._flags[self.racks.index(str(rack))])

    def surging(self) -> list[str]:
        return [rack for rack in self.racks if rack in self]


def demo_objects() -> list[Any]:
    """The simulated fleet's Kubernetes objects; built alike in the server and its worker."""
    from adapter.catalogue import DEPLOYMENTS, INFERENCE_SERVICES, NAMESPACES, NODES, PODS, POWER_BUDGETS
    from adapter.objects import KubeObject
    from adapter.selectors import selector_from_object
    from collectors.simulated import demo_fleet

    fleet = demo_fleet()
    objects = [KubeObject(NODES, "", node.name, node.labels) for node in fleet.nodes]
    objects += [KubeObject(PODS, pod.namespace, pod.name, pod.labels, node=pod.node) for pod in fleet.pods]
    for workload in fleet.workloads:
        resource = DEPLOYMENTS if workload.kind == "Deployment" else INFERENCE_SERVICES
        objects.append(
            KubeObject(
                resource,
                workload.namespace,
                workload.name,
                {"app": workload.name},
                pod_selector=selector_from_object({"matchLabels": dict(workload.selector)}),
                replicas=workload.replicas,
            )
        )
    objects += [
        KubeObject(NAMESPACES, "", namespace, {}) for namespace in sorted({p.namespace for p in fleet.pods})
    ]
    objects += [KubeObject(POWER_BUDGETS, "", rack, {}) for rack in sorted({n.rack for n in fleet.nodes})]
    return objects


def demo_collectors(surge: SurgeSwitch | None = None) -> list[Any]:
    from collectors.simulated import SimulatedCollector, SimulatedSettings

    collector = SimulatedCollector("simulated", SimulatedSettings(interval_seconds=1.0))
    if surge is not None:
        collector.surge_racks = surge
    return [collector]


def surge_routes(surge: SurgeSwitch) -> tuple[Any, ...]:
    """`POST /demo/surge/{rack}` puts every GPU of the rack at 700 W, `DELETE` ends it: a rack over its
    cap on demand, for trying the alert rules and the page."""
    from aiohttp import web

    from adapter.api import json_response
    from adapter.connections import status_response

    async def change(request: web.Request) -> web.Response:
        rack = request.match_info["rack"]
        if rack not in surge.racks:
            return status_response(
                404, f"no rack {rack!r} in the demo fleet; racks: {', '.join(surge.racks)}"
            )
        surge.set(rack, surging=request.method == "POST")
        return json_response({"surging": surge.surging()})

    return (web.post("/demo/surge/{rack}", change), web.delete("/demo/surge/{rack}", change))


def curl_examples(base_url: str) -> list[str]:
    prefix = f"{base_url}/apis/custom.metrics.k8s.io/v1beta2"
    return [
        f"curl -sk '{prefix}/namespaces/llm/pods/%2A/watts_per_token?labelSelector=app%3Dllama-8b'",
        f"curl -sk '{prefix}/namespaces/llm/deployments.apps/mistral-7b/power_watts'",
        f"curl -sk '{prefix}/nodes/h100-a1/rack_power_headroom_watts'",
    ]


async def _demo(args: argparse.Namespace) -> int:
    from adapter.api import ApiSettings
    from adapter.auth import AllowAllAuthenticator
    from adapter.selfmetrics import SelfMetrics
    from adapter.server import ServingSettings, running, serving_tls, until_signalled
    from adapter.settings import Settings
    from adapter.store import MetricStore
    from adapter.worker import StaticIndexSource, WorkerSpec

    settings = Settings.from_mapping(
        {
            "window_seconds": args.window_seconds,
            "max_age_seconds": max(4 * args.window_seconds, 60.0),
            "racks": RACKS,
        }
    )
    racks = [str(rack["name"]) for rack in RACKS]
    unknown = sorted(set(args.surge_rack) - set(racks))
    if unknown:
        print(
            f"wattscale demo: --surge-rack: no rack {', '.join(unknown)}; racks: {', '.join(racks)}",
            file=sys.stderr,
        )
        return 2
    surge = SurgeSwitch(racks, args.surge_rack)
    store = MetricStore(max_age_seconds=settings.max_age_seconds)
    worker = WorkerSpec(
        settings=settings,
        collectors=functools.partial(demo_collectors, surge),
        index=StaticIndexSource(demo_objects),
        log_level=args.log_level,
    )
    index = worker.index.serving_index(store)
    serving = ServingSettings(bind_address=args.host, port=args.port)
    tls = serving_tls(serving, request_client_certificates=False)
    async with running(
        serving=serving,
        tls=tls,
        worker=worker,
        store=store,
        index=index,
        authenticator=AllowAllAuthenticator(),
        authorizer=None,
        self_metrics=SelfMetrics(),
        api_settings=ApiSettings(enable_external_metrics=True, extra_routes=surge_routes(surge)),
    ):
        await _first_rates(store)
        host = f"[{args.host}]" if ":" in args.host else args.host
        base_url = f"https://{host}:{args.port}"
        print(
            "WARNING: demo mode: authentication and authorization are OFF; anyone who can reach "
            f"{base_url} can read these metrics.",
            file=sys.stderr,
        )
        print(f"wattscale demo: serving custom.metrics.k8s.io for a simulated fleet on {base_url}")
        print("namespace llm: deployments llama-8b, mistral-7b, qwen-72b; inferenceservice granite-chat;")
        print("racks rack-a (nodes h100-a1..a4) and rack-b (h100-b1..b4), 17 kW caps. Try:")
        for command in curl_examples(base_url):
            print(f"  {command}")
        print(f"Live page: {base_url}/ui/   Prometheus series: {base_url}/metrics/power")
        print(f"Drive rack-a over its cap: curl -sk -X POST {base_url}/demo/surge/rack-a  (DELETE ends it)")
        print("Stop with Ctrl-C.", flush=True)
        if args.exit_after is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until_signalled(), args.exit_after)
        else:
            await until_signalled()
    return 0


async def _first_rates(store: Any) -> None:
    """Two polls make a counter rate: print the commands once they would answer with one."""
    from adapter.catalogue import PODS

    deadline = asyncio.get_running_loop().time() + FIRST_RATES_TIMEOUT_SECONDS
    while store.generation == 0 or not store.values_of(PODS, "llm", "watts_per_token"):
        if asyncio.get_running_loop().time() > deadline:
            log.warning("demo.no_rates_yet", extra={"waited_seconds": FIRST_RATES_TIMEOUT_SECONDS})
            return
        await asyncio.sleep(0.1)


def run(args: argparse.Namespace) -> int:
    from adapter import logs

    logs.configure(args.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_demo(args))
    return 0

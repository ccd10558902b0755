"""Latency and throughput of the HPA's Pods query through TLS, with front-proxy authentication.

The adapter runs in a child process pinned to CPU 0 (one core); this process, pinned to CPU 1, sends
requests at a fixed arrival rate (open loop: latency counts from the scheduled send time, so a slow
server cannot hide its queue) and prints percentiles.

    python bench/api_load.py --pods 1000 --rate 500 --seconds 20

The store holds `--pods` pods in 10 Deployments; `--match all` asks for every pod in one request
(1,000 items), `--match deployment` for one Deployment's pods (100 items), as an HPA does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapter.server import PipelineThread

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "unit" / "adapter"))  # pki helpers


def pod_values(pods: int, now: float) -> dict[object, object]:
    from adapter.catalogue import PODS
    from adapter.store import ObjectRef, StoredValue

    return {
        (ObjectRef(PODS, "llm", f"llm-{i % 10}-7d9f5c6b4-{i:05d}"), "watts_per_token"): StoredValue(
            0.2 + (i % 97) / 100, now, 60.0, {"method": "energy_counter"}
        )
        for i in range(pods)
    }


def build_store(pods: int) -> tuple[object, object]:
    from adapter.catalogue import PODS
    from adapter.objects import KubeObject, StaticObjectIndex
    from adapter.store import MetricStore

    store = MetricStore(max_age_seconds=3600.0)
    objects = [
        KubeObject(
            PODS, "llm", f"llm-{i % 10}-7d9f5c6b4-{i:05d}", {"app": f"llm-{i % 10}", "tier": "interactive"}
        )
        for i in range(pods)
    ]
    store.put_all(pod_values(pods, time.time()))  # type: ignore[arg-type]
    return store, StaticObjectIndex(objects)


async def serve(args: argparse.Namespace) -> None:
    from aiohttp import web

    from adapter.api import ApiSettings, create_app
    from adapter.auth import AuthenticationConfig, Authenticator, Authorizer, UserInfo
    from adapter.selfmetrics import SelfMetrics
    from adapter.tls import ServingTls

    class AllowingReviewer:
        """Stands in for the SubjectAccessReview round trip; the Authorizer's cache answers after the first."""

        async def review(self, user: UserInfo, attributes: object) -> tuple[bool, str]:
            return True, ""

    from cryptography import x509

    front_proxy_ca = x509.load_pem_x509_certificate(args.ca_pem)
    config = AuthenticationConfig(requestheader_cas=(front_proxy_ca,), allowed_names=("front-proxy-client",))
    store, index = build_store(args.pods)
    tls = ServingTls(
        Path(args.cert), Path(args.key), request_client_certificates=True, client_ca_pem=config.ca_pem()
    )
    app = create_app(
        store=store,  # type: ignore[arg-type]
        index=index,  # type: ignore[arg-type]
        authenticator=Authenticator(lambda: config, None),
        authorizer=Authorizer(AllowingReviewer()),
        self_metrics_registry=SelfMetrics(),
        settings=ApiSettings(),
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port, ssl_context=tls.listening_context, backlog=2048).start()
    import gc

    gc.freeze()  # as `serve` does once it is up
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def refresh() -> None:
        # As the pipeline does: a whole new snapshot every pass, which invalidates cached answers.
        while True:
            await asyncio.sleep(args.refresh_seconds)
            store.put_all(pod_values(args.pods, time.time()))  # type: ignore[attr-defined]

    refresher = asyncio.create_task(refresh())
    background = None
    if args.pipeline_pods:
        background = build_pipeline(args.pipeline_pods, args.estimate_interval, args.poll_interval)
    if background is not None:
        background.start()
    await stop.wait()
    refresher.cancel()
    if background is not None:
        await background.stop()
    await runner.cleanup()


def build_pipeline(
    pods: int, estimate_interval_seconds: float, poll_interval_seconds: float
) -> PipelineThread:
    """A real pipeline over a simulated fleet of `pods` pods in the same process, run as `serve` runs it."""
    from adapter.estimator_process import ProcessEstimator
    from adapter.objects import StaticObjectIndex
    from adapter.pipeline import Pipeline, history_seconds
    from adapter.selfmetrics import SelfMetrics
    from adapter.server import PipelineThread
    from adapter.settings import Settings
    from adapter.store import MetricStore
    from collectors.simulated import Fleet, SimNode, SimPod, SimulatedCollector, SimulatedSettings

    nodes = tuple(SimNode(f"node-{i}", f"rack-{i // 16}", 8) for i in range(pods // 8 + 1))
    fleet = Fleet(nodes, tuple(SimPod("sim", f"pod-{i}", f"node-{i // 8}", 1, 0.5) for i in range(pods)))
    collector = SimulatedCollector(
        "simulated", SimulatedSettings(interval_seconds=poll_interval_seconds), fleet=fleet
    )
    racks = [{"name": f"rack-{r}", "cap_watts": 60000} for r in range(len(nodes) // 16 + 1)]
    settings = Settings.from_mapping(
        {"window_seconds": 60, "estimate_interval_seconds": estimate_interval_seconds, "racks": racks}
    )
    pipeline = Pipeline(
        [collector],
        store=MetricStore(max_age_seconds=120),
        index=StaticObjectIndex([]),
        settings=settings,
        self_metrics=SelfMetrics(),
        estimator=ProcessEstimator(history_seconds(settings, [collector])),
    )
    return PipelineThread(pipeline)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(args: argparse.Namespace, context: ssl.SSLContext, url: str, server_pid: int) -> None:
    import aiohttp

    headers = {"X-Remote-User": "system:serviceaccount:kube-system:horizontal-pod-autoscaler"}
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sizes: list[int] = []
    connector = aiohttp.TCPConnector(ssl=context, limit=args.connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(20):  # warm up connections and the SAR cache
            async with session.get(url, headers=headers) as response:
                await response.read()

        async def one(scheduled: float) -> None:
            try:
                async with session.get(url, headers=headers) as response:
                    body = await response.read()
                    if response.status != 200:
                        errors[str(response.status)] = errors.get(str(response.status), 0) + 1
                        return
                    sizes.append(len(body))
            except aiohttp.ClientError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            latencies.append(time.perf_counter() - scheduled)

        total = int(args.rate * args.seconds)
        cpu_before = cpu_seconds(server_pid)
        started = time.perf_counter()
        in_flight: set[asyncio.Task[None]] = set()
        for i in range(total):
            # Send each request at its own time, whatever the earlier ones are doing (open loop).
            scheduled = started + i / args.rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(scheduled))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)
        elapsed = time.perf_counter() - started
        server_cpu = cpu_seconds(server_pid) - cpu_before
    latencies.sort()

    def percentile(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    print(f"query: {url.split('/apis/')[1]}")
    print(
        f"pods in store: {args.pods}; items per response: {args.items}; response bytes: {statistics.mean(sizes):.0f}"
    )
    print(f"offered {args.rate:.0f} req/s for {args.seconds:.0f} s over {args.connections} TLS connections")
    print(
        f"completed {len(latencies)} in {elapsed:.1f} s = {len(latencies) / elapsed:.0f} req/s; errors: {errors or 'none'}"
    )
    print(
        f"latency ms: p50 {percentile(50):.2f}  p90 {percentile(90):.2f}  p99 {percentile(99):.2f}  "
        f"max {latencies[-1] * 1000:.2f}"
    )
    print(
        f"server CPU: {server_cpu / elapsed * 100:.0f}% of one core ({server_cpu * 1000 / max(len(latencies), 1):.2f} ms per request)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--match", choices=["all", "deployment"], default="deployment")
    parser.add_argument("--refresh-seconds", type=float, default=1.0, help="new store snapshot this often")
    parser.add_argument(
        "--pipeline-pods", type=int, default=0, help="also run a real pipeline over this many simulated pods"
    )
    parser.add_argument(
        "--estimate-interval", type=float, default=1.0, help="with --pipeline-pods: seconds between passes"
    )
    parser.add_argument(
        "--poll-interval", type=float, default=1.0, help="with --pipeline-pods: seconds between polls"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=18443, help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        args.ca_pem = Path(args.ca).read_bytes()
        asyncio.run(serve(args))
        return 0

    from pki import issue, make_ca

    workdir = Path(tempfile.mkdtemp(prefix="wattscale-bench-"))
    serving_ca, front_proxy_ca = make_ca("bench-serving-ca"), make_ca("bench-front-proxy-ca")
    cert, key = issue(serving_ca, "wattscale", server_hosts=("127.0.0.1",)).write(workdir, "serving")
    (workdir / "front-proxy-ca.crt").write_text(front_proxy_ca.cert_pem)
    client = issue(front_proxy_ca, "front-proxy-client")
    context = client.client_context(workdir, "front-proxy-client", serving_ca.cert_pem)
    pin = ["taskset", "-c", "0"] if os.cpu_count() and os.cpu_count() > 1 else []  # type: ignore[operator]
    server = subprocess.Popen(
        [
            *pin,
            sys.executable,
            __file__,
            "--serve",
            "--pods",
            str(args.pods),
            "--port",
            str(args.port),
            "--refresh-seconds",
            str(args.refresh_seconds),
            "--pipeline-pods",
            str(args.pipeline_pods),
            "--estimate-interval",
            str(args.estimate_interval),
            "--poll-interval",
            str(args.poll_interval),
            "--cert",
            str(cert),
            "--key",
            str(key),
            "--ca",
            str(workdir / "front-proxy-ca.crt"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            print("server did not start", file=sys.stderr)
            return 1
        if pin:
            os.sched_setaffinity(0, {1})
        selector = "app%3Dllm-3" if args.match == "deployment" else "tier%3Dinteractive"
        args.items = args.pods // 10 if args.match == "deployment" else args.pods
        url = (
            f"https://127.0.0.1:{args.port}/apis/custom.metrics.k8s.io/v1beta2/namespaces/llm/pods/%2A/"
            f"watts_per_token?labelSelector={selector}"
        )
        asyncio.run(load(args, context, url, server.pid))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())

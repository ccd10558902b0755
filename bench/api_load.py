"""Latency and throughput of the HPA's Pods query through TLS, with front-proxy authentication, while
the real pipeline runs: `serve`'s server and its worker process (collectors, object index, estimator
passes) over a simulated fleet.

The server (and so its worker) runs pinned to CPU 0; this process, pinned to CPU 1, sends requests at
a fixed arrival rate (open loop: latency counts from the scheduled send time, so a slow server cannot
hide its queue) and prints percentiles, the maximum, errors, CPU and each process's RSS.

    python bench/api_load.py --pods 1000 --rate 500 --seconds 20 --poll-interval 1

The fleet has `--pods` pods in 10 Deployments on 8-GPU nodes, 16 nodes a rack, polled every
`--poll-interval` seconds and estimated after each poll. `--match deployment` asks for one
Deployment's pods (a tenth of them), as an HPA does; `--match all` for every pod in one request.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "unit" / "adapter"))  # pki helpers
sys.path.insert(0, str(HERE.parent))

DEPLOYMENTS = 10
PODS_PER_NODE = 8
NODES_PER_RACK = 16
NAMESPACE = "llm"
READY_TIMEOUT_SECONDS = 300.0
# Who the aggregator says is asking when the HPA controller reads a metric (kubeadm's controller-manager).
HPA_USER = "system:serviceaccount:kube-system:horizontal-pod-autoscaler"


def pod_name(i: int) -> str:
    return f"llm-{i % DEPLOYMENTS}-7d9f5c6b4-{i:05d}"


def bench_fleet(pods: int) -> Any:
    from collectors.simulated import Fleet, SimNode, SimPod

    nodes = tuple(
        SimNode(f"node-{i}", f"rack-{i // NODES_PER_RACK}", PODS_PER_NODE)
        for i in range(pods // PODS_PER_NODE + 1)
    )
    return Fleet(
        nodes,
        tuple(
            SimPod(
                NAMESPACE,
                pod_name(i),
                f"node-{i // PODS_PER_NODE}",
                1,
                0.5,
                {"app": f"llm-{i % DEPLOYMENTS}"},
            )
            for i in range(pods)
        ),
    )


def bench_objects(pods: int) -> list[Any]:
    """What the object index holds: the pods with labels, their nodes in racks, the Deployments."""
    from adapter.catalogue import DEPLOYMENTS as DEPLOYMENT_RESOURCE
    from adapter.catalogue import NODES, PODS
    from adapter.objects import KubeObject
    from collectors.label_selectors import selector_from_object

    fleet = bench_fleet(pods)
    objects = [KubeObject(NODES, "", n.name, {"wattscale.io/rack": n.rack}) for n in fleet.nodes]
    objects += [
        KubeObject(PODS, NAMESPACE, p.name, {**p.labels, "tier": "interactive"}, node=p.node)
        for p in fleet.pods
    ]
    objects += [
        KubeObject(
            DEPLOYMENT_RESOURCE,
            NAMESPACE,
            f"llm-{d}",
            {},
            pod_selector=selector_from_object({"matchLabels": {"app": f"llm-{d}"}}),
            replicas=pods // DEPLOYMENTS,
        )
        for d in range(DEPLOYMENTS)
    ]
    return objects


def bench_collectors(pods: int, poll_interval_seconds: float) -> list[Any]:
    from collectors.simulated import SimulatedCollector, SimulatedSettings

    settings = SimulatedSettings(interval_seconds=poll_interval_seconds)
    return [SimulatedCollector("simulated", settings, fleet=bench_fleet(pods))]


def worker_spec(pods: int, poll_interval_seconds: float, estimate_interval_seconds: float) -> Any:
    from adapter.settings import Settings
    from adapter.worker import StaticIndexSource, WorkerSpec

    racks = [
        {"name": f"rack-{r}", "cap_watts": 60000} for r in range(pods // PODS_PER_NODE // NODES_PER_RACK + 1)
    ]
    settings = Settings.from_mapping(
        {
            "window_seconds": 60,
            "max_age_seconds": 120,
            "estimate_interval_seconds": estimate_interval_seconds,
            "racks": racks,
        }
    )
    return WorkerSpec(
        settings=settings,
        collectors=functools.partial(bench_collectors, pods, poll_interval_seconds),
        index=StaticIndexSource(functools.partial(bench_objects, pods)),
        log_level="warning",
    )


class Distribution:
    """Count, mean, p99 and maximum of durations in constant memory (0.1 ms bins): the probe runs
    inside the server whose RSS `bench/soak_rss.py` watches for ten minutes."""

    BIN_SECONDS = 0.0001

    def __init__(self) -> None:
        self.bins: collections.Counter[int] = collections.Counter()
        self.count = 0
        self.total = 0.0
        self.largest = 0.0

    def add(self, seconds: float) -> None:
        self.bins[int(seconds / self.BIN_SECONDS)] += 1
        self.count += 1
        self.total += seconds
        self.largest = max(self.largest, seconds)

    def above(self, seconds: float) -> int:
        return sum(n for b, n in self.bins.items() if b * self.BIN_SECONDS >= seconds)

    def percentile(self, p: float) -> float:
        rank, seen = p / 100 * self.count, 0
        for b in sorted(self.bins):
            seen += self.bins[b]
            if seen >= rank:
                return min((b + 1) * self.BIN_SECONDS, self.largest)
        return self.largest

    def __str__(self) -> str:
        if not self.count:
            return "none"
        return (
            f"{self.count}, mean {self.total / self.count * 1000:.2f} ms, "
            f"p99 {self.percentile(99) * 1000:.1f} ms, max {self.largest * 1000:.2f} ms"
        )


class ServerProbe:
    """In the server process: what stalls its event loop. Samples the loop's lag (how late a 5 ms
    sleep wakes), times each garbage collection, and the CPU of taking each report from the worker
    (decoding it in the reading thread; installing it on the loop)."""

    TICK_SECONDS = 0.005
    LATE_SECONDS = 0.005

    def __init__(self) -> None:
        self.reset()
        self._gc_started = 0.0

    def reset(self) -> None:
        self.lags = Distribution()
        self.late_ran = self.late_waited = 0.0
        self.worst: list[tuple[float, float, float]] = []
        """(lag, seconds the loop's thread ran, seconds it waited for a CPU) of the latest ticks"""
        self.gc_pauses = {0: Distribution(), 1: Distribution(), 2: Distribution()}
        self.decodes = Distribution()
        self.installs = Distribution()

    def install(self) -> None:
        import gc

        from adapter.worker import WorkerProcess

        gc.callbacks.append(self._on_gc)
        decode, apply = WorkerProcess._decode, WorkerProcess._apply

        def timed_decode(data: bytes) -> Any:
            started = time.thread_time()
            try:
                return decode(data)
            finally:
                self.decodes.add(time.thread_time() - started)

        def timed_apply(worker: Any, *parts: Any) -> None:
            started = time.thread_time()
            try:
                apply(worker, *parts)
            finally:
                self.installs.add(time.thread_time() - started)

        WorkerProcess._decode = staticmethod(timed_decode)  # type: ignore[method-assign,assignment]
        WorkerProcess._apply = timed_apply  # type: ignore[method-assign]

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pauses[info["generation"]].add(time.perf_counter() - self._gc_started)

    async def sample_lag(self) -> None:
        # The loop's thread's nanoseconds on a CPU and waiting for one; read without blocking.
        schedstat = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        while True:
            started = time.perf_counter()
            ran_before, waited_before = (int(f) for f in os.pread(schedstat, 128, 0).split()[:2])
            await asyncio.sleep(self.TICK_SECONDS)
            lag = time.perf_counter() - started - self.TICK_SECONDS
            ran, waited = (int(f) for f in os.pread(schedstat, 128, 0).split()[:2])
            self.lags.add(lag)
            if lag > self.LATE_SECONDS:
                # Late because the loop was busy (it ran), or because the kernel ran someone else
                # (it waited for a CPU: another process on the core, the worker included)?
                late = (lag, (ran - ran_before) / 1e9, (waited - waited_before) / 1e9)
                self.late_ran += late[1]
                self.late_waited += late[2]
                self.worst = sorted([*self.worst, late], reverse=True)[:5]

    def report(self) -> list[str]:
        return [
            f"server loop lag (5 ms ticks): {self.lags}; ticks late by more than "
            + ", ".join(f"{limit} ms: {self.lags.above(limit / 1000)}" for limit in (5, 10, 20, 50)),
            f"server late ticks (> 5 ms): the loop ran {self.late_ran * 1000:.0f} ms and waited for a CPU "
            f"{self.late_waited * 1000:.0f} ms in them; worst: "
            + ", ".join(
                f"{lag * 1000:.0f} ms (ran {r * 1000:.0f}, waited {w * 1000:.0f})" for lag, r, w in self.worst
            ),
            *(f"server GC generation {g}: {p}" for g, p in self.gc_pauses.items()),
            f"server report decode CPU (reading thread): {self.decodes}",
            f"server report install CPU (event loop): {self.installs}",
        ]


async def serve(args: argparse.Namespace) -> None:
    from cryptography import x509

    from adapter.api import ApiSettings
    from adapter.auth import AuthenticationConfig, Authenticator, Authorizer, UserInfo
    from adapter.catalogue import PODS
    from adapter.selfmetrics import SelfMetrics
    from adapter.server import ServingSettings, running
    from adapter.store import MetricStore
    from adapter.tls import ServingTls

    class AllowingReviewer:
        """Stands in for the SubjectAccessReview round trip; the Authorizer's cache answers after the first."""

        async def review(self, user: UserInfo, attributes: object) -> tuple[bool, str]:
            return True, ""

    front_proxy_ca = x509.load_pem_x509_certificate(args.ca_pem)
    config = AuthenticationConfig(requestheader_cas=(front_proxy_ca,), allowed_names=("front-proxy-client",))
    tls = ServingTls(
        Path(args.cert), Path(args.key), request_client_certificates=True, client_ca_pem=config.ca_pem()
    )
    spec = worker_spec(args.pods, args.poll_interval, args.estimate_interval)
    store = MetricStore(max_age_seconds=spec.settings.max_age_seconds)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    probe = ServerProbe()
    probe.install()
    async with running(
        serving=ServingSettings(bind_address="127.0.0.1", port=args.port),
        tls=tls,
        worker=spec,
        store=store,
        index=spec.index.serving_index(store),
        authenticator=Authenticator(lambda: config, None),
        authorizer=Authorizer(AllowingReviewer()),
        self_metrics=SelfMetrics(),
        api_settings=ApiSettings(),
    ) as state:
        # Ready once a pass has rates for every pod (two polls).
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while store.generation == 0 or len(store.values_of(PODS, NAMESPACE, "watts_per_token")) < args.pods:
            if time.monotonic() > deadline:
                raise SystemExit(f"no rates for {args.pods} pods after {READY_TIMEOUT_SECONDS:.0f} s")
            await asyncio.sleep(0.1)
        print(f"ready {state.worker.pid}", flush=True)
        sampler = asyncio.create_task(probe.sample_lag())
        probe.reset()
        await stop.wait()
        sampler.cancel()
        print("\n".join(probe.report()), flush=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(args: argparse.Namespace, context: ssl.SSLContext, url: str, pids: dict[str, int]) -> None:
    import aiohttp

    headers = {"X-Remote-User": HPA_USER}
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
            except (aiohttp.ClientError, TimeoutError) as exc:  # a request that waited 5 min counts as failed
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            latencies.append(time.perf_counter() - scheduled)

        total = int(args.rate * args.seconds)
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
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
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    latencies.sort()

    def percentile(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    print(f"query: {url.split('/apis/')[1]}")
    print(
        f"pods: {args.pods}, polled every {args.poll_interval:g} s; items per response: {args.items}; "
        f"response bytes: {statistics.mean(sizes) if sizes else 0:.0f}"
    )
    print(f"offered {args.rate:.0f} req/s for {args.seconds:.0f} s over {args.connections} TLS connections")
    print(
        f"completed {len(latencies)} in {elapsed:.1f} s = {len(latencies) / elapsed:.0f} req/s; errors: {errors or 'none'}"
    )
    if latencies:
        print(
            f"latency ms: p50 {percentile(50):.2f}  p90 {percentile(90):.2f}  p99 {percentile(99):.2f}  "
            f"max {latencies[-1] * 1000:.2f}"
        )
    print(
        f"server CPU: {cpu['server'] / elapsed * 100:.0f}% of one core "
        f"({cpu['server'] * 1000 / max(len(latencies), 1):.2f} ms per request); "
        f"worker CPU: {cpu['worker'] / elapsed * 100:.0f}% of one core"
    )
    print("RSS MiB: " + ", ".join(f"{name} {rss_mib(pid):.0f}" for name, pid in pids.items()))
    print(f"load average: {os.getloadavg()[0]:.2f}")


def start_server(
    args: argparse.Namespace,
) -> tuple[subprocess.Popen[str], dict[str, int], ssl.SSLContext, str]:
    """The server (with its worker) pinned to CPU 0, this process to CPU 1; the HPA query's URL."""
    from pki import issue, make_ca

    workdir = Path(tempfile.mkdtemp(prefix="wattscale-bench-"))
    serving_ca, front_proxy_ca = make_ca("bench-serving-ca"), make_ca("bench-front-proxy-ca")
    cert, key = issue(serving_ca, "wattscale", server_hosts=("127.0.0.1",)).write(workdir, "serving")
    (workdir / "front-proxy-ca.crt").write_text(front_proxy_ca.cert_pem)
    client = issue(front_proxy_ca, "front-proxy-client")
    context = client.client_context(workdir, "front-proxy-client", serving_ca.cert_pem)
    if not args.port:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            args.port = sock.getsockname()[1]
    pin = ["taskset", "-c", "0"] if (os.cpu_count() or 1) > 1 else []
    server = subprocess.Popen(
        [
            *pin,
            sys.executable,
            str(HERE / "api_load.py"),
            "--serve",
            "--pods",
            str(args.pods),
            "--port",
            str(args.port),
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
    assert server.stdout is not None
    ready = server.stdout.readline().split()
    if not ready or ready[0] != "ready":
        server.kill()
        raise SystemExit("server did not start")
    if pin:
        os.sched_setaffinity(0, {1})
    selector = "app%3Dllm-3" if args.match == "deployment" else "tier%3Dinteractive"
    args.items = args.pods // DEPLOYMENTS if args.match == "deployment" else args.pods
    url = (
        f"https://127.0.0.1:{args.port}/apis/custom.metrics.k8s.io/v1beta2/namespaces/{NAMESPACE}/pods/%2A/"
        f"watts_per_token?labelSelector={selector}"
    )
    return server, {"server": server.pid, "worker": int(ready[1])}, context, url


@contextlib.contextmanager
def server_running(
    args: argparse.Namespace,
) -> Iterator[tuple[dict[str, int], ssl.SSLContext, str]]:
    """`start_server` until the block exits, then the server stopped: the pids, TLS context and URL."""
    server, pids, context, url = start_server(args)
    try:
        yield pids, context, url
    finally:
        stop_server(server)


def stop_server(server: subprocess.Popen[str]) -> None:
    """Stop the server and print what its probe saw."""
    server.send_signal(signal.SIGTERM)
    try:
        output, _ = server.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        output, _ = server.communicate()
    print(output, end="", flush=True)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--match", choices=["all", "deployment"], default="deployment")
    parser.add_argument("--estimate-interval", type=float, default=1.0, help="at most one pass this often")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds between polls of the fleet")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    return parser


def main() -> int:
    args = parser().parse_args()
    if args.serve:
        args.ca_pem = Path(args.ca).read_bytes()
        asyncio.run(serve(args))
        return 0
    with server_running(args) as (pids, context, url):
        asyncio.run(load(args, context, url, pids))
    return 0


if __name__ == "__main__":
    sys.exit(main())

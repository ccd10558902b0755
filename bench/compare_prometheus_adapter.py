"""wattscale side by side with prometheus-adapter v0.12.0, serving the same metric for the same pods.

    python bench/compare_prometheus_adapter.py [--pods 1000] [--rates 50 200 500] [--seconds 20] [--rounds 2]

1. Builds prometheus-adapter from its Go module (bench/prometheus-adapter/build.sh: cmd/adapter at the
   version go.mod pins, into the wattscale cache; nice 15) and prints the build time (cold: empty
   Go build cache; the modules were downloaded before).
2. Starts the real control plane of tests/cluster (etcd, kube-apiserver, kube-controller-manager, from
   the binaries tests/cluster/build.sh built; this script never builds them), `--pods` Pods in
   namespace `llm` (10 Deployments' worth of labels `app=llm-0..9`), a real Prometheus scraping one
   exporter that serves a vLLM token counter for every pod, with the pod's namespace and name.
3. Starts both servers against that Prometheus and that kube-apiserver, with the same serving CA and the
   same identity (the admin kubeconfig): prometheus-adapter with one rule turning
   `vllm:generation_tokens_total` into `generation_tokens_per_second` (rate over 1m, per pod),
   wattscale with its `vllm` collector reading the same counter from the same Prometheus. Each server
   (with its children) is pinned to CPU 0; the load generator to CPU 1; the rest floats.
4. For each rate, alternating which server goes first, drives the HPA's query (one Deployment's pods,
   100 of 1,000, `/apis/custom.metrics.k8s.io/v1beta2/namespaces/llm/pods/*/generation_tokens_per_second`)
   through TLS with the front-proxy client certificate (X-Remote-User: the HPA's ServiceAccount, which
   both authorise with a SubjectAccessReview) using bench/api_load.py's open-loop client.
5. Freshness: one pod's token rate keeps rising, so every scrape changes it; polls both servers every
   0.2 s and reports how long after each new Prometheus scrape each served value changed.

Prints a table; nothing is asserted. Server CPU per request counts the server's process tree and, for
prometheus-adapter, also Prometheus's CPU in the same interval (it runs a PromQL query per request).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "cluster"), str(HERE)]

import api_load  # noqa: E402  (the open-loop client and the CPU reading; never copied)
from kubeharness.binaries import CLUSTER_DIR, Binaries, _required_version  # noqa: E402
from kubeharness.controlplane import ControlPlane, start_control_plane  # noqa: E402
from kubeharness.pki import CertificateAuthority  # noqa: E402
from kubeharness.processes import WATTSCALE_CLI, ManagedProcess, free_port, wait_until  # noqa: E402

NAMESPACE = "llm"
HPA_USER = "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
METRIC = "generation_tokens_per_second"
SCRAPE_SECONDS = 15


def pod_name(i: int) -> str:
    return f"llm-{i % 10}-7d9f5c6b4-{i:05d}"


MARKER_POD = pod_name(3)  # in Deployment llm-3, which the load queries


# ----------------------------------------------------------------------------------------------
# Peers


def binaries() -> Binaries:
    """Where tests/cluster/build.sh put the control plane; fails (without building) when it has not."""
    version = _required_version(CLUSTER_DIR / "k8s" / "go.mod", "k8s.io/kubernetes")
    cache = Path(os.environ.get("WATTSCALE_CACHE") or Path.home() / ".cache" / "wattscale")
    found = Binaries(
        kubernetes_version=version,
        etcd_version=_required_version(CLUSTER_DIR / "etcd" / "go.mod", "go.etcd.io/etcd/server/v3"),
        keda_version=_required_version(CLUSTER_DIR / "keda" / "go.mod", "github.com/kedacore/keda/v2"),
        folder=cache / "k8s" / version / "bin",
    )
    missing = [
        b
        for b in ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
        if not Path(found.path(b)).exists()
    ]
    if missing:
        raise SystemExit(
            f"control-plane binaries missing in {found.folder}: {missing}; run tests/cluster/build.sh"
        )
    return found


def build_prometheus_adapter() -> tuple[str, str]:
    """(binary path, what build.sh said about the build)."""
    done = subprocess.run(
        ["bash", str(HERE / "prometheus-adapter" / "build.sh")], capture_output=True, text=True, timeout=7200
    )
    if done.returncode != 0:
        raise SystemExit(f"prometheus-adapter build failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1], done.stderr.strip() or "binary already built"


def create_pods(plane: ControlPlane, pods: int) -> None:
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    ]
    objects += [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod_name(i), "namespace": NAMESPACE, "labels": {"app": f"llm-{i % 10}"}},
            "spec": {"containers": [{"name": "vllm", "image": "registry.invalid/vllm:bench"}]},
        }
        for i in range(pods)
    ]
    plane.apply(objects)
    # The HPA's identity may read custom metrics, as the manifests' ClusterRoleBinding allows in a cluster.
    plane.apply(
        [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "bench-custom-metrics-reader"},
                "rules": [
                    {"apiGroups": ["custom.metrics.k8s.io"], "resources": ["*"], "verbs": ["get", "list"]}
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "bench-custom-metrics-reader"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "bench-custom-metrics-reader",
                },
                "subjects": [{"kind": "User", "name": HPA_USER}],
            },
        ]
    )


@dataclass
class TokenExporter:
    """Serves a vLLM generation-token counter per pod; the marker pod's rate rises 1 token/s every second."""

    pods: int
    started: float
    url: str = ""

    def render(self, now: float) -> str:
        elapsed = now - self.started
        lines = ["# TYPE vllm:generation_tokens_total counter"]
        for i in range(self.pods):
            tokens = 0.5 * elapsed * elapsed if pod_name(i) == MARKER_POD else (100.0 + i % 1700) * elapsed
            lines.append(
                f'vllm:generation_tokens_total{{namespace="{NAMESPACE}",pod="{pod_name(i)}",model_name="llama"}} {tokens:.3f}'
            )
        return "\n".join(lines) + "\n"

    async def start(self) -> aiohttp.web.AppRunner:
        from aiohttp import web

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(text=self.render(time.time()), content_type="text/plain")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.url = f"127.0.0.1:{port}"
        return runner


def start_prometheus(workdir: Path, target: str) -> tuple[ManagedProcess, str]:
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("prometheus is not installed: run .ci/setup.d/10-prometheus.sh")
    config = {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "scrape_configs": [
            {"job_name": "vllm", "honor_labels": True, "static_configs": [{"targets": [target]}]}
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = ManagedProcess(
        "prometheus",
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        workdir / "prometheus.log",
    )
    return process, f"http://127.0.0.1:{port}"


PROMETHEUS_ADAPTER_RULES = {
    "rules": [
        {
            "seriesQuery": 'vllm:generation_tokens_total{namespace!="",pod!=""}',
            "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
            "name": {"matches": "^vllm:generation_tokens_total$", "as": METRIC},
            "metricsQuery": "sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)",
        }
    ]
}


@dataclass
class Server:
    name: str
    process: ManagedProcess
    url: str


def start_servers(
    plane: ControlPlane,
    workdir: Path,
    adapter_binary: str,
    prometheus_url: str,
    ca: CertificateAuthority,
    client_qps: int,
) -> list[Server]:
    serving = ca.issue(
        "serving", common_name="localhost", dns_names=("localhost",), ip_addresses=("127.0.0.1",), server=True
    )
    pin = ["taskset", "-c", "0"] if (os.cpu_count() or 1) > 1 else []
    (workdir / "prometheus-adapter.yaml").write_text(yaml.safe_dump(PROMETHEUS_ADAPTER_RULES))
    kubeconfig = str(plane.admin_kubeconfig)
    adapter_port, wattscale_port = free_port(), free_port()
    prometheus_adapter = ManagedProcess(
        "prometheus-adapter",
        [
            *pin,
            adapter_binary,
            f"--secure-port={adapter_port}",
            "--bind-address=127.0.0.1",
            f"--tls-cert-file={serving.cert_path}",
            f"--tls-private-key-file={serving.key_path}",
            f"--lister-kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--prometheus-url={prometheus_url}",
            f"--config={workdir / 'prometheus-adapter.yaml'}",
            "--metrics-relist-interval=1m",
            # It LISTs the selector's pods from kube-apiserver on every request; at its default client
            # rate limit (5 req/s, burst 10) it serves about 5 such requests a second.
            f"--client-qps={client_qps}",
            f"--client-burst={2 * client_qps}",
            "--v=1",
        ],
        workdir / "prometheus-adapter.log",
    )
    (workdir / "wattscale.yaml").write_text(
        yaml.safe_dump(
            {
                "window_seconds": 60,
                "max_age_seconds": 120,
                "collectors": [
                    {
                        "name": "vllm",
                        "type": "vllm",
                        "prometheus_url": prometheus_url,
                        "interval_seconds": SCRAPE_SECONDS,
                    }
                ],
            }
        )
    )
    wattscale = ManagedProcess(
        "wattscale serve",
        [
            *pin,
            *WATTSCALE_CLI,
            "serve",
            "--kubeconfig",
            kubeconfig,
            "--config",
            str(workdir / "wattscale.yaml"),
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            str(wattscale_port),
            "--tls-cert-file",
            str(serving.cert_path),
            "--tls-private-key-file",
            str(serving.key_path),
        ],
        workdir / "wattscale.log",
        env={"KUBERNETES_SERVICE_HOST": "", "KUBERNETES_SERVICE_PORT": ""},
    )
    return [
        Server("prometheus-adapter", prometheus_adapter, f"https://127.0.0.1:{adapter_port}"),
        Server("wattscale", wattscale, f"https://127.0.0.1:{wattscale_port}"),
    ]


def client_context(plane: ControlPlane, ca: CertificateAuthority) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    context.load_cert_chain(plane.front_proxy_client.cert_path, plane.front_proxy_client.key_path)
    return context


def query_url(server: Server, path: str) -> str:
    return f"{server.url}/apis/custom.metrics.k8s.io/v1beta2/namespaces/{NAMESPACE}/{path}"


async def served_value(session: aiohttp.ClientSession, url: str) -> str | None:
    async with session.get(url, headers={"X-Remote-User": HPA_USER}) as response:
        if response.status != 200:
            return None
        items = (await response.json()).get("items") or []
        return str(items[0]["value"]) if items else None


def wait_serving(servers: Sequence[Server], context: ssl.SSLContext, pods: int) -> None:
    """Until each answers the load's query with a value for every pod of the Deployment."""

    async def complete(server: Server) -> bool:
        url = query_url(server, f"pods/%2A/{METRIC}?labelSelector=app%3Dllm-3")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            async with session.get(url, headers={"X-Remote-User": HPA_USER}) as response:
                return response.status == 200 and len((await response.json())["items"]) == pods // 10

    for server in servers:

        def ready(server: Server = server) -> bool:
            server.process.check_running()
            return asyncio.run(complete(server))

        wait_until(
            ready,
            timeout_seconds=300,
            description=f"{server.name} serving every pod",
            on_timeout=server.process.tail,
        )


# ----------------------------------------------------------------------------------------------
# Measurements


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and its descendants (wattscale's estimator runs in a child)."""
    total = 0.0
    stack = [pid]
    while stack:
        current = stack.pop()
        with contextlib.suppress(OSError):
            total += api_load.cpu_seconds(current)
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(child) for child in (task / "children").read_text().split()]
    return total


_LATENCY = re.compile(r"latency ms: p50 (\S+)\s+p90 (\S+)\s+p99 (\S+)\s+max (\S+)")
_COMPLETED = re.compile(r"completed (\d+) in (\S+) s = \S+ req/s; errors: (.*)")


@dataclass
class Run:
    server: str
    rate: float
    p50: float
    p90: float
    p99: float
    max: float
    completed: int
    errors: str
    cpu_ms_per_request: float
    prometheus_cpu_ms_per_request: float


def drive(
    server: Server, rate: float, args: argparse.Namespace, context: ssl.SSLContext, prometheus_pid: int
) -> Run:
    url = query_url(server, f"pods/%2A/{METRIC}?labelSelector=app%3Dllm-3")
    load_args = SimpleNamespace(
        rate=rate, seconds=args.seconds, connections=16, pods=args.pods, items=args.pods // 10
    )
    printed = io.StringIO()
    cpu_before, prometheus_before = tree_cpu_seconds(server.process.pid), api_load.cpu_seconds(prometheus_pid)
    with contextlib.redirect_stdout(printed):
        asyncio.run(api_load.load(load_args, context, url, server.process.pid))  # type: ignore[arg-type]
    cpu = tree_cpu_seconds(server.process.pid) - cpu_before
    prometheus_cpu = api_load.cpu_seconds(prometheus_pid) - prometheus_before
    text = printed.getvalue()
    latency, completed = _LATENCY.search(text), _COMPLETED.search(text)
    if latency is None or completed is None:
        raise SystemExit(f"could not read bench/api_load.py's output:\n{text}")
    done = int(completed.group(1))
    return Run(
        server=server.name,
        rate=rate,
        p50=float(latency.group(1)),
        p90=float(latency.group(2)),
        p99=float(latency.group(3)),
        max=float(latency.group(4)),
        completed=done,
        errors=completed.group(3).strip(),
        cpu_ms_per_request=cpu * 1000 / max(done, 1),
        prometheus_cpu_ms_per_request=prometheus_cpu * 1000 / max(done, 1),
    )


async def freshness(
    servers: Sequence[Server], prometheus_url: str, context: ssl.SSLContext, seconds: float
) -> dict[str, list[float]]:
    """Per server: seconds from each new scrape of the marker pod to the first changed served value."""
    scrape_query = f'timestamp(vllm:generation_tokens_total{{pod="{MARKER_POD}"}})'
    scrapes: list[float] = []
    changes: dict[str, list[float]] = {server.name: [] for server in servers}
    last: dict[str, str | None] = {}
    deadline = time.time() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        while time.time() < deadline:
            async with session.get(
                f"{prometheus_url}/api/v1/query", params={"query": scrape_query}, ssl=False
            ) as answer:
                result = (await answer.json())["data"]["result"]
            if result and (not scrapes or float(result[0]["value"][1]) > scrapes[-1]):
                scrapes.append(float(result[0]["value"][1]))
            for server in servers:
                value = await served_value(session, query_url(server, f"pods/{MARKER_POD}/{METRIC}"))
                if server.name in last and value != last[server.name]:
                    changes[server.name].append(time.time())
                last[server.name] = value
            await asyncio.sleep(0.2)
    # "How long after a new scrape the served value changes": the first change at or after each scrape.
    return {
        name: [min(later) - scrape for scrape in scrapes[1:] if (later := [s for s in stamps if s >= scrape])]
        for name, stamps in changes.items()
    }


def print_table(
    runs: Sequence[Run], lags: dict[str, list[float]], build_note: str, args: argparse.Namespace
) -> None:
    def median(rows: list[Run], field: str) -> float:
        return statistics.median(getattr(row, field) for row in rows)

    print()
    print(f"prometheus-adapter build: {build_note}")
    print(
        f"{args.pods} pods; query: one Deployment's pods ({args.pods // 10} items), v1beta2, TLS + front-proxy auth + SAR"
    )
    print(f"{args.rounds} alternating run(s) of {args.seconds:g} s per server and rate; medians over runs")
    print()
    print(
        "| req/s | server | p50 ms | p90 ms | p99 ms | max ms | errors | server CPU ms/req | + Prometheus CPU ms/req |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for rate in args.rates:
        by_server = {
            name: [r for r in runs if r.rate == rate and r.server == name]
            for name in ("prometheus-adapter", "wattscale")
        }
        for name, rows in by_server.items():
            errors = ", ".join(sorted({r.errors for r in rows}))
            print(
                f"| {rate:g} | {name} | {median(rows, 'p50'):.2f} | {median(rows, 'p90'):.2f} | {median(rows, 'p99'):.2f} "
                f"| {median(rows, 'max'):.1f} | {errors} | {median(rows, 'cpu_ms_per_request'):.2f} "
                f"| {median(rows, 'prometheus_cpu_ms_per_request'):.2f} |"
            )
        pa, ws = by_server["prometheus-adapter"], by_server["wattscale"]
        print(
            f"| {rate:g} | ratio wattscale / prometheus-adapter | {median(ws, 'p50') / median(pa, 'p50'):.2f} "
            f"| {median(ws, 'p90') / median(pa, 'p90'):.2f} | {median(ws, 'p99') / median(pa, 'p99'):.2f} "
            f"| {median(ws, 'max') / median(pa, 'max'):.2f} | | "
            f"{median(ws, 'cpu_ms_per_request') / median(pa, 'cpu_ms_per_request'):.2f} | "
            f"{median(ws, 'cpu_ms_per_request') / (median(pa, 'cpu_ms_per_request') + median(pa, 'prometheus_cpu_ms_per_request')):.2f} |"
        )
    print()
    print(
        f"freshness (seconds from a new Prometheus scrape, every {SCRAPE_SECONDS} s, to a changed served value):"
    )
    for name, values in lags.items():
        if values:
            print(
                f"  {name}: median {statistics.median(values):.1f} s, max {max(values):.1f} s over {len(values)} scrapes"
            )
        else:
            print(f"  {name}: no change seen")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--rates", type=float, nargs="+", default=[50.0, 200.0, 500.0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--freshness-seconds", type=float, default=120.0)
    parser.add_argument(
        "--adapter-client-qps",
        type=int,
        default=1000,
        help="prometheus-adapter's --client-qps (burst twice that); its own default, 5, caps it near 5 req/s",
    )
    args = parser.parse_args()

    started = time.monotonic()
    adapter_binary, build_note = build_prometheus_adapter()
    print(
        f"prometheus-adapter: {adapter_binary} ({build_note}; {time.monotonic() - started:.0f} s here)",
        flush=True,
    )
    found = binaries()
    workdir = Path(tempfile.mkdtemp(prefix="wattscale-compare-"))
    print(f"logs in {workdir}", flush=True)
    plane = start_control_plane(workdir, found)
    loop = asyncio.new_event_loop()
    exporter = TokenExporter(args.pods, time.time())
    runner = loop.run_until_complete(exporter.start())
    exporter_thread = _serve_in_thread(loop)
    prometheus, prometheus_url = start_prometheus(workdir, exporter.url)
    servers: list[Server] = []
    try:
        create_pods(plane, args.pods)
        ca = CertificateAuthority(workdir, "bench-serving")
        context = client_context(plane, ca)
        servers = start_servers(plane, workdir, adapter_binary, prometheus_url, ca, args.adapter_client_qps)
        wait_serving(servers, context, args.pods)
        print("both serving; load runs:", flush=True)
        if (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {1})
        runs: list[Run] = []
        for rate in args.rates:
            for round_number in range(args.rounds):
                order = servers if round_number % 2 == 0 else list(reversed(servers))
                for server in order:
                    run = drive(server, rate, args, context, prometheus.pid)
                    runs.append(run)
                    print(f"  {run}", flush=True)
        lags = asyncio.run(freshness(servers, prometheus_url, context, args.freshness_seconds))
        print_table(runs, lags, build_note, args)
    finally:
        for server in servers:
            server.process.stop()
        prometheus.stop()
        loop.call_soon_threadsafe(loop.stop)
        exporter_thread.join(timeout=10)
        plane.stop()
        del runner
    return 0


def _serve_in_thread(loop: asyncio.AbstractEventLoop) -> Any:
    import threading

    thread = threading.Thread(target=loop.run_forever, name="exporter", daemon=True)
    thread.start()
    return thread


if __name__ == "__main__":
    sys.exit(main())

"""`wattscale serve` with authentication, authorization and the pipeline, under a steady request rate.

    python bench/load_serve.py --rate 1000 --seconds 600

Starts the real stack (tests/cluster/kubeharness/stack.py: kube-apiserver, etcd, controller-manager,
the kubelet stand-in, `wattscale serve` from its manifests with a simulated collector polled every
second), then sends the HPA's Pods query straight to the adapter as the aggregator does: TLS with
the front-proxy certificate, as the HPA's ServiceAccount (X-Remote-User, not system:masters, so every
request is authorized through SubjectAccessReview, cached for 10 s by the adapter).

The load comes from vegeta (bench/vegeta/build.sh builds the version bench/vegeta/go.mod pins into the
wattscale cache): a constant-rate open-loop attack over at most `--connections` keep-alive HTTP/1.1
connections, reported by `vegeta report -type=json`. `--generator python` uses bench/api_load.py's
asyncio client instead (it cannot keep 1,000 req/s on a 2-core machine). `serve` and its worker are
pinned to CPU 0 and the generator to CPU 1, as bench/api_load.py does; the control plane floats.

Prints requests, the rate achieved, errors by status code, latency percentiles and maximum, the CPU
of serve and its worker per request, and their RSS after warm-up and at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "cluster"))
sys.path.insert(0, str(HERE))

from api_load import HPA_USER, cpu_seconds, load  # noqa: E402
from kubeharness.stack import Stack, running_stack  # noqa: E402

SERVER_CPU = 0
GENERATOR_CPU = 1
QUERY = "/namespaces/llm/pods/%2A/gpu_power_watts?labelSelector=app%3Dphi"
# vegeta's default; a request slower than this counts as an error.
REQUEST_TIMEOUT_SECONDS = 30
# An RSS step worth showing, and how far back to look for the stall that may have caused it.
STEP_BYTES = 256 * 2**10
STEP_CONTEXT_SECONDS = 5


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> bytes:
    """The worker is a multiprocessing child (`spawn_main`); the resource tracker is another child."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def pin_tree(pid: int, cpu: int) -> None:
    """Every thread of `pid` and of its descendants on `cpu` (threads and processes started later inherit it)."""
    for process in (pid, *children(pid)):
        for task in Path(f"/proc/{process}/task").iterdir():
            os.sched_setaffinity(int(task.name), {cpu})
        if process != pid:
            pin_tree(process, cpu)


def cpu_busy_seconds() -> dict[int, float]:
    """Seconds each CPU spent not idle since boot (/proc/stat), whoever ran there."""
    busy = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(field) for field in fields]
            busy[int(name[3:])] = (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    return busy


def pinned(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if (os.cpu_count() or 1) > 1 else []


class RssSampler(threading.Thread):
    """Each process's RSS every second: the peak of their sum, and the samples to show growth over time."""

    def __init__(self, pids: dict[str, int], every_seconds: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.every_seconds = every_seconds
        self.samples: list[dict[str, int]] = []
        self.times: list[float] = []
        self.stop = threading.Event()

    def read(self) -> dict[str, int]:
        return {name: rss_bytes(pid) for name, pid in self.pids.items()}

    def run(self) -> None:
        while not self.stop.wait(self.every_seconds):
            self.samples.append(self.read())
            self.times.append(time.time())

    def steps(self, name: str, min_bytes: int) -> list[tuple[float, int, int]]:
        """(when, before, after) for each sample where `name` grew by at least `min_bytes` since the last."""
        return [
            (self.times[i], self.samples[i - 1][name], self.samples[i][name])
            for i in range(1, len(self.samples))
            if self.samples[i][name] - self.samples[i - 1][name] >= min_bytes
        ]

    def peak_bytes(self) -> int:
        return max((sum(sample.values()) for sample in self.samples), default=0)

    def timeline(self, points: int = 10) -> str:
        """RSS MiB of each process at `points` evenly spaced moments of the run."""
        step = max(1, len(self.samples) // points)
        chosen = self.samples[step - 1 :: step]
        return (
            "; ".join(
                f"{name} " + " ".join(f"{sample[name] / 2**20:.1f}" for sample in chosen)
                for name in self.pids
            )
            + f" (every {step * self.every_seconds:.0f} s)"
        )


@dataclass
class Vegeta:
    binary: str
    url: str
    cert: Path
    key: Path
    root_cert: Path
    connections: int
    results: Path

    def attack(self, rate: float, seconds: float) -> tuple[dict[str, Any], float]:
        """`vegeta attack` on the generator's CPU into `results`, then `vegeta report -type=json`:
        (the report, the attack's CPU seconds)."""
        attack_argv = [
            *pinned(GENERATOR_CPU),
            self.binary,
            "attack",
            f"-rate={rate:g}/1s",
            f"-duration={seconds:g}s",
            f"-cert={self.cert}",
            f"-key={self.key}",
            f"-root-certs={self.root_cert}",
            f"-header=X-Remote-User: {HPA_USER}",
            "-http2=false",  # the adapter serves HTTP/1.1 (aiohttp)
            f"-max-connections={self.connections}",
            f"-workers={self.connections}",
            "-max-body=0",  # the bodies are not needed: status, latency and errors are
            f"-timeout={REQUEST_TIMEOUT_SECONDS}s",
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with self.results.open("wb") as results:
            subprocess.run(
                attack_argv,
                input=f"GET {self.url}\n".encode(),
                stdout=results,
                check=True,
                timeout=seconds + REQUEST_TIMEOUT_SECONDS + 60,
            )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        report = subprocess.run(
            [self.binary, "report", "-type=json", str(self.results)],
            capture_output=True,
            check=True,
            timeout=600,
        )
        return json.loads(report.stdout), cpu

    def slowest_by_second(self) -> dict[int, float]:
        """The last attack's slowest request (ms) in each second (unix time) it was sent."""
        slowest: dict[int, float] = {}
        with subprocess.Popen(
            [self.binary, "encode", "-to=csv", str(self.results)], stdout=subprocess.PIPE, text=True
        ) as encode:
            assert encode.stdout is not None
            for line in encode.stdout:
                timestamp_ns, _, latency_ns = line.split(",", 3)[:3]
                second = int(timestamp_ns) // 10**9
                slowest[second] = max(slowest.get(second, 0.0), int(latency_ns) / 1e6)
        return slowest


def vegeta_binary() -> str:
    done = subprocess.run(
        ["bash", str(HERE / "vegeta" / "build.sh")], capture_output=True, text=True, timeout=1800
    )
    if done.returncode != 0:
        raise SystemExit(f"vegeta build failed:\n{done.stderr[-3000:]}")
    if done.stderr.strip():
        print(done.stderr.strip())
    return done.stdout.strip().splitlines()[-1]


def check_answer(stack: Stack, url: str) -> None:
    """One request before the load: the query answers every pod (a 200 with no items would be no test)."""
    proxy = stack.plane.front_proxy_client
    context = ssl.create_default_context(cafile=str(stack.adapter.ca.cert_path))
    context.load_cert_chain(str(proxy.cert_path), str(proxy.key_path))
    request = urllib.request.Request(url, headers={"X-Remote-User": HPA_USER})
    with urllib.request.urlopen(request, context=context, timeout=30) as response:
        body = response.read()
    items = len(json.loads(body)["items"])
    print(f"query: {url.split('/apis/')[1]} -> {items} items ({len(body)} bytes) of {len(stack.pods)} pods")
    if items != len(stack.pods):
        raise SystemExit("the query does not answer every pod")


def print_report(report: dict[str, Any], seconds: float, cpu: dict[str, float]) -> None:
    codes = report["status_codes"]
    failed = {code: count for code, count in codes.items() if not 200 <= int(code) < 300}
    latencies = {key: value / 1e6 for key, value in report["latencies"].items()}
    print(
        f"requests: {report['requests']} in {seconds:.0f} s; sent at {report['rate']:.1f} req/s, "
        f"{report['throughput']:.1f} successful/s"
    )
    print(f"errors (non-2xx by status code; 0 = no response): {failed or 'none'}")
    for error in report.get("errors") or []:
        print(f"  {error}")
    print(
        f"latency ms: p50 {latencies['50th']:.2f}  p90 {latencies['90th']:.2f}  p99 {latencies['99th']:.2f}  "
        f"max {latencies['max']:.2f}  (mean {latencies['mean']:.2f})"
    )
    requests = max(report["requests"], 1)
    print(
        f"CPU: serve {cpu['server'] / seconds * 100:.0f}% of one core "
        f"({cpu['server'] * 1000 / requests:.3f} ms per request), worker {cpu['worker'] / seconds * 100:.0f}%, "
        f"vegeta {cpu['generator'] / seconds * 100:.0f}%"
    )


def growth(before: int, after: int) -> str:
    return f"{before / 2**20:.1f} -> {after / 2**20:.1f} MiB ({(after / before - 1) * 100:+.1f}%)"


def run_vegeta(args: argparse.Namespace, stack: Stack, url: str, pids: dict[str, int]) -> None:
    proxy = stack.plane.front_proxy_client
    vegeta = Vegeta(
        vegeta_binary(),
        url,
        proxy.cert_path,
        proxy.key_path,
        stack.adapter.ca.cert_path,
        args.connections,
        stack.plane.workdir / "vegeta-results.bin",
    )
    print(
        f"generator: vegeta (pinned to CPU {GENERATOR_CPU}); serve and its worker pinned to CPU {SERVER_CPU}"
    )
    warm, _ = vegeta.attack(args.rate, args.warmup_seconds)
    warm_failed = {c: n for c, n in warm["status_codes"].items() if not 200 <= int(c) < 300}
    print(
        f"warm-up: {args.warmup_seconds:.0f} s at {args.rate:g} req/s: {warm['requests']} requests, "
        f"errors: {warm_failed or 'none'}"
    )
    sampler = RssSampler(pids)
    before = sampler.read()
    sampler.start()
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    busy_before = cpu_busy_seconds()
    print(
        f"measured run: {args.seconds:.0f} s at {args.rate:g} req/s over at most {args.connections} connections"
    )
    started = time.monotonic()
    report, generator_cpu = vegeta.attack(args.rate, args.seconds)
    elapsed = time.monotonic() - started
    cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    busy = {n: seconds - busy_before[n] for n, seconds in cpu_busy_seconds().items()}
    sampler.stop.set()
    after = sampler.read()
    print_report(report, elapsed, {**cpu, "generator": generator_cpu})
    print(
        f"RSS: server {growth(before['server'], after['server'])}, worker {growth(before['worker'], after['worker'])}, "
        f"together {growth(sum(before.values()), sum(after.values()))}, peak {sampler.peak_bytes() / 2**20:.1f} MiB"
    )
    print(f"RSS MiB during the run: {sampler.timeline()}")
    print_rss_steps(sampler, vegeta.slowest_by_second())
    vegeta.results.unlink()  # 100-200 MB for 10 minutes
    if SERVER_CPU in busy and GENERATOR_CPU in busy:
        others = busy[SERVER_CPU] - cpu["server"] - cpu["worker"]
        print(
            f"CPU {SERVER_CPU} busy {busy[SERVER_CPU] / elapsed * 100:.0f}% "
            f"(processes other than serve and its worker: {max(others, 0) / elapsed * 100:.0f}%); "
            f"CPU {GENERATOR_CPU} busy {busy[GENERATOR_CPU] / elapsed * 100:.0f}%"
        )


def print_rss_steps(sampler: RssSampler, slowest: dict[int, float]) -> None:
    """When serve's RSS stepped up, and the slowest request around then: steps that follow stalls are
    buffers filled while the server could not keep up, not a leak per request."""
    steps = sampler.steps("server", STEP_BYTES)
    print(f"server RSS steps of {STEP_BYTES // 2**10} KiB or more in one second: {len(steps) or 'none'}")
    for when, before, after in steps:
        second = int(when)
        around = [slowest.get(s, 0.0) for s in range(second - STEP_CONTEXT_SECONDS, second + 1)]
        print(
            f"  {time.strftime('%H:%M:%S', time.gmtime(when))} UTC: {before / 2**20:.1f} -> "
            f"{after / 2**20:.1f} MiB; slowest request in the {STEP_CONTEXT_SECONDS} s before: {max(around):.0f} ms"
        )


def run_python(args: argparse.Namespace, stack: Stack, url: str, pids: dict[str, int]) -> None:
    """bench/api_load.py's client (the pids' CPU and RSS printed by `load`)."""
    proxy = stack.plane.front_proxy_client
    context = ssl.create_default_context(cafile=str(stack.adapter.ca.cert_path))
    context.load_cert_chain(str(proxy.cert_path), str(proxy.key_path))
    os.sched_setaffinity(0, {GENERATOR_CPU})
    args.pods = args.items = len(stack.pods)
    args.poll_interval = 1.0  # the harness's simulated collector
    measured = args.seconds
    args.seconds = args.warmup_seconds
    print(f"warm-up: {args.warmup_seconds:.0f} s at {args.rate:.0f} req/s")
    asyncio.run(load(args, context, url, pids))
    sampler = RssSampler(pids)
    before = sampler.read()
    sampler.start()
    args.seconds = measured
    print(f"measured run: {measured:.0f} s")
    asyncio.run(load(args, context, url, pids))
    sampler.stop.set()
    after = sampler.read()
    print(f"RSS together: {growth(sum(before.values()), sum(after.values()))}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warmup-seconds", type=float, default=30.0, help="load before RSS is first read")
    parser.add_argument("--generator", choices=["vegeta", "python"], default="vegeta")
    args = parser.parse_args()
    print(f"load average before: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    with running_stack(Path(tempfile.mkdtemp(prefix="wattscale-load-"))) as stack:
        url = stack.adapter.metric_url(QUERY)
        pid = stack.adapter.process.pid
        workers = [child for child in children(pid) if b"spawn_main" in _cmdline(child)]
        if len(workers) != 1:
            raise SystemExit(f"expected one worker process under serve ({pid}), found {workers}")
        pids = {"server": pid, "worker": workers[0]}
        if (os.cpu_count() or 1) > 1:
            pin_tree(pid, SERVER_CPU)
        check_answer(stack, url)
        (run_vegeta if args.generator == "vegeta" else run_python)(args, stack, url, pids)
        stack.adapter.process.check_running()
    print(f"load average after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What one adapter replica sustains when Prometheus has already recorded the per-pod series.

    python bench/recorded_scale.py --pods 50000 [--polls 3] [--api-rate 200 --api-seconds 15]

A real Prometheus (Debian package) scrapes a static file holding, for `--pods` pods, the four series
the recording rules in `apiservice/recording-rules/` produce (what a ruler would have written), as
Prometheus's own series. Then, in this process, as a replica's pipeline does each poll: the
`prometheus_api` collector reads them (`--polls` times), and one estimator pass turns them into the
store's values. Prints the time of each step, Prometheus's and this process's RSS, and (with
`--api-rate`) the API's latency with that many pods in the store, from bench/api_load.py. Numbers
only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # run from anywhere: the checkout's packages, not an installed copy
WINDOW = "1m"


def pod_names(pods: int) -> list[tuple[str, str, str]]:
    """(namespace, pod, node) for each pod: 100 pods per namespace (one Deployment), 8 per node."""
    return [(f"llm-{i // 100}", f"llm-{i // 100}-7d9f5c6b4-{i:05d}", f"node-{i // 8}") for i in range(pods)]


def recorded_exposition(pods: int) -> str:
    """The recording rules' output for `pods` pods, in the text format (values over a 60 s window)."""
    lines: list[str] = []
    for i, (namespace, pod, node) in enumerate(pod_names(pods)):
        identity = f'namespace="{namespace}",pod="{pod}"'
        watts, tokens = 150.0 + i % 250, 100.0 + i % 1700
        gpu = f'node="{node}",gpu_uuid="GPU-{i}"'
        lines += [
            f"wattscale:gpu_holder_energy_joules:increase{WINDOW}{{{gpu},{identity}}} {watts * 60}",
            f"wattscale:pod_cpu_energy_joules:increase{WINDOW}{{{identity}}} {20.0 * 60}",
            f"wattscale:pod_generation_tokens:increase{WINDOW}{{{identity}}} {tokens * 60}",
            f"wattscale:pod_prompt_tokens:increase{WINDOW}{{{identity}}} {5 * tokens * 60}",
        ]
    return "\n".join(lines) + "\n"


def rss_megabytes(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_prometheus(workdir: Path, metrics_port: int, port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("prometheus is not installed: run .ci/setup.d/10-prometheus.sh")
    config = {
        "global": {"scrape_interval": "15s", "scrape_timeout": "14s", "evaluation_interval": "15s"},
        "scrape_configs": [
            {
                "job_name": "recorded",
                "honor_labels": True,
                "metrics_path": "/metrics.txt",
                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
            }
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    return subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "prometheus.log").open("wb"),
    )


async def wait_for_series(base_url: str, pods: int, timeout_seconds: float) -> float:
    """Seconds until Prometheus holds every pod's recorded token series."""
    started = time.monotonic()
    query = f"count(wattscale:pod_generation_tokens:increase{WINDOW})"
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - started < timeout_seconds:
            try:
                async with session.get(f"{base_url}/api/v1/query", params={"query": query}) as response:
                    result = (await response.json())["data"]["result"] if response.status == 200 else []
                if result and int(float(result[0]["value"][1])) >= pods:
                    return time.monotonic() - started
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(1.0)
    raise SystemExit(f"Prometheus did not hold {pods} pods' series within {timeout_seconds:.0f} s")


async def measure(args: argparse.Namespace, base_url: str) -> None:
    import pandas as pd
    from prometheus_client import CollectorRegistry

    from adapter.catalogue import PODS
    from adapter.objects import KubeObject, StaticObjectIndex
    from adapter.pipeline import sample_rows, samples_frame, store_values
    from collectors.base import Sample
    from collectors.prometheus_recorded import RecordedSeriesCollector
    from collectors.support import build_settings
    from estimators.fleet import estimate_fleet

    settings = build_settings(
        RecordedSeriesCollector.settings_cls,
        "recorded",
        {
            "prometheus_url": base_url,
            "window": WINDOW,
            "timeout_seconds": 120.0,
            "interval_seconds": 120.0,
            "max_samples": 10 * args.pods,  # four series per pod; the default 200,000 stops at 40,000 pods
        },
    )
    collector = RecordedSeriesCollector("recorded", settings, registry=CollectorRegistry())
    index = StaticObjectIndex(
        KubeObject(PODS, namespace, pod, {"app": namespace}) for namespace, pod, _ in pod_names(args.pods)
    )
    rss_before = rss_megabytes()
    polls: list[tuple[float, float]] = []
    samples: list[Sample] = []
    try:
        for _ in range(args.polls):
            wall, cpu = time.perf_counter(), time.process_time()
            samples = list(await collector.collect())
            polls.append((time.perf_counter() - wall, time.process_time() - cpu))
    finally:
        await collector.aclose()
    wall, cpu = time.perf_counter(), time.process_time()
    frame = samples_frame(sample_rows(samples))
    now = float(frame["timestamp_seconds"].max())
    racks = pd.DataFrame(columns=["rack", "cap_watts", "margin_ratio"])
    estimate = estimate_fleet(frame, node_racks={}, racks=racks, window_seconds=60.0, now_seconds=now)
    values = store_values(estimate, index=index, racks_of_nodes={}, window_seconds=60.0)
    pass_wall, pass_cpu = time.perf_counter() - wall, time.process_time() - cpu
    best_wall = min(p[0] for p in polls)
    best_cpu = min(p[1] for p in polls)
    print(f"pods: {args.pods}; recorded series read per poll: {len(samples)}; store values: {len(values)}")
    print(
        "poll (query + parse + translate): "
        + ", ".join(f"{w:.2f} s wall / {c:.2f} s CPU" for w, c in polls)
        + f"; best {best_wall:.2f} s"
    )
    print(f"estimator pass + store values: {pass_wall:.2f} s wall / {pass_cpu:.2f} s CPU")
    print(
        f"RSS of this process: {rss_before:.0f} MB before polling, {rss_megabytes():.0f} MB after the pass "
        f"(peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)"
    )
    per_update = best_cpu + pass_cpu
    print(
        f"one replica's CPU per update: {per_update:.2f} s, so one core sustains an update every "
        f"{per_update:.1f} s ({per_update / 15 * 100:.0f}% of a core at the default 15 s poll)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=50_000)
    parser.add_argument("--polls", type=int, default=3)
    parser.add_argument("--api-rate", type=float, default=0.0, help="also run bench/api_load.py at this rate")
    parser.add_argument("--api-seconds", type=float, default=15.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="for Prometheus to hold every series")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    from integration_peers import free_port

    workdir = Path(tempfile.mkdtemp(prefix="wattscale-recorded-"))
    started = time.perf_counter()
    (workdir / "metrics.txt").write_text(recorded_exposition(args.pods))
    print(
        f"exposition: {(workdir / 'metrics.txt').stat().st_size / 1e6:.1f} MB, rendered in {time.perf_counter() - started:.1f} s"
    )
    metrics_port, prometheus_port = free_port(), free_port()
    files = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            str(workdir),
            str(metrics_port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    prometheus = start_prometheus(workdir, metrics_port, prometheus_port)
    base_url = f"http://127.0.0.1:{prometheus_port}"
    try:
        waited = asyncio.run(wait_for_series(base_url, args.pods, args.timeout))
        print(
            f"Prometheus held all series after {waited:.0f} s; its RSS: {rss_megabytes(prometheus.pid):.0f} MB"
        )
        asyncio.run(measure(args, base_url))
    finally:
        for process in (prometheus, files):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.api_rate:
        print(f"API with {args.pods} pods in the store (bench/api_load.py):", flush=True)
        command = [sys.executable, str(HERE / "api_load.py"), "--pods", str(args.pods)]
        command += ["--rate", str(args.api_rate), "--seconds", str(args.api_seconds)]
        checkout = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's packages, not an installed copy
        subprocess.run(command, check=True, timeout=args.api_seconds + 300, env=checkout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How cost grows with the fleet: estimator pass time, memory and API p99 at 1k, 10k and 50k pods.

    python bench/scaling_curve.py [--pods 1000 10000 50000] [--rate 200] [--seconds 20] [--png docs/scaling-curve.png]

For each fleet size it runs, as subprocesses with their own flags:
- bench/estimator_cost.py --pods N: the best whole served pass (estimators and store values) over a
  synthetic window of N pods fed poll by poll; this script reads that process's peak RSS from the kernel (wait4);
- bench/api_load.py --pods N --poll-interval 15 --estimate-interval 15: the HPA's
  query (one Deployment's pods) at `--rate` req/s over TLS against a server whose worker process polls
  N simulated pods every 15 s; this script samples the server's RSS (and its worker's) every half second.
Prints a table and the growth exponent of each column between the smallest and largest fleet
(1 = linear), and draws the three curves into `--png`. Numbers only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests" / "cluster"))

from kubeharness.processes import free_port  # noqa: E402

# The benches import this checkout's packages, not whichever copy is installed.
CHECKOUT_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
}


@dataclass
class Point:
    pods: int
    pass_seconds: float
    pass_peak_rss_mb: float
    server_peak_rss_mb: float
    estimator_peak_rss_mb: float
    p99_ms: float
    max_ms: float
    errors: str


def run_measured(command: list[str], timeout: float) -> tuple[str, float]:
    """(stdout, peak RSS of the process in MB); fails loudly on a non-zero exit."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=CHECKOUT_ENV)
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    try:
        assert process.stdout is not None
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{output}")
    return output, usage.ru_maxrss / 1024


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    except OSError:
        pass
    return found


def estimator_pass(pods: int, repeat: int) -> tuple[float, float]:
    command = [sys.executable, str(HERE / "estimator_cost.py"), "--pods", str(pods), "--repeat", str(repeat)]
    output, peak = run_measured([*command, "--json"], timeout=1800)
    try:
        result = json.loads(output.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise SystemExit(f"could not read bench/estimator_cost.py's output:\n{output}") from None
    return float(result["pass_seconds_best"]), peak


def api_under_load(pods: int, rate: float, seconds: float) -> tuple[float, float, str, float, float]:
    """(p99 ms, max ms, errors, server peak RSS MB, estimator child peak RSS MB)."""
    command = [sys.executable, str(HERE / "api_load.py"), "--pods", str(pods), "--rate", str(rate)]
    command += ["--seconds", str(seconds)]
    command += ["--poll-interval", "15", "--estimate-interval", "15", "--port", str(free_port())]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=CHECKOUT_ENV)
    peaks = {"server": 0.0, "estimator": 0.0}
    seen: set[int] = set()
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            for server in children(process.pid):
                estimators = children(server)
                seen.update([server, *estimators])
                peaks["server"] = max(peaks["server"], rss_mb(server))
                peaks["estimator"] = max(peaks["estimator"], sum(rss_mb(child) for child in estimators))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        output, _ = process.communicate(timeout=seconds + 900)
    finally:
        done.set()
        sampler.join()
        stop_leftovers(seen)
    latency = re.search(r"p99 (\S+)\s+max (\S+)", output)
    errors = re.search(r"errors: (.*)", output)
    if latency is None or errors is None:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{output}")
    if process.returncode != 0:  # measured, then failed to stop its server in time: say so, keep the numbers
        print(f"  (bench/api_load.py exited {process.returncode} after measuring)", flush=True)
    return (
        float(latency.group(1)),
        float(latency.group(2)),
        errors.group(1),
        peaks["server"],
        peaks["estimator"],
    )


def stop_leftovers(pids: set[int], grace_seconds: float = 60.0) -> None:
    """api_load.py gives its server 10 s to stop; a busy one outlives that, with its estimator child.
    Let them finish stopping, then kill what is left (only the processes this run started)."""
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.5)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def growth(first: float, last: float, pods_first: int, pods_last: int) -> float:
    """Exponent k in cost ~ pods^k between two fleet sizes."""
    if first <= 0 or last <= 0:
        return math.nan
    return math.log(last / first) / math.log(pods_last / pods_first)


def plot(points: list[Point], path: Path, caption: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pods = [p.pods for p in points]
    figure, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    panels = [
        ("estimator pass (s)", [("one pass", [p.pass_seconds for p in points])]),
        (
            "peak RSS (MB)",
            [
                ("server process", [p.server_peak_rss_mb for p in points]),
                ("estimator child", [p.estimator_peak_rss_mb for p in points]),
                ("one pass, alone", [p.pass_peak_rss_mb for p in points]),
            ],
        ),
        (
            "API p99 (ms), HPA query",
            [("p99", [p.p99_ms for p in points]), ("max", [p.max_ms for p in points])],
        ),
    ]
    for axis, (title, series) in zip(axes, panels, strict=True):
        for label, values in series:
            axis.plot(pods, values, marker="o", label=label)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("pods")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(caption, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, nargs="+", default=[1000, 10_000, 50_000])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=2, help="estimator passes per size (best is kept)")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "scaling-curve.png")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    points: list[Point] = []
    for pods in args.pods:
        pass_seconds, pass_rss = estimator_pass(pods, args.repeat)
        p99, worst, errors, server_rss, estimator_rss = api_under_load(pods, args.rate, args.seconds)
        points.append(Point(pods, pass_seconds, pass_rss, server_rss, estimator_rss, p99, worst, errors))
        print(f"  {points[-1]}", flush=True)
    load_after = os.getloadavg()[0]
    print()
    print(
        "| pods | served pass s | pass peak RSS MB | server peak RSS MB | worker peak RSS MB | API p99 ms | API max ms | errors |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for p in points:
        print(
            f"| {p.pods:,} | {p.pass_seconds:.3f} | {p.pass_peak_rss_mb:.0f} | {p.server_peak_rss_mb:.0f} "
            f"| {p.estimator_peak_rss_mb:.0f} | {p.p99_ms:.1f} | {p.max_ms:.1f} | {p.errors} |"
        )
    first, last = points[0], points[-1]
    if len(points) > 1:
        print()
        print(f"growth exponent from {first.pods:,} to {last.pods:,} pods (1 = linear):")
        for name in ("pass_seconds", "server_peak_rss_mb", "estimator_peak_rss_mb", "p99_ms"):
            print(f"  {name}: {growth(getattr(first, name), getattr(last, name), first.pods, last.pods):.2f}")
    caption = (
        f"wattscale {time.strftime('%Y-%m-%d')}: API at {args.rate:g} req/s with the pipeline polling N simulated "
        f"pods every 15 s; load average {load_before:.1f} -> {load_after:.1f} on {os.cpu_count()} cores"
    )
    plot(points, args.png, caption)
    print(f"\nplot: {args.png.relative_to(ROOT) if args.png.is_relative_to(ROOT) else args.png}")
    print(f"load average {load_before:.1f} before, {load_after:.1f} after ({os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

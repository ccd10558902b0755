"""`wattscale serve` with authentication, authorization and the pipeline, under a steady request rate.

    python bench/load_serve.py --rate 1000 --seconds 600

Starts the real stack (tests/cluster/kubeharness/stack.py: kube-apiserver, etcd, controller-manager,
the kubelet stand-in, `wattscale serve` from its manifests with a simulated collector polled every
second), then sends the HPA's Pods query straight to the adapter as the aggregator does: TLS with
the front-proxy certificate, as the HPA's ServiceAccount (api_load's identity) (not system:masters, so every request is
authorized through SubjectAccessReview, cached for 10 s by the adapter). The open-loop sender and
its percentiles are bench/api_load.py's. Prints the adapter's RSS (serve and its worker process)
after warm-up and at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "cluster"))
sys.path.insert(0, str(HERE))

from api_load import load  # noqa: E402
from kubeharness.stack import running_stack  # noqa: E402


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and its children (the worker process)."""
    total = 0
    for process in (pid, *children(pid)):
        try:
            for line in Path(f"/proc/{process}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


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


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every_seconds: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.every_seconds = every_seconds
        self.samples: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every_seconds):
            self.samples.append(rss_bytes(self.pid))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warmup-seconds", type=float, default=30.0, help="load before RSS is first read")
    args = parser.parse_args()
    with running_stack(Path(tempfile.mkdtemp(prefix="wattscale-load-"))) as stack:
        proxy = stack.plane.front_proxy_client
        context = ssl.create_default_context(cafile=str(stack.adapter.ca.cert_path))
        context.load_cert_chain(str(proxy.cert_path), str(proxy.key_path))
        url = stack.adapter.metric_url("/namespaces/llm/pods/%2A/gpu_power_watts?labelSelector=app%3Dphi")
        pid = stack.adapter.process.pid
        workers = [child for child in children(pid) if b"spawn_main" in _cmdline(child)]
        pids = {"server": pid, "worker": workers[0] if workers else pid}
        args.pods = args.items = len(stack.pods)
        args.poll_interval = 1.0  # the harness's simulated collector
        measured = args.seconds
        args.seconds = args.warmup_seconds
        print(f"warm-up: {args.warmup_seconds:.0f} s at {args.rate:.0f} req/s")
        asyncio.run(load(args, context, url, pids))
        sampler = RssSampler(pid)
        before = rss_bytes(pid)
        sampler.start()
        args.seconds = measured
        print(f"measured run: {measured:.0f} s")
        asyncio.run(load(args, context, url, pids))
        sampler.stop.set()
        after = rss_bytes(pid)
        stack.adapter.process.check_running()
    peak = max(sampler.samples or [after])
    print(
        f"adapter RSS (serve + worker process): after warm-up {before / 2**20:.1f} MiB, at the end "
        f"{after / 2**20:.1f} MiB ({(after / before - 1) * 100:+.1f}%), peak {peak / 2**20:.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Hostile input against `wattscale serve` with authentication on, in a real control plane.

    python bench/fuzz_api.py --requests 10000

Starts kube-apiserver, etcd and kube-controller-manager (tests/cluster/build.sh builds them), the
kubelet stand-in with a steady workload, and `wattscale serve` deployed from its manifests behind the
aggregator; then sends generated requests straight to the adapter, as the aggregator reaches it
(TLS, front-proxy certificate, X-Remote-* identities; also no identity, bogus tokens, raw malformed
HTTP and slow clients; see tests/cluster/kubeharness/hostile.py for the generator and the rules).
Prints the answer codes and every rule broken; exits 1 if any was.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "cluster"))

from kubeharness import hostile
from kubeharness.stack import running_stack


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=24)
    parser.add_argument(
        "--slow-clients", type=int, default=20, help="connections held idle during each batch"
    )
    args = parser.parse_args()
    with running_stack(Path(tempfile.mkdtemp(prefix="wattscale-fuzz-"))) as stack:
        started = time.perf_counter()
        report = asyncio.run(
            hostile.run(
                stack.target(),
                requests=args.requests,
                seed=args.seed,
                concurrency=args.concurrency,
                slow_clients=args.slow_clients,
            )
        )
        elapsed = time.perf_counter() - started
        stack.adapter.process.check_running()
        tracebacks = stack.adapter.process.log_path.read_text(errors="replace").count("Traceback")
    print(report.summary())
    print(f"elapsed: {elapsed:.0f} s ({report.requests / elapsed:.0f} requests/s)")
    print(f"tracebacks in the adapter's log: {tracebacks}")
    return 1 if report.violations or report.probe_failures or tracebacks else 0


if __name__ == "__main__":
    sys.exit(main())

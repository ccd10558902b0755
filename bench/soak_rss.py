"""RSS of the server and its worker over time, with the real pipeline at 1 s polls and a steady load.

    python bench/soak_rss.py --pods 1000 --minutes 10 --rate 100
    python bench/soak_rss.py --pods 10000 --minutes 10 --rate 100

Starts the same server as `bench/api_load.py` (pinned to CPU 0, front-proxy TLS, a simulated fleet
polled every second, a pass after each poll), sends the HPA-shaped query at `--rate` requests/s for
`--minutes` minutes, and prints each process's RSS every `--every` seconds, its growth from the first
sample after `--warmup-seconds` to the last, then the load's latency and errors.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from api_load import load, parser, rss_mib, server_running


async def soak(args: argparse.Namespace, context: object, url: str, pids: dict[str, int]) -> None:
    samples: list[tuple[float, dict[str, float]]] = []
    started = time.monotonic()

    async def sample() -> None:
        while True:
            samples.append((time.monotonic() - started, {name: rss_mib(pid) for name, pid in pids.items()}))
            print(
                f"t={samples[-1][0]:6.0f} s  "
                + "  ".join(f"{n} {v:7.1f} MiB" for n, v in samples[-1][1].items()),
                flush=True,
            )
            await asyncio.sleep(args.every)

    sampler = asyncio.create_task(sample())
    await load(args, context, url, pids)  # type: ignore[arg-type]
    sampler.cancel()
    samples.append((time.monotonic() - started, {name: rss_mib(pid) for name, pid in pids.items()}))
    settled = [s for s in samples if s[0] >= args.warmup_seconds] or samples
    first, last = settled[0], samples[-1]
    for name in pids:
        growth = (last[1][name] - first[1][name]) / first[1][name] * 100
        print(
            f"{name}: {first[1][name]:.1f} MiB at t={first[0]:.0f} s -> {last[1][name]:.1f} MiB at "
            f"t={last[0]:.0f} s ({growth:+.1f}%); max {max(s[1][name] for s in samples):.1f} MiB"
        )


def main() -> int:
    arguments = parser()
    arguments.description = __doc__
    arguments.add_argument("--minutes", type=float, default=10.0)
    arguments.add_argument("--every", type=float, default=15.0, help="seconds between RSS samples")
    arguments.add_argument("--warmup-seconds", type=float, default=60.0)
    args = arguments.parse_args()
    args.seconds = args.minutes * 60
    with server_running(args) as (pids, context, url):
        asyncio.run(soak(args, context, url, pids))
    return 0


if __name__ == "__main__":
    sys.exit(main())

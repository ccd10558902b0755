"""Exercise the node agent's NVML code (`collectors.nvml.NvmlReader`) on a real GPU and print what it read.

    python bench/nvml_check.py [--interval-seconds 2] [--pod-resources-socket PATH]

Reads every GPU twice, `interval` apart, and prints each field (with the reason for any field NVML
would not give), the energy-counter average power over the interval next to the 1 s average and the
instant reading, and the power-limit request a capper would get (a dry run: nothing is changed).
Exit status 1 when NVML cannot be loaded (no driver or no GPU).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict

from collectors.base import CollectorError
from collectors.nvml import NvmlReader


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--interval-seconds", type=float, default=2.0)
    parser.add_argument("--pod-resources-socket", default=None)
    args = parser.parse_args()

    reader = NvmlReader()
    try:
        started = time.perf_counter()
        first = reader.read_all()
        read_ms = (time.perf_counter() - started) * 1000.0
    except CollectorError as exc:
        print(f"nvml_check: {exc}", file=sys.stderr)
        return 1
    time.sleep(args.interval_seconds)
    second = reader.read_all()
    print(f"# {len(first)} GPU(s); one full read took {read_ms:.1f} ms")
    for before, after in zip(first, second, strict=True):
        document = asdict(after)
        if before.energy_joules_total is not None and after.energy_joules_total is not None:
            elapsed = after.timestamp_seconds - before.timestamp_seconds
            document["energy_average_watts_over_interval"] = (
                (after.energy_joules_total - before.energy_joules_total) / elapsed if elapsed > 0 else None
            )
        if after.power_limit_min_watts is not None and not after.lost:
            below_min = reader.set_power_limit(after.uuid, after.power_limit_min_watts - 50.0, apply=False)
            document["dry_run_power_limit_below_min"] = asdict(below_min)
        print(json.dumps(document, indent=2, sort_keys=True))
    if args.pod_resources_socket:
        from collectors.pod_resources import gpu_pods, list_pod_devices

        devices = asyncio.run(list_pod_devices(args.pod_resources_socket))
        mapping = gpu_pods(devices, [(r.uuid, r.index, r.mig_uuids) for r in second])
        print(json.dumps({"pod_devices": devices, "gpu_pods": mapping}, indent=2))
    reader.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

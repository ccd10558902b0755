"""`wattscale simulate`: one rack, one request trace, one capping policy; prints safety, service and
efficiency numbers. Tokens are also given relative to the no-cap run of the same trace and seed, which
is simulated alongside."""

from __future__ import annotations

import argparse
import json
import math
import sys

from collectors.durations import duration_seconds, non_negative_duration_seconds

HELP = "simulate a rack of H100 servers under a power cap with a capping policy"

_POLICIES = ("none", "static", "polca", "ours")
_TRACES = ("diurnal", "flash-crowd", "long-prompt-storm", "sync-prefill")


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", choices=_POLICIES, default="ours", help="capping policy (default: ours)")
    parser.add_argument(
        "--oversubscription",
        type=_positive_float,
        default=1.25,
        help="servers in the rack / servers its cap is rated for (default: 1.25)",
    )
    parser.add_argument(
        "--trace", choices=_TRACES, default="diurnal", help="request trace (default: diurnal)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; a run is a function of it (default: 0)"
    )
    parser.add_argument(
        "--duration",
        type=duration_seconds,
        default=1800.0,
        help="simulated time: 30m, 2h, or seconds (default: 1800)",
    )
    parser.add_argument(
        "--actuation-delay",
        type=non_negative_duration_seconds,
        default=1.0,
        help="seconds from a limit decision to the GPU enforcing it (default: 1; POLCA's out-of-band path: 40)",
    )
    parser.add_argument(
        "--pdu-delay",
        type=non_negative_duration_seconds,
        default=1.0,
        help="seconds the PDU's 1 s average reaches the controller late (default: 1)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from poweroperator.sim.engine import SimConfig, simulate

    config = SimConfig(
        policy=args.policy,
        trace=args.trace,
        oversubscription=args.oversubscription,
        seed=args.seed,
        duration_seconds=args.duration,
        actuation_delay_seconds=args.actuation_delay,
        pdu_delay_seconds=args.pdu_delay,
    )
    problems = config.problems()
    if problems:
        print("simulate: " + "; ".join(problems), file=sys.stderr)
        return 2
    result = simulate(config)
    uncapped = result if args.policy == "none" else simulate(dataclasses.replace(config, policy="none"))
    result = result.versus_uncapped(uncapped)
    record = result.to_dict()
    if args.json:
        print(json.dumps(record, sort_keys=True))
        return 0
    width = max(len(key) for key in record)
    for key, value in record.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    return 0

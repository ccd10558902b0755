"""Regenerate the README's capping benchmark table: every policy x trace x oversubscription x seed.

    python bench/simulate_table.py                 # 4 policies x 4 traces x {1.0, 1.25, 1.5} x 3 seeds, 30 min each
    python bench/simulate_table.py --seeds 5 --jobs 2 --jsonl runs.jsonl

Each run is `wattscale simulate` (poweroperator.sim); tokens are relative to the no-cap run of the same trace,
oversubscription and seed. Prints two Markdown tables: a summary per oversubscription and policy (worst
case over traces and seeds), then every (oversubscription, trace, policy) averaged over seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor

from poweroperator.sim.engine import RunResult, SimConfig, simulate
from poweroperator.sim.policies import POLICIES
from poweroperator.sim.traces import TRACES


def _run(config: SimConfig) -> RunResult:
    return simulate(config)


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def run_all(
    ratios: Sequence[float], seeds: int, duration_seconds: float, jobs: int, actuation_delay_seconds: float
) -> list[RunResult]:
    configs = [
        SimConfig(
            policy=policy,
            trace=trace,
            oversubscription=ratio,
            seed=seed,
            duration_seconds=duration_seconds,
            actuation_delay_seconds=actuation_delay_seconds,
        )
        for ratio in ratios
        for trace in TRACES
        for seed in range(seeds)
        for policy in POLICIES
    ]
    if jobs == 0:
        results = [_run(config) for config in configs]
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(_run, configs, chunksize=2))
    uncapped = {(r.trace, r.oversubscription, r.seed): r for r in results if r.policy == "none"}
    return [r.versus_uncapped(uncapped[(r.trace, r.oversubscription, r.seed)]) for r in results]


def _percent(value: float | None) -> float:
    return 100.0 * value if value is not None else float("nan")


def _times(value: float | None) -> float:
    return value if value is not None else float("nan")


def summary_table(results: Iterable[RunResult]) -> str:
    groups: dict[tuple[float, str], list[RunResult]] = defaultdict(list)
    for r in results:
        groups[(r.oversubscription, r.policy)].append(r)
    lines = [
        "| oversub. | policy | time above cap % (max) | worst 1 s overshoot % (max) | trips | HP tokens % (min) "
        "| LP tokens % (min) | p99 TTFT HP / LP vs no cap (max) | J/token (GPU, mean) "
        "| limit changes /GPU/min (mean) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (ratio, policy), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], POLICIES.index(kv[0][1]))):
        lines.append(
            f"| {ratio:g}x | {policy} | {_fmt(max(r.time_above_cap_percent for r in runs), 3)} "
            f"| {_fmt(max(r.worst_overshoot_1s_percent for r in runs), 1)} "
            f"| {sum(r.trips for r in runs)} "
            f"| {_fmt(min(_percent(r.tokens_high_vs_uncapped) for r in runs))} "
            f"| {_fmt(min(_percent(r.tokens_low_vs_uncapped) for r in runs))} "
            f"| {_fmt(max(_times(r.p99_ttft_high_vs_uncapped) for r in runs))}x / "
            f"{_fmt(max(_times(r.p99_ttft_low_vs_uncapped) for r in runs))}x "
            f"| {_fmt(statistics.fmean(r.gpu_joules_per_token for r in runs), 3)} "
            f"| {_fmt(statistics.fmean(r.limit_changes_per_gpu_per_minute for r in runs))} |"
        )
    return "\n".join(lines)


def full_table(results: Iterable[RunResult]) -> str:
    groups: dict[tuple[float, str, str], list[RunResult]] = defaultdict(list)
    for r in results:
        groups[(r.oversubscription, r.trace, r.policy)].append(r)
    lines = [
        "| oversub. | trace | policy | above cap % | worst 1 s % | trips | brakes | HP tok % | LP tok % "
        "| p99 TTFT HP s | p99 TTFT LP s | p99 TBT HP s | J/token | changes /GPU/min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def key(item: tuple[tuple[float, str, str], list[RunResult]]) -> tuple[float, int, int]:
        (ratio, trace, policy), _ = item
        return ratio, TRACES.index(trace), POLICIES.index(policy)

    for (ratio, trace, policy), runs in sorted(groups.items(), key=key):

        def mean(values: Iterable[float]) -> float:
            return statistics.fmean(values)

        lines.append(
            f"| {ratio:g}x | {trace} | {policy} | {_fmt(mean(r.time_above_cap_percent for r in runs), 3)} "
            f"| {_fmt(max(r.worst_overshoot_1s_percent for r in runs), 1)} | {sum(r.trips for r in runs)} "
            f"| {_fmt(mean(r.emergencies for r in runs), 1)} "
            f"| {_fmt(mean(_percent(r.tokens_high_vs_uncapped) for r in runs))} "
            f"| {_fmt(mean(_percent(r.tokens_low_vs_uncapped) for r in runs))} "
            f"| {_fmt(mean(r.p99_ttft_seconds_high for r in runs))} "
            f"| {_fmt(mean(r.p99_ttft_seconds_low for r in runs))} "
            f"| {_fmt(mean(r.p99_tbt_seconds_high for r in runs), 3)} "
            f"| {_fmt(mean(r.gpu_joules_per_token for r in runs), 3)} "
            f"| {_fmt(mean(r.limit_changes_per_gpu_per_minute for r in runs))} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--ratios", default="1.0,1.25,1.5", help="oversubscription ratios (default: 1.0,1.25,1.5)"
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds per configuration (default: 3)")
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds per run (default: 1800)")
    parser.add_argument("--actuation-delay", type=float, default=1.0, help="seconds (default: 1)")
    parser.add_argument(
        "--jobs", type=int, default=2, help="worker processes; 0: in this process (default: 2)"
    )
    parser.add_argument("--jsonl", help="also write one JSON line per run to this file")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    ratios = [float(text) for text in args.ratios.split(",")]
    results = run_all(ratios, args.seeds, args.duration, args.jobs, args.actuation_delay)
    elapsed = time.perf_counter() - started
    if args.jsonl:
        with open(args.jsonl, "w", encoding="utf-8") as out:
            for r in results:
                out.write(json.dumps(dataclasses.asdict(r), sort_keys=True) + "\n")
    print(
        f"{len(results)} runs ({len(POLICIES)} policies x {len(TRACES)} traces x {len(ratios)} ratios x "
        f"{args.seeds} seeds, {args.duration:g} s each, actuation delay {args.actuation_delay:g} s) "
        f"in {elapsed:.0f} s with {args.jobs} processes\n"
    )
    print(summary_table(results))
    print()
    print(full_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A randomised fleet as collectors would report it: every awkward case a pass meets, in one history.

Tests compare estimator implementations on it, so it has what real scrapes have: counter restarts,
dropped and jittered scrapes, re-scrapes at one instant, samples that arrive a poll late, samples
without a value, GPUs shared by two pods, pods without a GPU (Kepler's GPU counter, or CPU only),
gauge-only and counter-only GPUs, measured and unmeasured nodes, racks with labelled PDUs, one
unlabelled PDU and none, pods that start or stop inside the history, and pods whose figures
recording rules computed (`pod_*`). Pure: the caller's generator decides everything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

COLUMNS = ["metric", "value", "timestamp_seconds", "node", "gpu_uuid", "namespace", "pod", "rack", "pdu"]
BATCH_COLUMNS = ["collector", "received_seconds"]


@dataclass(frozen=True)
class SyntheticFleet:
    """`samples`: the long frame (`COLUMNS` plus `BATCH_COLUMNS`: which collector's poll brought each
    sample and when it arrived). `node_racks` and `racks` as `estimators.fleet.estimate_fleet` takes them."""

    samples: pd.DataFrame
    node_racks: dict[str, str]
    racks: pd.DataFrame
    poll_seconds: float

    def batches(self) -> list[pd.DataFrame]:
        """The samples as the collectors' polls delivered them, in arrival order."""
        by_batch = self.samples.groupby(BATCH_COLUMNS[::-1], sort=True)
        return [batch.reset_index(drop=True) for _, batch in by_batch]


class _Fleet:
    def __init__(
        self, rng: np.random.Generator, polls: int, poll_seconds: float, start_seconds: float
    ) -> None:
        self.rng = rng
        self.polls = polls
        self.poll_seconds = poll_seconds
        self.start_seconds = start_seconds
        self.rows: list[dict[str, object]] = []

    def scrape(
        self,
        collector: str,
        metric: str,
        labels: dict[str, str],
        value_at: Callable[[float], float],
        *,
        alive: tuple[int, int] | None = None,
        counter: bool = False,
    ) -> None:
        """One series scraped once a poll at its own offset: jittered, some dropped, some re-scraped at
        the same instant, some a poll late, a few without a value; a counter may restart once."""
        rng = self.rng
        offset = rng.uniform(0.0, 5.0)
        first, last = alive if alive is not None else (0, self.polls - 1)
        restart_poll = int(rng.integers(first + 1, last + 2)) if counter and rng.random() < 0.15 else None
        restarted_at = 0.0
        for k in range(first, last + 1):
            if rng.random() < 0.08:
                continue
            t = self.start_seconds + k * self.poll_seconds + offset + rng.uniform(-1.0, 1.0)
            since = t - self.start_seconds
            value = value_at(since)
            if restart_poll is not None and k == restart_poll:
                restarted_at = value - rng.uniform(0.0, 0.5) * (value - value_at(since - self.poll_seconds))
            if restart_poll is not None and k >= restart_poll:
                value = value - restarted_at
            if rng.random() < 0.01:
                value = float("nan")
            late = rng.random() < 0.03 and k < self.polls - 1
            received = self.start_seconds + (k + 1 + late) * self.poll_seconds - 0.5
            self.rows.append(
                {"metric": metric, "value": value, "timestamp_seconds": t, **labels}
                | {"collector": collector, "received_seconds": received}
            )
            if rng.random() < 0.03:  # a re-scrape at the same instant, a counter a little further on
                again = value + (rng.uniform(0.0, 5.0) if counter else 0.0)
                self.rows.append(
                    {"metric": metric, "value": again, "timestamp_seconds": t, **labels}
                    | {"collector": collector, "received_seconds": received}
                )

    def lifetime(self) -> tuple[int, int]:
        """Most series live through the history; some start or stop inside it."""
        draw = self.rng.random()
        if draw < 0.1:
            return int(self.rng.integers(1, self.polls - 3)), self.polls - 1
        if draw < 0.2:
            return 0, int(self.rng.integers(2, self.polls - 2))
        return 0, self.polls - 1


def _counter(base: float, watts: float, wobble: float, rng: np.random.Generator) -> Callable[[float], float]:
    phase = rng.uniform(0.0, 100.0)
    return lambda t: base + watts * t + wobble * np.sin((t + phase) / 40.0) * 40.0


def _constant(value: float) -> Callable[[float], float]:
    return lambda t: value


def _gauge(watts: float, wobble: float, rng: np.random.Generator) -> Callable[[float], float]:
    phase = rng.uniform(0.0, 100.0)
    return lambda t: watts + wobble * np.cos((t + phase) / 40.0) + rng.normal(0.0, 2.0)


def random_fleet(
    rng: np.random.Generator,
    *,
    nodes: int = 12,
    gpus_per_node: int = 4,
    polls: int = 24,
    poll_seconds: float = 15.0,
    start_seconds: float = 1_790_000_000.0,
) -> SyntheticFleet:
    """A fleet of `nodes` nodes (four per rack) polled `polls` times (module docstring)."""
    fleet = _Fleet(rng, polls, poll_seconds, start_seconds - start_seconds % poll_seconds)
    node_names = [f"node-{n:02d}" for n in range(nodes)]
    rack_of = {name: f"rack-{n // 4}" for n, name in enumerate(node_names)}
    configured = {node: rack for node, rack in rack_of.items() if rack != "rack-2"}
    pod_number = 0

    def new_pod() -> tuple[str, str]:
        nonlocal pod_number
        pod_number += 1
        return ("llm" if rng.random() < 0.8 else "batch", f"server-{pod_number:03d}")

    pods_on_node: dict[str, list[tuple[str, str]]] = {name: [] for name in node_names}
    for node in node_names:
        for g in range(gpus_per_node):
            gpu = {"node": node, "gpu_uuid": f"GPU-{node[-2:]}-{g}"}
            watts = rng.uniform(80.0, 650.0)
            kind = rng.random()
            if kind < 0.8:  # energy counter (most GPUs), some without a gauge
                fleet.scrape(
                    "gpus", "gpu_energy_joules_total", gpu, _counter(1e6, watts, 30, rng), counter=True
                )
            if kind >= 0.1:  # power gauge (gauge-only where there is no counter)
                fleet.scrape("gpus", "gpu_power_watts", gpu, _gauge(watts, 40, rng))
            sharing = rng.choice([0, 1, 2], p=[0.1, 0.7, 0.2])
            for _ in range(sharing):
                pod = new_pod()
                pods_on_node[node].append(pod)
                alive = fleet.lifetime()
                labels = {**gpu, "namespace": pod[0], "pod": pod[1]}
                assigned = 0.0 if rng.random() < 0.03 else 1.0
                fleet.scrape("gpus", "gpu_assignment_info", labels, _constant(assigned), alive=alive)
        for _ in range(int(rng.integers(0, 3))):  # pods without a GPU of their own
            pod = new_pod()
            pods_on_node[node].append(pod)
            if rng.random() < 0.5:
                labels = {"node": node, "namespace": pod[0], "pod": pod[1]}
                watts = rng.uniform(20.0, 200.0)
                fleet.scrape(
                    "kepler", "pod_gpu_energy_joules_total", labels, _counter(0, watts, 5, rng), counter=True
                )

    for node, pods in pods_on_node.items():
        for namespace, name in pods:
            labels = {"namespace": namespace, "pod": name}
            alive = fleet.lifetime()
            if rng.random() < 0.85:
                tokens = rng.choice([0.0, rng.uniform(5.0, 2500.0)], p=[0.1, 0.9])
                counter = _counter(rng.uniform(0, 1e6), tokens, tokens / 10, rng)
                fleet.scrape("vllm", "generation_tokens_total", labels, counter, alive=alive, counter=True)
                if rng.random() < 0.7:
                    prompt = _counter(0, 4 * tokens, tokens / 3, rng)
                    fleet.scrape("vllm", "prompt_tokens_total", labels, prompt, alive=alive, counter=True)
            if rng.random() < 0.5:
                busy = rng.uniform(0.0, 1.0)
                fleet.scrape("gpus", "pod_gpu_utilization_ratio", labels, _constant(busy), alive=alive)
            if rng.random() < 0.6:
                kepler = {"node": node, **labels}
                cpu = _counter(0, rng.uniform(5.0, 90.0), 3, rng)
                fleet.scrape("kepler", "pod_cpu_energy_joules_total", kepler, cpu, alive=alive, counter=True)

    recorded = [pod for pods in pods_on_node.values() for pod in pods][:: max(1, pod_number // 3)]
    for namespace, name in recorded:
        node = next(n for n, pods in pods_on_node.items() if (namespace, name) in pods)
        labels = {"node": node, "namespace": namespace, "pod": name}
        for metric, level in (
            ("pod_gpu_power_watts", 300.0),
            ("pod_cpu_power_watts", 40.0),
            ("pod_generation_tokens_per_second", 900.0),
            ("pod_prompt_tokens_per_second", 3000.0),
        ):
            if rng.random() < 0.85:
                fleet.scrape("prometheus", metric, labels, _gauge(level, level / 5, rng))

    for n, node in enumerate(node_names):
        labels = {"node": node} | ({"rack": rack_of[node]} if rack_of[node] == "rack-2" else {})
        watts = rng.uniform(1500.0, 3500.0)
        if n % 3 == 0:
            fleet.scrape(
                "nodes", "node_energy_joules_total", labels, _counter(5e6, watts, 80, rng), counter=True
            )
        elif n % 3 == 1:
            fleet.scrape("nodes", "node_power_watts", labels, _gauge(watts, 80, rng))
    for rack, pdu in (("rack-0", "pdu-a"), ("rack-0", "pdu-b"), ("rack-1", None)):
        labels = {"rack": rack} | ({"pdu": pdu} if pdu else {})
        watts = rng.uniform(4000.0, 9000.0)
        fleet.scrape("pdus", "pdu_power_watts", labels, _gauge(watts, 500, rng))
        if pdu == "pdu-a":
            fleet.scrape(
                "pdus", "pdu_energy_joules_total", labels, _counter(1e8, watts, 300, rng), counter=True
            )

    samples = pd.DataFrame.from_records(fleet.rows).reindex(columns=[*COLUMNS, *BATCH_COLUMNS])
    racks = pd.DataFrame(
        {
            "rack": ["rack-0", "rack-1", "rack-2"],
            "cap_watts": [20_000.0, 15_000.0, 30_000.0],
            "margin_ratio": [0.1, 0.05, 0.0],
        }
    )
    return SyntheticFleet(samples, configured, racks, poll_seconds)

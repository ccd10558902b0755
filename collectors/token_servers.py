"""What the LLM servers' collectors share (vLLM, SGLang, TGI, Triton/TensorRT-LLM): rules that map a
server's series to our per-pod samples, and the translation that applies them.

Per pod, counters are summed over the series that count distinct work (vLLM's `engine`, one per
data-parallel engine) and made reset-proof (`MonotonicSums`); series that are copies of one another
(SGLang's `tp_rank`: tensor-parallel ranks share one batch) are counted once by keeping the lowest
rank. Gauges are summed (request counts) or maxed (a cache ratio).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from collectors.base import Sample
from collectors.prometheus_text import ExporterCollector, ExporterSettings, first_label
from collectors.support import MonotonicSums, Series


@dataclass(frozen=True, slots=True)
class SeriesRule:
    source: str
    """Sample name as the server exposes it (`_total`, `_sum` included)."""
    metric: str
    """Our sample name (see `collectors.base`)."""
    kind: Literal["counter", "sum", "max"]
    scale: float = 1.0
    match: Mapping[str, str] = field(default_factory=dict)
    """Labels the series must have, e.g. {"request_type": "waiting"}."""
    rank: int = 0
    """When several rules give one metric for one pod, only the lowest rank present is used: the
    newer name first, the deprecated one as a fallback, never both."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenServerSettings(ExporterSettings):
    namespace_label: str = "namespace"
    pod_label: str = "pod"
    node_label: str = "node"
    """Labels carrying the pod's identity: from Prometheus's service discovery, or given per scrape
    target. A series without them is kept under its `instance` label."""

    def problems(self) -> list[str]:
        found = ExporterSettings.problems(self)
        for key in ("namespace_label", "pod_label", "node_label"):
            if not getattr(self, key):
                found.append(f"{key}: must not be empty")
        return found


class TokenServerCollector(ExporterCollector):
    settings_cls = TokenServerSettings
    settings: TokenServerSettings
    rules: ClassVar[tuple[SeriesRule, ...]] = ()
    copy_label: ClassVar[str | None] = None
    """A label whose values are copies of the same reading (keep the lowest value only)."""

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls.source_metrics = frozenset(rule.source for rule in cls.rules)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._counters = MonotonicSums()
        self._rules_by_source: dict[str, list[SeriesRule]] = defaultdict(list)
        for rule in self.rules:
            self._rules_by_source[rule.source].append(rule)

    def _pod_labels(self, labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        settings = self.settings
        namespace = labels.get(settings.namespace_label, "")
        pod = labels.get(settings.pod_label, "")
        node = labels.get(settings.node_label, "")
        if namespace and pod:
            found = [("namespace", namespace), ("pod", pod)]
        else:
            found = [("instance", first_label(labels, "instance") or "unknown")]
        if node:
            found.append(("node", node))
        return tuple(found)

    def translate(self, series: list[Series], now_seconds: float) -> list[Sample]:
        copy_label = self.copy_label
        lowest_copy: dict[tuple[tuple[str, str], ...], str] = {}
        if copy_label is not None:
            for s in series:
                value = s.labels.get(copy_label)
                if value is not None:
                    key = self._pod_labels(s.labels)
                    if key not in lowest_copy or _rank_key(value) < _rank_key(lowest_copy[key]):
                        lowest_copy[key] = value
        # (pod labels, metric) -> rank -> [(series identity, value)]
        readings: dict[tuple[tuple[tuple[str, str], ...], str], dict[int, list[tuple[object, float]]]] = (
            defaultdict(lambda: defaultdict(list))
        )
        kinds: dict[str, str] = {}
        stamps: dict[tuple[tuple[str, str], ...], float] = {}
        for s in series:
            rules = self._rules_by_source.get(s.name)
            if not rules:
                continue
            pod = self._pod_labels(s.labels)
            if copy_label is not None and s.labels.get(copy_label, lowest_copy.get(pod)) != lowest_copy.get(
                pod
            ):
                continue
            for rule in rules:
                if any(s.labels.get(k) != v for k, v in rule.match.items()):
                    continue
                identity = (s.name, tuple(sorted(s.labels.items())))
                readings[(pod, rule.metric)][rule.rank].append((identity, s.value * rule.scale))
                kinds[rule.metric] = rule.kind
            stamp = s.timestamp_seconds if s.timestamp_seconds is not None else now_seconds
            stamps[pod] = max(stamps.get(pod, stamp), stamp)
        samples: list[Sample] = []
        counter_readings: list[tuple[tuple[tuple[tuple[str, str], ...], str], object, float]] = []
        for (pod, metric), by_rank in readings.items():
            values = by_rank[min(by_rank)]
            kind = kinds[metric]
            if kind == "counter":
                counter_readings.extend(((pod, metric), identity, value) for identity, value in values)
                continue
            total = sum(v for _, v in values) if kind == "sum" else max(v for _, v in values)
            samples.append(
                Sample(metric=metric, value=total, timestamp_seconds=stamps[pod], labels=dict(pod))
            )
        for (pod, metric), total in self._counters.update(counter_readings).items():
            samples.append(
                Sample(metric=metric, value=total, timestamp_seconds=stamps[pod], labels=dict(pod))
            )
        return samples


def _rank_key(value: str) -> tuple[int, str]:
    return (int(value), "") if value.isdigit() else (1 << 30, value)

"""The shared base of every collector that reads Prometheus-format metrics, in either of two modes:

- `prometheus_url`: one instant query against a Prometheus server (the cluster already scrapes the
  exporter; its service-discovery labels, e.g. `namespace` and `pod`, come with each series);
- `scrape_urls`: the exporters' own `/metrics`, parsed with prometheus-client's parser, for clusters
  without Prometheus. Each target may carry labels (`namespace`, `pod`, `node`) that the exporter
  itself does not know.

A source module only says which source metrics it reads (`source_metrics`) and how its series become
`Sample`s (`translate`). `PrometheusTextCollector` (entry point `prometheus_text`) passes series
through unchanged, optionally renamed: a way to feed any exporter that already uses our names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from collectors.base import CollectorError, PodTargets, Sample
from collectors.discovery import pod_scrape_targets
from collectors.prometheus_api import PrometheusClient
from collectors.support import HttpPolledCollector, PollSettings, Series, build_settings, http_get

_URL = re.compile(r"^https?://[^/\s]+")


@dataclass(frozen=True, slots=True)
class ScrapeTarget:
    """An exporter's `/metrics` URL and the labels to add to its series (the exporter's own win)."""

    url: str
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_raw(cls, value: object, key: str, problems: list[str]) -> ScrapeTarget:
        if isinstance(value, str):
            return cls(url=value)
        if isinstance(value, Mapping) and isinstance(value.get("url"), str):
            labels = value.get("labels", {})
            extra = set(value) - {"url", "labels"}
            if extra:
                problems.append(f"{key}: unknown keys {sorted(extra)} (want url, labels)")
            if not isinstance(labels, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
            ):
                problems.append(f"{key}.labels: want a mapping of strings to strings")
                labels = {}
            return cls(url=str(value["url"]), labels=dict(labels))
        problems.append(f"{key}: want a URL or {{url: ..., labels: {{...}}}}, got {value!r}")
        return cls(url="")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExporterSettings(PollSettings):
    prometheus_url: str | None = None
    query: str | None = None
    """Overrides the default selector; it must return raw series that keep `__name__`."""
    scrape_urls: tuple[ScrapeTarget, ...] = ()
    bearer_token_file: str | None = None
    """Sent as `Authorization: Bearer` to Prometheus or the exporters (re-read at every poll)."""
    tls_ca_file: str | None = None
    tls_insecure_skip_verify: bool = False
    max_response_bytes: int = 64 * 1024 * 1024
    discover_labels: Mapping[str, str] = field(default_factory=dict)
    """With neither URL setting: scrape the pods whose labels include all of these (see discovery)."""
    discover_port: str = "metrics"
    """With neither URL setting: the container port name to scrape, else `prometheus.io/port`."""

    def problems(self) -> list[str]:
        found = PollSettings.problems(self)
        if self.prometheus_url is not None and self.scrape_urls:
            found.append("prometheus_url, scrape_urls: set at most one of them (neither: discover pods)")
        if not self.discover_port:
            found.append("discover_port: must not be empty")
        if self.prometheus_url is not None and not _URL.match(self.prometheus_url):
            found.append(f"prometheus_url: want http(s)://host[:port], got {self.prometheus_url!r}")
        if self.query is not None and self.prometheus_url is None:
            found.append("query: only used with prometheus_url")
        for i, target in enumerate(self.scrape_urls):
            if target.url and not _URL.match(target.url):
                found.append(f"scrape_urls[{i}]: want http(s)://host[:port]/path, got {target.url!r}")
        for key in ("bearer_token_file", "tls_ca_file"):
            path = getattr(self, key)
            if path is not None and not Path(path).is_file():
                found.append(f"{key}: no such file {path!r}")
        if self.max_response_bytes < 1024:
            found.append("max_response_bytes: must be >= 1024")
        return found


def parse_exposition(text: str, keep: Callable[[str], bool] | None = None) -> list[Series]:
    """Series in a `/metrics` answer (Prometheus text format), keeping only names `keep` accepts."""
    series: list[Series] = []
    if keep is not None:
        text = _wanted_lines(text, keep)
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name = sample.name
                series.append(
                    Series(
                        name=name,
                        labels=sample.labels,
                        value=float(sample.value),
                        timestamp_seconds=float(sample.timestamp) if sample.timestamp is not None else None,
                    )
                )
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise CollectorError(f"malformed Prometheus text: {exc}") from exc
    return series


def _wanted_lines(text: str, keep: Callable[[str], bool]) -> str:
    """Only the sample lines `keep` wants, before the (slow) parser sees them.

    A vLLM answer is mostly histogram buckets the collector never reads; dropping them first cuts
    the parse cost about tenfold. `# TYPE` lines go too, so samples are parsed as untyped and keep
    their names exactly as exposed (as Prometheus stores them)."""
    wanted = []
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        end = len(line)
        for stop in ("{", " ", "\t"):
            at = line.find(stop)
            if 0 <= at < end:
                end = at
        if keep(line[:end]):
            wanted.append(line)
    return "\n".join(wanted) + "\n"


def first_label(labels: Mapping[str, str], *keys: str) -> str:
    """The value of the first of `keys` present and non-empty, else ""."""
    for key in keys:
        value = labels.get(key)
        if value:
            return value
    return ""


class ExporterCollector(HttpPolledCollector):
    """Base of the Prometheus-format sources; see the module docstring."""

    settings_cls: ClassVar[type[ExporterSettings]] = ExporterSettings
    settings: ExporterSettings
    source_metrics: ClassVar[frozenset[str]] = frozenset()
    """Sample names (as in the exposition, `_total` included) this source reads; empty = all."""

    _pod_targets: PodTargets | None = None

    @classmethod
    def from_settings(cls, name: str, raw: Mapping[str, object]) -> Self:
        return cls(name, build_settings(cls.settings_cls, name, raw))

    def use_pod_targets(self, pods: PodTargets) -> None:
        """Where to find the exporters when neither `prometheus_url` nor `scrape_urls` is set."""
        self._pod_targets = pods

    def _headers(self) -> dict[str, str]:
        if self.settings.bearer_token_file is None:
            return {}
        token = Path(self.settings.bearer_token_file).read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    def query_names(self) -> frozenset[str]:
        """The metric names read from Prometheus when no `query` is set."""
        return self.source_metrics

    def _keep(self, metric: str) -> bool:
        return not self.source_metrics or metric in self.source_metrics

    async def fetch_series(self) -> list[Series]:
        settings = self.settings
        if settings.prometheus_url is not None:
            client = PrometheusClient(
                self._get_session(),
                settings.prometheus_url,
                headers=self._headers(),
                max_response_bytes=settings.max_response_bytes,
            )
            if settings.query is not None:
                # A custom query's series are stamped with the evaluation time (see PrometheusClient).
                return await client.query(settings.query)
            return await client.latest_samples(self.query_names(), at_seconds=self._clock())
        return await self._scrape_all(settings.scrape_urls or self._discovered_targets())

    def _discovered_targets(self) -> list[ScrapeTarget]:
        settings = self.settings
        if self._pod_targets is None:
            raise CollectorError(
                f"{self.name}: no prometheus_url or scrape_urls, and no cluster to discover pods in"
            )
        found = pod_scrape_targets(
            self._pod_targets(), match_labels=settings.discover_labels, port_name=settings.discover_port
        )
        if not found:
            wanted = ",".join(f"{k}={v}" for k, v in sorted(settings.discover_labels.items())) or "any"
            raise CollectorError(
                f"{self.name}: no running pod with labels {wanted} names port {settings.discover_port!r} "
                f"or has a prometheus.io/port annotation"
            )
        return [ScrapeTarget(url=target.url, labels=target.labels) for target in found]

    async def _scrape_all(self, targets: Sequence[ScrapeTarget]) -> list[Series]:
        session, headers = self._get_session(), self._headers()
        per_target = await self._from_each(
            targets, lambda target: target.url, lambda target: self._scrape(session, target, headers)
        )
        return [series for found in per_target for series in found]

    async def _scrape(
        self, session: aiohttp.ClientSession, target: ScrapeTarget, headers: Mapping[str, str]
    ) -> list[Series]:
        body = await http_get(
            session,
            target.url,
            headers={"Accept": "text/plain;version=0.0.4", **headers},
            max_bytes=self.settings.max_response_bytes,
            ssl=self._ssl(),
        )
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CollectorError(f"{target.url}: answer is not UTF-8") from exc
        try:
            found = parse_exposition(text, self._keep)
        except CollectorError as exc:
            raise CollectorError(f"{target.url}: {exc}") from exc
        if not target.labels:
            return found
        return [Series(s.name, {**target.labels, **s.labels}, s.value, s.timestamp_seconds) for s in found]

    def translate(self, series: list[Series], now_seconds: float) -> list[Sample]:
        raise NotImplementedError

    async def _poll(self) -> list[Sample]:
        series = await self.fetch_series()
        return self.translate(series, self._clock())


@dataclass(frozen=True, slots=True, kw_only=True)
class PrometheusTextSettings(ExporterSettings):
    metrics: tuple[str, ...] = ()
    """Sample names to keep; empty keeps everything."""
    rename: Mapping[str, str] = field(default_factory=dict)
    """Source name -> sample name, e.g. {"my_gpu_watts": "gpu_power_watts"}."""

    def problems(self) -> list[str]:
        found = ExporterSettings.problems(self)
        if self.prometheus_url is not None and self.query is None and not self.metrics:
            found.append("metrics: list the metrics to read, or set `query`")
        return found


class PrometheusTextCollector(ExporterCollector):
    """Series passed through as samples, with their own labels (plus the target's)."""

    settings_cls = PrometheusTextSettings
    settings: PrometheusTextSettings

    def __init__(self, name: str, settings: ExporterSettings, **kwargs: Any) -> None:
        super().__init__(name, settings, **kwargs)
        assert isinstance(settings, PrometheusTextSettings)
        self._wanted = frozenset(settings.metrics)

    def query_names(self) -> frozenset[str]:
        return self._wanted

    def _keep(self, metric: str) -> bool:
        return not self._wanted or metric in self._wanted

    def translate(self, series: list[Series], now_seconds: float) -> list[Sample]:
        rename = self.settings.rename
        return [
            Sample(
                metric=rename.get(s.name, s.name),
                value=s.value,
                timestamp_seconds=s.timestamp_seconds if s.timestamp_seconds is not None else now_seconds,
                labels=dict(s.labels),
            )
            for s in series
        ]

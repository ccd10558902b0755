"""What every source collector shares: typed settings from raw mappings, the poll loop's retries and
self-metrics, bounded HTTP reads with one error mapping, and reset-aware counter sums.

Errors::

    CollectorError                  (collectors.base) a poll failed; not retried when the answer is malformed
     +-- TransientCollectorError    timeout, refused connection, 5xx: retried with backoff inside one poll
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import ssl
import time
import types
import typing
import weakref
from collections import defaultdict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import aiohttp
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from collectors.base import CollectorConfigError, CollectorError, Sample

log = logging.getLogger("wattscale.collectors")


class TransientCollectorError(CollectorError):
    """The source may answer next time: a timeout, a refused connection, a 5xx. Retried within a poll."""


# --------------------------------------------------------------------------------------------------
# Settings


class Secret:
    """A credential read from settings. `repr` and `str` never show it; `reveal()` where it is sent."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Settings(Protocol):
    def problems(self) -> list[str]: ...


S = TypeVar("S", bound=Settings)

# Keys the pipeline's config carries for every collector; settings classes do not declare them.
_PIPELINE_KEYS = frozenset({"name", "type"})


def _convert(value: object, hint: Any, key: str, problems: list[str]) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if value is None:
            return None
        return _convert(value, options[0], key, problems)
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value in allowed:
            return value
        problems.append(f"{key}: want one of {', '.join(map(str, allowed))}, got {value!r}")
        return allowed[0]
    if hint is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{key}: want true or false, got {value!r}")
        return False
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append(f"{key}: want an integer, got {value!r}")
        return 0
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        problems.append(f"{key}: want a number, got {value!r}")
        return 0.0
    if hint is str:
        if isinstance(value, str):
            return value
        problems.append(f"{key}: want a string, got {value!r}")
        return ""
    if hint is Secret:
        if isinstance(value, str):
            return Secret(value)
        problems.append(f"{key}: want a string")
        return Secret("")
    if origin is tuple:
        item_hint = typing.get_args(hint)[0]
        if isinstance(value, str) or not isinstance(value, Sequence):
            problems.append(f"{key}: want a list, got {value!r}")
            return ()
        return tuple(_convert(item, item_hint, f"{key}[{i}]", problems) for i, item in enumerate(value))
    if origin is Mapping or hint is Mapping:
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            problems.append(f"{key}: want a mapping of strings to strings, got {value!r}")
            return {}
        return dict(value)
    from_raw = getattr(hint, "from_raw", None)
    if from_raw is not None:
        return from_raw(value, key, problems)
    raise TypeError(f"settings field {key} has an unsupported type {hint!r}")  # our bug, not the user's


def _problem_key(problem: str) -> str:
    return problem.split(":", 1)[0].split("[", 1)[0].split(".", 1)[0]


def build_settings(settings_cls: type[S], collector: str, raw: Mapping[str, object]) -> S:
    """Turn a raw config mapping into `settings_cls`, or raise `CollectorConfigError` with every problem:
    unknown keys, missing keys, wrong types, then the class's own `problems()`."""
    hints = typing.get_type_hints(settings_cls)
    fields = {f.name: f for f in dataclasses.fields(settings_cls)}  # type: ignore[arg-type]
    problems: list[str] = []
    kwargs: dict[str, Any] = {}
    for key in raw:
        if key not in fields and key not in _PIPELINE_KEYS:
            problems.append(f"{key}: unknown setting (known: {', '.join(sorted(fields))})")
    for field_name, field in fields.items():
        if field_name in raw:
            kwargs[field_name] = _convert(raw[field_name], hints[field_name], field_name, problems)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            problems.append(f"{field_name}: required")
    if not any(p.endswith(": required") for p in problems):
        settings = settings_cls(**kwargs)
        # A field already reported for its type holds a placeholder: do not judge it again.
        reported = {_problem_key(p) for p in problems}
        problems.extend(p for p in settings.problems() if _problem_key(p) not in reported)
        if not problems:
            return settings
    # One clear line per misconfigured collector, at start-up.
    log.error(
        "collector.config_invalid",
        extra={"event": "collector.config_invalid", "collector": collector, "problems": problems},
    )
    raise CollectorConfigError(collector, problems)


MAX_JITTER = 1.5
"""A retry waits backoff x 2^attempt x a random factor in [0.5, MAX_JITTER)."""
HANG_GRACE_SECONDS = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PollSettings:
    """Timing and bounds common to every collector."""

    interval_seconds: float = 15.0
    timeout_seconds: float = 5.0
    """Per attempt; retries happen within one interval."""
    retries: int = 2
    backoff_seconds: float = 0.25
    """First retry delay; doubled for each later retry, with jitter."""
    max_samples: int = 200_000
    """A poll that would return more fails instead: a runaway source must not flood the pipeline."""

    @property
    def poll_timeout_seconds(self) -> float:
        """Every attempt timing out and every backoff at its jittered maximum, plus a grace, so the
        poll loop's own timeout and error metrics always come before the pipeline's hang guard."""
        backoffs = sum(self.backoff_seconds * 2.0**attempt * MAX_JITTER for attempt in range(self.retries))
        return (self.retries + 1) * self.timeout_seconds + backoffs + HANG_GRACE_SECONDS

    def problems(self) -> list[str]:
        found: list[str] = []
        if not self.interval_seconds > 0:
            found.append("interval_seconds: must be > 0")
        if not 0 < self.timeout_seconds <= self.interval_seconds:
            found.append("timeout_seconds: must be > 0 and <= interval_seconds")
        if self.retries < 0:
            found.append("retries: must be >= 0")
        if self.backoff_seconds < 0:
            found.append("backoff_seconds: must be >= 0")
        if self.max_samples < 1:
            found.append("max_samples: must be >= 1")
        return found


# --------------------------------------------------------------------------------------------------
# Self-metrics
#
# The pipeline keeps its own per-collector metrics (`wattscale_collector_up`, `_errors_total`, ...)
# on the app's registry. These are what only the collector sees: retries folded into one failed
# poll, failed targets within a poll that still succeeded, the answer being malformed rather than
# late. They live on prometheus-client's default registry unless one is given, with a `source_`
# infix so the two sets never clash on one /metrics page.


@dataclass(frozen=True, slots=True)
class SelfMetrics:
    last_success_seconds: Gauge
    errors_total: Counter
    duration_seconds: Gauge
    samples: Gauge


# Keyed by the registry itself, weakly: an id() can be reused once a registry is collected, and a
# new registry would then be handed metrics that live in the dead one.
_SELF_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, SelfMetrics] = weakref.WeakKeyDictionary()


def self_metrics(registry: CollectorRegistry | None = None) -> SelfMetrics:
    """The `wattscale_collector_*` metrics in `registry`, created once per registry."""
    registry = registry if registry is not None else REGISTRY
    found = _SELF_METRICS.get(registry)
    if found is None:
        found = SelfMetrics(
            last_success_seconds=Gauge(
                "wattscale_collector_source_last_success_timestamp_seconds",
                "Unix time of the collector's last successful poll.",
                ["collector"],
                registry=registry,
            ),
            errors_total=Counter(
                "wattscale_collector_source_errors_total",
                "Failed polls (after retries), by reason.",
                ["collector", "reason"],
                registry=registry,
            ),
            duration_seconds=Gauge(
                "wattscale_collector_source_poll_duration_seconds",
                "Wall time of the collector's last poll, retries included.",
                ["collector"],
                registry=registry,
            ),
            samples=Gauge(
                "wattscale_collector_source_samples",
                "Samples returned by the collector's last successful poll.",
                ["collector"],
                registry=registry,
            ),
        )
        _SELF_METRICS[registry] = found
    return found


# --------------------------------------------------------------------------------------------------
# The poll loop


class PolledCollector:
    """Base for collectors: `collect()` runs `_poll()` with retries, backoff, a per-attempt timeout, the
    output bound, self-metrics and state-change logging. Subclasses implement `_poll` and may extend
    `aclose`."""

    name: str
    interval_seconds: float
    poll_timeout_seconds: float
    settings: PollSettings

    def __init__(
        self,
        name: str,
        poll: PollSettings,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.interval_seconds = poll.interval_seconds
        self.poll_timeout_seconds = poll.poll_timeout_seconds
        self.settings = poll
        """Subclasses narrow its type (`settings: RedfishPduSettings`)."""
        self._poll_settings = poll
        self._metrics = self_metrics(registry)
        self._clock = clock
        self._failing = False
        self._log = logging.LoggerAdapter(log, {"collector": name, "type": type(self).__name__})

    async def _poll(self) -> list[Sample]:
        raise NotImplementedError

    async def collect(self) -> Sequence[Sample]:
        settings = self._poll_settings
        started = time.monotonic()
        attempt = 0
        try:
            while True:
                try:
                    async with asyncio.timeout(settings.timeout_seconds):
                        samples = await self._poll()
                    break
                except TimeoutError as exc:
                    error: CollectorError = TransientCollectorError(
                        f"{self.name}: no answer within {settings.timeout_seconds:g} s"
                    )
                    error.__cause__ = exc
                except TransientCollectorError as exc:
                    error = exc
                if attempt >= settings.retries:
                    raise error
                delay = settings.backoff_seconds * (2**attempt) * random.uniform(0.5, MAX_JITTER)
                attempt += 1
                await asyncio.sleep(delay)
            if len(samples) > settings.max_samples:
                raise CollectorError(
                    f"{self.name}: {len(samples)} samples exceed max_samples={settings.max_samples}"
                )
        except CollectorError as exc:
            reason = "transient" if isinstance(exc, TransientCollectorError) else "invalid_answer"
            self._metrics.errors_total.labels(self.name, reason).inc()
            self._metrics.duration_seconds.labels(self.name).set(time.monotonic() - started)
            if not self._failing:
                self._failing = True
                self._log.warning(
                    "collector.failing",
                    extra={"event": "collector.failing", "error": str(exc), "attempts": attempt + 1},
                )
            raise
        self._metrics.duration_seconds.labels(self.name).set(time.monotonic() - started)
        self._metrics.last_success_seconds.labels(self.name).set(self._clock())
        self._metrics.samples.labels(self.name).set(len(samples))
        if self._failing:
            self._failing = False
            self._log.info("collector.recovered", extra={"event": "collector.recovered"})
        return samples

    async def aclose(self) -> None:
        return None


# --------------------------------------------------------------------------------------------------
# HTTP


@contextlib.contextmanager
def mapped_http_errors(what: str) -> Iterator[None]:
    """Turn aiohttp's errors into ours, the most specific first: connection problems and 5xx may pass,
    so they are transient; anything else about the answer is not."""
    try:
        yield
    except aiohttp.ClientResponseError as exc:
        if exc.status >= 500 or exc.status == 429:
            raise TransientCollectorError(f"{what}: HTTP {exc.status} {exc.message}") from exc
        raise CollectorError(f"{what}: HTTP {exc.status} {exc.message}") from exc
    except aiohttp.ClientConnectorCertificateError as exc:
        # Retrying will not change the certificate: say so at once.
        raise CollectorError(
            f"{what}: TLS: {exc.certificate_error}; set tls_ca_file (or tls_insecure_skip_verify)"
        ) from exc
    except aiohttp.ClientPayloadError as exc:
        raise TransientCollectorError(f"{what}: truncated answer: {exc}") from exc
    except (aiohttp.ClientConnectionError, OSError) as exc:
        raise TransientCollectorError(f"{what}: {type(exc).__name__}: {exc}") from exc
    except aiohttp.ClientError as exc:
        raise CollectorError(f"{what}: {type(exc).__name__}: {exc}") from exc


async def read_bounded(response: aiohttp.ClientResponse, max_bytes: int, what: str) -> bytes:
    """The body, or a `CollectorError` once it passes `max_bytes` (read in chunks, never all at once)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(65536):
        size += len(chunk)
        if size > max_bytes:
            raise CollectorError(f"{what}: answer larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def http_get(
    session: aiohttp.ClientSession,
    url: str,
    *,
    max_bytes: int,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    ssl: Any = None,
    what: str | None = None,
) -> bytes:
    what = what or url
    with mapped_http_errors(what):
        async with session.get(url, headers=headers, params=params, ssl=ssl) as response:
            response.raise_for_status()
            return await read_bounded(response, max_bytes, what)


T = TypeVar("T")
R = TypeVar("R")


class HttpPolledCollector(PolledCollector):
    """A collector that speaks HTTP: one aiohttp session (borrowed, or its own and closed by
    `aclose`), TLS options, and reading many targets where one dead target does not fail the poll."""

    def __init__(
        self,
        name: str,
        poll: PollSettings,
        *,
        session: aiohttp.ClientSession | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name, poll, registry=registry, clock=clock)
        self._session = session
        self._owns_session = session is None
        # Settings classes that offer TLS options name them so; the others use the system CAs.
        self._tls_ca_file: str | None = getattr(poll, "tls_ca_file", None)
        self._tls_insecure_skip_verify: bool = getattr(poll, "tls_insecure_skip_verify", False)
        self._ssl_context: Any = ...  # built on first use, once: it reads the CA file
        self._failing_targets: set[str] = set()

    def _ssl(self) -> Any:
        if self._ssl_context is ...:
            if self._tls_insecure_skip_verify:
                self._ssl_context = False
            elif self._tls_ca_file is not None:
                self._ssl_context = ssl.create_default_context(cafile=self._tls_ca_file)
            else:
                self._ssl_context = None
        return self._ssl_context

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No total timeout here: the poll loop's asyncio.timeout bounds each attempt.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl()))
            self._owns_session = True
        return self._session

    async def _from_each(
        self, targets: Sequence[T], name_of: Callable[[T], str], fetch: Callable[[T], Awaitable[R]]
    ) -> list[R]:
        """`fetch` every target at once. A target that fails is left out (logged when it starts and
        stops failing, counted as reason "target") unless every target fails: one dead pod or node
        must not make every other one's readings stale."""
        results = await asyncio.gather(*(fetch(target) for target in targets), return_exceptions=True)
        found: list[R] = []
        errors: list[CollectorError] = []
        for target, result in zip(targets, results, strict=True):
            name = name_of(target)
            if isinstance(result, CollectorError):
                errors.append(result)
                self._metrics.errors_total.labels(self.name, "target").inc()
                if name not in self._failing_targets:
                    self._failing_targets.add(name)
                    self._log.warning(
                        "collector.target_failing",
                        extra={"event": "collector.target_failing", "target": name, "error": str(result)},
                    )
                continue
            if isinstance(result, BaseException):
                raise result
            if name in self._failing_targets:
                self._failing_targets.discard(name)
                self._log.info(
                    "collector.target_recovered",
                    extra={"event": "collector.target_recovered", "target": name},
                )
            found.append(result)
        if errors and len(errors) == len(targets):
            first = errors[0]
            kind = TransientCollectorError if isinstance(first, TransientCollectorError) else CollectorError
            raise kind(f"{self.name}: all {len(targets)} targets failed; first: {first}") from first
        return found

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None


# --------------------------------------------------------------------------------------------------
# Series read from an exporter or from Prometheus


@dataclass(frozen=True, slots=True)
class Series:
    """One sample of one source series, before translation into `Sample`s."""

    name: str
    labels: Mapping[str, str]
    value: float
    timestamp_seconds: float | None = None


# --------------------------------------------------------------------------------------------------
# Counters


K = TypeVar("K", bound=Hashable)


class MonotonicSums:
    """Sums of source counters per output key that never go backwards while the key stays alive.

    A pod's energy is the sum of its containers' counters (or of per-engine token counters). When one
    container restarts, its counter drops to zero; when it disappears, its share would vanish from the
    sum. Either way a plain sum falls, and a rate over it goes wrong. Here a series that resets or
    vanishes leaves its last value behind in its key's carried total, which is what Prometheus's
    `increase()` does across resets. A series that comes back after skipping polls takes its carried
    value back (it still counts it itself), unless it came back lower: then it reset while unseen and
    the carried value stays. A key that vanishes entirely is forgotten, with its unseen series.
    """

    def __init__(self) -> None:
        self._last: dict[Hashable, tuple[Any, float]] = {}
        """Series in the latest poll: series -> (key, value)."""
        self._unseen: dict[Hashable, tuple[Any, float]] = {}
        """Series missing from the latest poll whose key is alive: their last value is carried."""
        self._carried: dict[Any, float] = defaultdict(float)

    def _returned(self, key: Hashable, series: Hashable, value: float) -> None:
        gone = self._unseen.pop(series, None)
        if gone is not None and gone[0] == key and value >= gone[1]:
            self._carried[key] -= gone[1]

    def update(self, readings: Iterable[tuple[K, Hashable, float]]) -> dict[K, float]:
        """`readings` are (output key, source series key, counter value); returns the sum per key."""
        sums: dict[K, float] = defaultdict(float)
        seen: set[Hashable] = set()
        for key, series, value in readings:
            previous = self._last.get(series)
            if previous is None:
                self._returned(key, series, value)
            elif value < previous[1]:
                self._carried[key] += previous[1]
            self._last[series] = (key, value)
            seen.add(series)
            sums[key] += value
        for series in [s for s in self._last if s not in seen]:
            key, value = self._last.pop(series)
            if key in sums:
                self._carried[key] += value
                self._unseen[series] = (key, value)
        for series in [s for s, (key, _) in self._unseen.items() if key not in sums]:
            del self._unseen[series]
        for key in [k for k in self._carried if k not in sums]:
            del self._carried[key]
        return {key: total + self._carried.get(key, 0.0) for key, total in sums.items()}

"""One Prometheus HTTP API client, shared by every collector that reads from a Prometheus server.

It speaks `/api/v1/query` directly over aiohttp rather than through prometheus-api-client, because that
library is blocking (requests) and each poll must stay cancellable by its timeout.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping

import aiohttp

from collectors.base import CollectorError
from collectors.support import Series, TransientCollectorError, mapped_http_errors, read_bounded


class PrometheusClient:
    """Instant queries against one server. The session is borrowed: its owner closes it."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        max_response_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._headers = dict(headers or {})
        self._max_response_bytes = max_response_bytes

    async def query(self, promql: str, *, at_seconds: float | None = None) -> list[Series]:
        """The instant vector `promql` evaluates to at `at_seconds` (default: the server's now).

        Each series' timestamp is the evaluation time, NOT the time its sample was scraped; use
        `query_with_sample_times` where rates are computed from the readings."""
        what = f"prometheus query {promql!r}"
        params = {"query": promql}
        if at_seconds is not None:
            params["time"] = f"{at_seconds:.3f}"
        with mapped_http_errors(what):
            async with self._session.get(
                f"{self._base_url}/api/v1/query", params=params, headers=self._headers
            ) as response:
                # 400/422/503 carry Prometheus's own error JSON, which says more than the status line.
                if response.status not in (400, 422, 503):
                    response.raise_for_status()
                body = await read_bounded(response, self._max_response_bytes, what)
                if response.status == 503 and not body.startswith(b"{"):
                    raise TransientCollectorError(f"{what}: HTTP 503")
        return parse_query_answer(body, what)

    async def latest_samples(self, names: Iterable[str], *, at_seconds: float) -> list[Series]:
        """The latest sample of every series named in `names`, each with the time it was scraped.

        An instant query answers with the evaluation time; rates computed from that are off by up to
        a scrape interval. `timestamp(selector)` gives each sample's own time but drops the metric
        name, so each name's times come back marked with it (`SAMPLE_TIME_OF`) and are joined to the
        values on the labels. Values and times are asked in ONE query: Prometheus stamps a scrape with
        its start and commits it when the answer is in, so two queries at the same `time` may see it
        on either side of the commit, pairing one scrape's value with another's time."""
        names = sorted(set(names))
        selector = '{__name__=~"' + "|".join(re.escape(name) for name in names) + '"}'
        stamps = (sample_times(f'{{__name__="{name}"}}', name) for name in names)
        answer = await self.query(" or ".join([selector, *stamps]), at_seconds=at_seconds)
        stamp_of: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        values: list[Series] = []
        for s in answer:
            of = s.labels.get(SAMPLE_TIME_OF)
            if of is None:
                values.append(s)
            else:
                labels = frozenset((k, v) for k, v in s.labels.items() if k != SAMPLE_TIME_OF)
                stamp_of[(of, labels)] = s.value
        return [
            Series(
                name=s.name,
                labels=s.labels,
                value=s.value,
                timestamp_seconds=stamp_of.get((s.name, frozenset(s.labels.items())), s.timestamp_seconds),
            )
            for s in values
        ]


SAMPLE_TIME_OF = "wattscale_sample_time_of"
"""The label marking a series of an answer as the sample times of the metric it names."""


def sample_times(selector: str, name: str) -> str:
    """PromQL for the scrape time of each sample `selector` selects, marked SAMPLE_TIME_OF=`name`: asked
    in the same query as the values (`selector or sample_times(...)`), so both come from one snapshot."""
    return f'label_replace(timestamp({selector}), "{SAMPLE_TIME_OF}", "{name}", "", "")'


def parse_query_answer(body: bytes, what: str) -> list[Series]:
    try:
        answer = json.loads(body)
    except ValueError as exc:
        raise CollectorError(f"{what}: answer is not JSON: {exc}") from exc
    if not isinstance(answer, dict):
        raise CollectorError(f"{what}: answer is not a JSON object")
    if answer.get("status") != "success":
        # Prometheus answers 422/400 with status "error" for a bad query, 503 while starting up.
        message = f"{what}: {answer.get('errorType', 'error')}: {answer.get('error', 'no message')}"
        if answer.get("errorType") in ("timeout", "canceled", "unavailable"):
            raise TransientCollectorError(message)
        raise CollectorError(message)
    data = answer.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        kind = data.get("resultType") if isinstance(data, dict) else None
        raise CollectorError(f"{what}: want an instant vector, got {kind!r}")
    result = data.get("result")
    if not isinstance(result, list):
        raise CollectorError(f"{what}: data.result is not a list")
    series: list[Series] = []
    for item in result:
        try:
            labels = dict(item["metric"])
            timestamp, text = item["value"]
            value = float(text)
            timestamp_seconds = float(timestamp)
        except (KeyError, TypeError, ValueError) as exc:
            raise CollectorError(f"{what}: malformed vector element {item!r}") from exc
        if math.isnan(value):
            continue  # Prometheus's stale marker or a NaN gauge: no reading
        name = labels.pop("__name__", "")
        series.append(Series(name=name, labels=labels, value=value, timestamp_seconds=timestamp_seconds))
    return series

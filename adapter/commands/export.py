"""`wattscale export`: the series the estimators need, from Prometheus, as a samples CSV.

    wattscale export --prometheus-url URL --start T --end T [--step 15s] [--namespace NS]
                     [--selector 'cluster="a"'] [--sources dcgm,vllm] [--output F.csv]

Each source (a collector type reading through Prometheus: `dcgm`, `vllm`, `kepler`, ...) names the
raw series it reads; each is fetched with prometheus-api-client range queries, together with
`timestamp()` of the same series, so every row keeps the instant Prometheus scraped it, not the
query's step. The rows are then translated step by step by the same collector code the server runs
(units, resets, one row per GPU, `gpu_assignment_info`), so `wattscale estimate` and the notebooks see
what the server would have seen. A step sees the newest scrape before it, so a scrape that comes less
than a step after the one before it (a late scrape on a busy Prometheus) falls between two steps: every
raw sample of the span is therefore also read (`series[span]` at the end), and one that no step saw is
translated at its own instant. The step only sets how often the series are read together. Output:
`timestamp,metric,value,<labels>` (adapter.samples_csv).
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from adapter.samples_csv import STDIO, timestamp_seconds, write_table
from collectors.durations import duration_seconds
from collectors.prometheus_api import SAMPLE_TIME_OF, sample_times

if TYPE_CHECKING:
    import pandas as pd

    from collectors.base import Collector, Sample
    from collectors.support import Series

HELP = "Export the series the estimators need from Prometheus into a samples CSV (for `estimate`)."

DEFAULT_SOURCES = "dcgm,vllm"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prometheus-url", required=True, help="Prometheus base URL, e.g. http://prometheus:9090"
    )
    parser.add_argument("--start", type=timestamp_seconds, required=True, help="epoch seconds or RFC 3339")
    parser.add_argument("--end", type=timestamp_seconds, required=True, help="epoch seconds or RFC 3339")
    parser.add_argument(
        "--step",
        type=duration_seconds,
        default=15.0,
        help="how often the series are read together, as the server polls them (default 15s); every raw sample is exported whatever the step",
    )
    parser.add_argument(
        "--namespace", default=None, help="only pods of this namespace and the GPUs they hold"
    )
    parser.add_argument(
        "--selector", default="", help="extra PromQL label matchers for every series, e.g. 'cluster=\"a\"'"
    )
    parser.add_argument(
        "--sources", default=DEFAULT_SOURCES, help=f"collector types to export (default {DEFAULT_SOURCES})"
    )
    parser.add_argument("--output", default=STDIO, help="CSV file (default: standard output)")


def _matchers(name: str, selector: str) -> str:
    extra = selector.strip().strip("{}").strip()
    return f'{{__name__="{name}"{"," + extra if extra else ""}}}'


def _range_rows(
    client: object, names: Iterable[str], selector: str, start: datetime, end: datetime, step: str
) -> pd.DataFrame:
    """Raw samples of each series: columns step_seconds, name, labels (a tuple of pairs), value,
    timestamp_seconds (when Prometheus scraped it)."""
    import pandas as pd
    from prometheus_api_client import MetricRangeDataFrame, PrometheusConnect

    assert isinstance(client, PrometheusConnect)
    frames = []
    for name in sorted(names):
        query = _matchers(name, selector)
        # Values and their scrape times in one query, as `PrometheusClient.latest_samples` asks them:
        # a scrape committed between two queries would pair one scrape's value with another's time.
        answer = client.custom_query_range(
            f"{query} or {sample_times(query, name)}", start_time=start, end_time=end, step=step
        )
        if not answer:
            continue
        with warnings.catch_warnings():
            # prometheus-api-client 0.7 still calls set_index(inplace=True), which pandas 3.1 deprecates.
            warnings.filterwarnings("ignore", message="The inplace keyword")
            both = MetricRangeDataFrame(answer).drop(columns="__name__", errors="ignore").reset_index()
        if SAMPLE_TIME_OF not in both.columns:
            continue
        is_stamp = both[SAMPLE_TIME_OF].notna()
        valued = both.loc[~is_stamp].drop(columns=SAMPLE_TIME_OF)
        stamped = (
            both.loc[is_stamp].drop(columns=SAMPLE_TIME_OF).rename(columns={"value": "timestamp_seconds"})
        )
        labels = [c for c in valued.columns if c not in ("timestamp", "value")]
        joined = valued.merge(stamped, on=["timestamp", *labels], how="inner")
        pairs = joined[labels].astype(object).where(joined[labels].notna(), None)
        stepped = pd.DataFrame(
            {
                "step_seconds": joined["timestamp"].astype("int64").to_numpy() / 1e9
                if pd.api.types.is_datetime64_any_dtype(joined["timestamp"])
                else joined["timestamp"].astype(float).to_numpy(),
                "name": name,
                "labels": [
                    tuple(sorted((k, str(v)) for k, v in zip(labels, row, strict=True) if v is not None))
                    for row in pairs.itertuples(index=False)
                ],
                "value": joined["value"].astype(float).to_numpy(),
                "timestamp_seconds": joined["timestamp_seconds"].astype(float).to_numpy(),
            }
        )
        frames += [stepped, _unseen_raw_rows(client, name, query, start, end, stepped)]
    if not frames:
        return pd.DataFrame(columns=["step_seconds", "name", "labels", "value", "timestamp_seconds"])
    return pd.concat(frames, ignore_index=True)


def _unseen_raw_rows(
    client: object, name: str, query: str, start: datetime, end: datetime, stepped: pd.DataFrame
) -> pd.DataFrame:
    """The raw samples of `query` in [start, end] that no step of `stepped` saw, each as a step of its
    own at the instant it was scraped (the same columns as `_range_rows`)."""
    import pandas as pd
    from prometheus_api_client import PrometheusConnect

    assert isinstance(client, PrometheusConnect)
    span_ms = max(1, math.ceil((end - start).total_seconds() * 1000))
    result = client.custom_query(f"{query}[{span_ms}ms]", params={"time": f"{end.timestamp():.3f}"})
    raw = [
        (
            tuple(sorted((k, str(v)) for k, v in series["metric"].items() if k != "__name__")),
            float(t),
            float(v),
        )
        for series in result
        for t, v in series.get("values", [])
    ]
    seen = set(zip(stepped["labels"], stepped["timestamp_seconds"], strict=True))
    unseen = [(labels, t, v) for labels, t, v in raw if (labels, t) not in seen]
    return pd.DataFrame(
        {
            "step_seconds": [t for _, t, _ in unseen],
            "name": name,
            "labels": [labels for labels, _, _ in unseen],
            "value": [v for _, _, v in unseen],
            "timestamp_seconds": [t for _, t, _ in unseen],
        },
        columns=["step_seconds", "name", "labels", "value", "timestamp_seconds"],
    )


def _translated(collector: Collector, rows: pd.DataFrame) -> list[Sample]:
    """The collector's own translation, fed the rows one query step at a time, in time order."""
    from collectors.support import Series

    translate = getattr(collector, "translate")  # noqa: B009 - every Prometheus-reading collector has one
    samples: list[Sample] = []
    for step, at_step in rows.sort_values("step_seconds", kind="stable").groupby("step_seconds", sort=True):
        series: list[Series] = [
            Series(name=str(name), labels=dict(labels), value=float(value), timestamp_seconds=float(at))
            for name, labels, value, at in zip(
                at_step["name"],
                at_step["labels"],
                at_step["value"],
                at_step["timestamp_seconds"],
                strict=True,
            )
        ]
        samples.extend(translate(series, float(str(step))))
    return samples


def samples_table(samples: Sequence[Sample], namespace: str | None) -> pd.DataFrame:
    """One row per distinct sample (a scrape seen at several steps counts once), optionally only a
    namespace's pods and the GPUs and nodes they use."""
    import pandas as pd

    from adapter.pipeline import sample_rows, samples_frame

    frame = samples_frame(sample_rows(samples))
    labels = [c for c in frame.columns if c not in ("metric", "value", "timestamp_seconds")]
    frame = frame.drop_duplicates(["metric", "timestamp_seconds", *labels], ignore_index=True)
    if namespace is not None and "namespace" in frame.columns:
        own = frame["namespace"] == namespace
        held = frame.loc[own & (frame["metric"] == "gpu_assignment_info")]
        gpus = set(zip(held.get("node", []), held.get("gpu_uuid", []), strict=True))
        nodes = set(frame.loc[own, "node"].dropna()) if "node" in frame.columns else set()
        unowned = frame["namespace"].isna()
        gpu_keys = pd.Series(
            list(
                zip(
                    frame.get("node", [None] * len(frame)),
                    frame.get("gpu_uuid", [None] * len(frame)),
                    strict=True,
                )
            ),
            index=frame.index,
        )
        on_gpu = gpu_keys.isin(gpus)
        on_node = frame["node"].isin(nodes) & frame.get("gpu_uuid", pd.Series(None, index=frame.index)).isna()
        frame = frame.loc[own | (unowned & (on_gpu | on_node))]
    frame = frame.sort_values(["timestamp_seconds", "metric"], kind="stable", ignore_index=True)
    return frame.rename(columns={"timestamp_seconds": "timestamp"})[["timestamp", "metric", "value", *labels]]


def export(
    prometheus_url: str,
    *,
    start_seconds: float,
    end_seconds: float,
    step_seconds: float,
    sources: Sequence[str],
    selector: str = "",
    namespace: str | None = None,
) -> pd.DataFrame:
    from prometheus_api_client import PrometheusConnect

    from adapter.plugins import load_collectors

    collectors = load_collectors([(source, source, {"prometheus_url": prometheus_url}) for source in sources])
    client = PrometheusConnect(url=prometheus_url, disable_ssl=False)
    start = datetime.fromtimestamp(start_seconds, tz=UTC)
    # One step past the end: a scrape in the last step before `end` is only seen at the step after it.
    end = datetime.fromtimestamp(end_seconds + step_seconds, tz=UTC)
    samples: list[Sample] = []
    for collector in collectors:
        names = getattr(collector, "query_names", None)
        if names is None or not hasattr(collector, "translate"):
            raise ValueError(f"source {collector.name!r} does not read through Prometheus")
        # Float seconds: Prometheus takes them for a step, not a fractional duration such as 0.5s.
        rows = _range_rows(client, names(), selector, start, end, f"{step_seconds:g}")
        samples.extend(_translated(collector, rows))
    in_range = [s for s in samples if start_seconds <= s.timestamp_seconds <= end_seconds]
    return samples_table(in_range, namespace)


def run(args: argparse.Namespace) -> int:
    from prometheus_api_client.exceptions import PrometheusApiClientException

    from adapter.errors import ConfigError

    if not args.end > args.start:
        print("wattscale export: --end must be after --start", file=sys.stderr)
        return 2
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    try:
        table = export(
            args.prometheus_url,
            start_seconds=args.start,
            end_seconds=args.end,
            step_seconds=args.step,
            sources=sources,
            selector=args.selector,
            namespace=args.namespace,
        )
    except (
        ConfigError,
        ValueError,
        PrometheusApiClientException,
        OSError,
    ) as exc:  # requests errors are OSErrors
        print(f"wattscale export: {exc}", file=sys.stderr)
        return 2
    if table.empty:
        print("wattscale export: no samples in that range (check --start/--end, --selector)", file=sys.stderr)
        return 1
    write_table(table, args.output, exact_columns=["timestamp", "value"])
    return 0

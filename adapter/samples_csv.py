"""The samples CSV that `wattscale export` writes and `wattscale estimate` and the notebooks read.

    timestamp,metric,value[,label,...]

`timestamp` is Unix epoch seconds (any precision, e.g. `1790000003.200`) or RFC 3339
(`2026-09-21T12:00:03.2Z`; a time without an offset is UTC). Every other column is a label (`pod`,
`namespace`, `gpu_uuid`, ...): each distinct combination of a metric's labels is one series. Times
are written back as epoch seconds at full precision (the shortest decimal that reads back as the same
float), so output rows join back to the input exactly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import pandas as pd

STDIO = "-"
VALUE_FORMAT = "%.6g"


def seconds_from_timestamps(column: pd.Series) -> pd.Series:
    """Epoch seconds (float64) from epoch numbers or RFC 3339 strings; ValueError naming a bad one."""
    import numpy as np
    import pandas as pd

    numeric = pd.to_numeric(column, errors="coerce")
    if numeric.notna().all():
        return numeric.astype(np.float64)
    texts = column.astype(str).where(numeric.isna())
    try:
        instants = pd.to_datetime(texts, utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"timestamp must be epoch seconds or RFC 3339: {exc}") from None
    parsed = (instants - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return numeric.where(numeric.notna(), parsed).astype(np.float64)


def timestamp_seconds(text: str) -> float:
    """argparse type: one instant, as epoch seconds or RFC 3339."""
    import pandas as pd

    try:
        return float(seconds_from_timestamps(pd.Series([text])).iloc[0])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (use epoch seconds like 1790000003.2 or RFC 3339 like 2026-09-21T12:00:03Z)"
        ) from None


def read_samples(source: str | Path, stdin: TextIO | None = None) -> pd.DataFrame:
    """Samples from a CSV file, or standard input for `-`: columns timestamp_seconds, metric, value, labels."""
    import pandas as pd

    name = "standard input" if str(source) == STDIO else str(source)
    handle = (stdin or sys.stdin) if str(source) == STDIO else source
    frame = pd.read_csv(handle, dtype={"metric": str})
    missing = {"timestamp", "metric", "value"} - set(frame.columns)
    if missing:
        raise ValueError(
            f"{name}: missing column(s) {', '.join(sorted(missing))}; want timestamp,metric,value[,labels]"
        )
    if frame.empty:
        raise ValueError(f"{name}: no samples")
    frame = frame.rename(columns={"timestamp": "timestamp_seconds"})
    try:
        frame["timestamp_seconds"] = seconds_from_timestamps(frame["timestamp_seconds"])
        frame["value"] = pd.to_numeric(frame["value"], errors="raise")
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    labels = [c for c in frame.columns if c not in ("timestamp_seconds", "metric", "value")]
    frame[labels] = frame[labels].astype(object).where(frame[labels].notna(), None)
    return frame


def write_table(table: pd.DataFrame, destination: str | Path | None, *, exact_columns: list[str]) -> None:
    """CSV to a file or standard output: `exact_columns` (times, counter values) at full precision,
    other numbers to six significant digits."""
    import numpy as np
    import pandas as pd

    shown = table.copy()
    for column in shown.columns:
        if column in exact_columns or not pd.api.types.is_float_dtype(shown[column].dtype):
            continue
        shown[column] = [("" if not np.isfinite(x) else VALUE_FORMAT % x) for x in shown[column]]
    # No float_format: pandas then writes each time as the shortest text that reads back the same.
    if destination is None or str(destination) == STDIO:
        shown.to_csv(sys.stdout, index=False)
    else:
        shown.to_csv(destination, index=False)

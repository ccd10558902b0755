"""Durations on the command line: `30s`, `5m`, `2h`, `1h30m`, `500ms`, or plain seconds (`90`, `1.5`).

The one parser every command uses, so `--window 5m` and `--duration 2h` mean the same everywhere.
argparse turns the `ArgumentTypeError` into a usage error naming the option.
"""

from __future__ import annotations

import argparse
import math
import re

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_PLAIN = re.compile(r"\d+(?:\.\d+)?")


def parse_duration(text: str) -> float:
    """Seconds in `text`; ValueError if it is not a duration (see the module docstring)."""
    compact = text.strip().replace(" ", "")
    if _PLAIN.fullmatch(compact):
        return float(compact)
    parts = list(_PART.finditer(compact))
    if not parts or "".join(p.group(0) for p in parts) != compact:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 2h, 1h30m, 500ms)")
    return sum(float(p.group(1)) * _UNIT_SECONDS[p.group(2)] for p in parts)


def duration_seconds(text: str) -> float:
    """argparse type: a duration > 0, in seconds."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not seconds > 0 or math.isinf(seconds):
        raise argparse.ArgumentTypeError(f"duration must be > 0: {text!r}")
    return seconds


def non_negative_duration_seconds(text: str) -> float:
    """argparse type: a duration >= 0 (a delay that may be none), in seconds."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if math.isinf(seconds):
        raise argparse.ArgumentTypeError(f"duration must be finite: {text!r}")
    return seconds

"""Canonical Kubernetes quantity strings, as apimachinery's `Quantity.String()` prints them.

The HPA reads values with `MilliValue()`, so we keep milli precision: anything that rounds to
less than 1m is sent as "0". `kubernetes.utils.parse_quantity` parses these back exactly.
"""

from __future__ import annotations

import math

_SUFFIXES = ("", "k", "M", "G", "T", "P", "E")


def format_quantity(value: float) -> str:
    """`1.5` -> "1500m", `2.0` -> "2", `1500.0` -> "1500", `20000.0` -> "20k". NaN and inf are refused."""
    if not math.isfinite(value):
        raise ValueError(f"a quantity must be finite, got {value!r}")
    milli = round(value * 1000)
    if milli == 0:
        return "0"
    if milli % 1000:
        return f"{milli}m"
    units = milli // 1000
    exponent = 0
    while units % 1000 == 0 and exponent < len(_SUFFIXES) - 1:
        units //= 1000
        exponent += 1
    return f"{units}{_SUFFIXES[exponent]}"

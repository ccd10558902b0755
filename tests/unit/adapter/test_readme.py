"""The README's metric table is the catalogue the API serves: same names, units and resources."""

from __future__ import annotations

import re
from pathlib import Path

from adapter.catalogue import CATALOGUE

README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_table_lists_every_served_metric_with_its_unit_and_resources() -> None:
    rows = {}
    for line in README.read_text().splitlines():
        match = re.match(r"^\| `(\w+)` \| ([^|]+) \| ([^|]+) \|", line)
        if match:
            rows[match.group(1)] = (match.group(2).strip(), set(re.findall(r"`([^`]+)`", match.group(3))))
    assert rows == {spec.name: (spec.unit, set(spec.resources)) for spec in CATALOGUE}

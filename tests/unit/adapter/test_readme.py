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


def test_readme_configuration_example_is_accepted_by_serve() -> None:
    import yaml

    from adapter.plugins import load_collectors
    from adapter.settings import Settings

    block = re.search(r"`wattscale serve --config FILE`:\n\n```yaml\n(.*?)```", README.read_text(), re.S)
    assert block is not None
    settings = Settings.from_mapping(yaml.safe_load(block.group(1)))
    collectors = load_collectors((c.name, c.type, c.raw) for c in settings.collectors)
    assert [c.name for c in collectors] == ["kepler", "vllm", "gpus", "pdu-r12"]
    assert [r.name for r in settings.racks] == ["r12"]

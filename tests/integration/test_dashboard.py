"""Every query of the Grafana dashboard runs against the real Prometheus scraping `wattscale demo` (the
stack of test_alerting) and returns data, with Grafana's variables substituted as "All" would."""

from __future__ import annotations

import json
import re

import pytest
from monitoring_stack import ROOT, Stack

pytestmark = [pytest.mark.prometheus, pytest.mark.alertmanager]

DASHBOARD = ROOT / "apiservice" / "monitoring" / "wattscale-dashboard.json"
VARIABLES = {"rack": ".*", "namespace": ".*", "__rate_interval": "1m"}
OPERATOR_SERIES = "wattscale_capper_"
"""The demo runs no power operator: panels on its series can only be checked as valid PromQL here."""


def _queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], re.sub(r"\$(\w+)", lambda m: VARIABLES[m.group(1)], target["expr"]))
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


@pytest.mark.parametrize(("title", "promql"), [q for q in _queries() if OPERATOR_SERIES not in q[1]])
def test_panel_query_returns_data(monitoring: Stack, title: str, promql: str) -> None:
    monitoring.wait_until(
        lambda: bool(monitoring.query(promql)), timeout_seconds=60, what=f"{title}: {promql}"
    )


@pytest.mark.parametrize(("title", "promql"), [q for q in _queries() if OPERATOR_SERIES in q[1]])
def test_operator_panel_query_is_valid_promql(monitoring: Stack, title: str, promql: str) -> None:
    monitoring.query(promql)  # asserts Prometheus answered status "success"

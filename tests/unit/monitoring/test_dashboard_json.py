"""The Grafana dashboard follows Grafana's conventions, and every series name it or the alert rules use
is one that wattscale, its operator or kube-apiserver exposes (a typo would be an empty panel or an
alert that can never fire)."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from adapter.exposition import FAMILIES
from adapter.selfmetrics import PipelineMetrics, SelfMetrics

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "apiservice" / "monitoring" / "wattscale-dashboard.json"
RULES = ROOT / "apiservice" / "monitoring" / "wattscale.rules.yaml"
GRID_COLUMNS = 24

EXTERNAL_SERIES = {"aggregator_unavailable_apiservice", "ALERTS"}
"""kube-apiserver's aggregator gauge, and Prometheus' own alert series."""
PROPOSED_OPERATOR_SERIES = {
    "wattscale_capper_gpus",
    "wattscale_capper_gpus_at_min_limit",
    "wattscale_capper_gpu_power_limit_sum_watts",
    "wattscale_capper_gpu_power_limit_allowed_watts",
}
"""Operator gauges asked of the operator's owner (not exported yet): two alerts and one panel use them."""
POWER_SERIES_EXTRA = {
    "wattscale_rack_power_latest_age_seconds",
    "wattscale_rack_power_estimated",
    "wattscale_exposition_pods_omitted",
}
PROMQL_WORDS = {
    "sum", "by", "on", "and", "or", "unless", "max", "min", "avg", "time", "vector", "rate", "increase",
    "avg_over_time", "offset", "label_values", "ignoring", "count",
}  # fmt: skip


def _dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def _panels() -> list[dict[str, Any]]:
    return [panel for panel in _dashboard()["panels"] if panel["type"] != "row"]


def _operator_metrics() -> CollectorRegistry:
    # The operator moves from adapter.capper to its own package poweroperator (branch op); its metric
    # names stay. Read them from wherever this checkout has them.
    try:
        loop = importlib.import_module("poweroperator.loop")
    except ModuleNotFoundError:
        loop = importlib.import_module("adapter.capper.loop")
    registry = CollectorRegistry()
    loop.CapperMetrics(registry)
    return registry


def _exposed_names() -> set[str]:
    names = {family.name for family in FAMILIES} | POWER_SERIES_EXTRA | EXTERNAL_SERIES
    # The worker process records the pipeline's metrics; the server relays them on /metrics.
    for registry in (SelfMetrics().registry, PipelineMetrics().registry, _operator_metrics()):
        for metric in registry.collect():
            suffixes = ("_total",) if metric.type == "counter" else ("", "_bucket", "_sum", "_count")
            names |= {metric.name + suffix for suffix in suffixes}
    return names | PROPOSED_OPERATOR_SERIES


def _series_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"|\{[^}]*\}|\[[^]]*\]', " ", expr)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", without_strings))
    return {word for word in words - PROMQL_WORDS if "_" in word or word.isupper()} - {
        "budget", "action", "mode", "rack", "namespace", "workload", "name",
    }  # fmt: skip


def test_datasource_is_a_variable_used_by_every_panel_and_query() -> None:
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in _panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_panel_ids_are_unique_and_panels_fit_the_grid_without_overlapping() -> None:
    panels = _dashboard()["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_every_panel_sets_a_unit_and_has_a_query() -> None:
    for panel in _panels():
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        assert panel["targets"] and all(target["expr"] for target in panel["targets"]), panel["title"]
    refs = [[t["refId"] for t in panel["targets"]] for panel in _panels()]
    assert all(len(r) == len(set(r)) for r in refs)


def test_variables_used_in_queries_are_defined() -> None:
    defined = {v["name"] for v in _dashboard()["templating"]["list"]} | {"__rate_interval"}
    for panel in _panels():
        for target in panel["targets"]:
            assert set(re.findall(r"\$(\w+)", target["expr"])) <= defined, target["expr"]


def test_dashboard_and_rules_only_use_series_that_exist() -> None:
    exposed = _exposed_names()
    expressions = [target["expr"] for panel in _panels() for target in panel["targets"]]
    groups = yaml.safe_load(RULES.read_text())["groups"]
    expressions += [rule["expr"] for group in groups for rule in group["rules"]]
    for expr in expressions:
        assert _series_names(expr) <= exposed, (expr, _series_names(expr) - exposed)

"""The shipped alert rules: valid for promtool, each tested firing and silent, documented, and the
PrometheusRule generated from the one rules file."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapter.monitoring import PROMETHEUS_RULE_FILE, RULES_FILE, render

ROOT = Path(__file__).resolve().parents[3]
MONITORING = ROOT / "apiservice" / "monitoring"
RULE_TESTS = Path(__file__).with_name("rules_test.yaml")
RUNBOOKS = ROOT / "docs" / "runbooks.md"


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load((MONITORING / RULES_FILE).read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _promtool() -> str:
    binary = shutil.which("promtool")
    assert binary, "promtool is not installed: run .ci/setup.d/10-prometheus.sh"
    return binary


@pytest.mark.prometheus
def test_promtool_checks_both_forms(tmp_path: Path) -> None:
    spec = yaml.safe_load((MONITORING / PROMETHEUS_RULE_FILE).read_text())["spec"]
    extracted = tmp_path / "from-prometheusrule.yaml"
    extracted.write_text(yaml.safe_dump(spec))
    result = subprocess.run(
        [_promtool(), "check", "rules", str(MONITORING / RULES_FILE), str(extracted)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(f"SUCCESS: {len(_alerts())} rules found") == 2


@pytest.mark.prometheus
def test_promtool_rule_tests_pass() -> None:
    result = subprocess.run(
        [_promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
    names = {rule["alert"] for rule in _alerts()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested silent"


def test_every_alert_is_documented_with_a_severity_and_a_runbook_section() -> None:
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", RUNBOOKS.read_text(), flags=re.MULTILINE)
    }
    for rule in _alerts():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), rule["alert"]
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in anchors, f"docs/runbooks.md has no section for {rule['alert']}"


def test_prometheusrule_is_generated_from_the_rules_file() -> None:
    assert (MONITORING / PROMETHEUS_RULE_FILE).read_text() == render((MONITORING / RULES_FILE).read_text())

"""Settings are validated one way (`collectors.config_fields`) by the metrics server's file, every
collector's settings and the PowerBudget parser: every problem at once, each with its key, in the same
words for the same rule."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapter.errors import ConfigError
from adapter.settings import Settings
from collectors.base import CollectorConfigError
from collectors.config_fields import declared_fields, read_fields, setting
from collectors.simulated import SimulatedCollector
from poweroperator.budget import BudgetError, ScalingFields, parse_budget


@dataclass(frozen=True, slots=True, kw_only=True)
class _Pump:
    name: str
    flow_litres_per_second: float = setting(1.0, above=0)
    spare_ratio: float = setting(0.1, minimum=0, below=1)
    pumps: int = setting(2, minimum=1, key="pumpCount")
    low_watts: float = 10.0
    high_watts: float = 20.0

    def problems(self) -> list[str]:
        return [] if self.low_watts <= self.high_watts else ["low_watts: must be <= high_watts"]


def test_every_problem_is_reported_with_its_key_and_path() -> None:
    problems: list[str] = []
    raw = {"name": 3, "flow_litres_per_second": 0, "spare_ratio": 1, "pumpCount": 1.5, "colour": "red"}

    read_fields(_Pump, {**raw, "low_watts": 30.0}, problems, path="pumps[0].")

    assert problems == [
        "pumps[0].colour: unknown setting (known: flow_litres_per_second, high_watts, low_watts, name, "
        "pumpCount, spare_ratio)",
        "pumps[0].name: want a string, got 3",
        "pumps[0].flow_litres_per_second: want a positive number, got 0",
        "pumps[0].spare_ratio: want a number in [0, 1), got 1",
        "pumps[0].pumpCount: want an integer, got 1.5",
        "pumps[0].low_watts: must be <= high_watts",
    ]


def test_a_missing_required_key_is_named_and_builds_nothing() -> None:
    problems: list[str] = []

    assert read_fields(_Pump, {"spare_ratio": -1}, problems) is None
    assert problems == ["name: required", "spare_ratio: want a number in [0, 1), got -1"]


def test_valid_settings_are_read_with_their_defaults() -> None:
    problems: list[str] = []

    pump = read_fields(_Pump, {"name": "p", "pumpCount": 3}, problems)

    assert problems == []
    assert pump == _Pump(name="p", pumps=3)


def _managed_budget(scaling: dict[str, object], replica_target: float = 1) -> dict[str, Any]:
    demand = {
        "name": "queue",
        "type": "prometheus",
        "metadata": {"query": "q"},
        "replicaTarget": replica_target,
    }
    managed = {"mode": "managed", "minReplicas": 1, "maxReplicas": 4, "demand": [demand], **scaling}
    workload = {"kind": "Deployment", "namespace": "llm", "name": "llama", "scaling": managed}
    spec = {"nodeSelector": {"matchLabels": {"r": "a"}}, "capWatts": 1000, "workloads": [workload]}
    return {"metadata": {"name": "r"}, "spec": spec}


def _problems(error: type[Exception], build: Any) -> list[str]:
    with pytest.raises(error) as caught:
        build()
    return list(caught.value.problems)  # type: ignore[attr-defined]


def test_the_server_a_collector_and_the_operator_word_the_same_rule_alike() -> None:
    server = _problems(ConfigError, lambda: Settings.from_mapping({"window_seconds": 0}))
    collector = _problems(
        CollectorConfigError, lambda: SimulatedCollector.from_settings("sim", {"interval_seconds": 0})
    )
    operator = _problems(BudgetError, lambda: parse_budget(_managed_budget({}, replica_target=0)))

    assert server == ["window_seconds: want a positive number, got 0"]
    assert collector == ["interval_seconds: want a positive number, got 0"]
    assert operator == ["spec.workloads[0].scaling.demand[0].replicaTarget: want a positive number, got 0"]


def test_a_collectors_malformed_value_does_not_hide_the_other_problems() -> None:
    problems = _problems(
        CollectorConfigError,
        lambda: SimulatedCollector.from_settings(
            "sim", {"interval_seconds": "fast", "noise_ratio": 0.9, "colour": "red"}
        ),
    )

    assert [p.split(":")[0] for p in problems] == ["colour", "interval_seconds", "noise_ratio"]


def test_a_rack_with_several_problems_lists_them_all() -> None:
    problems = _problems(
        ConfigError,
        lambda: Settings.from_mapping(
            {"racks": [{"name": "r", "margin_ratio": 3, "node_selector": "a in ()"}]}
        ),
    )

    assert [p.split(":")[0] for p in problems] == [
        "racks[0].cap_watts",
        "racks[0].margin_ratio",
        "racks[0].node_selector",
    ]


def _crd_scaling() -> dict[str, Any]:
    path = Path(__file__).resolve().parents[2] / "apiservice" / "powerbudget-crd.yaml"
    spec = yaml.safe_load(path.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    workload = spec["spec"]["properties"]["workloads"]["items"]
    return dict(workload["properties"]["scaling"]["properties"])


def _scaling_bounds() -> list[tuple[str, int]]:
    """(key, a value just outside a bound) for each integer of the CRD's scaling schema."""
    outside = []
    for key, schema in _crd_scaling().items():
        if schema.get("type") == "integer":
            outside += [(key, schema["minimum"] - 1)] if "minimum" in schema else []
            outside += [(key, schema["maximum"] + 1)] if "maximum" in schema else []
    return outside


@pytest.mark.parametrize(("key", "value"), _scaling_bounds())
def test_the_budget_parser_rejects_what_the_crd_rejects(key: str, value: int) -> None:
    # Budgets that never went through the API server (the simulator, tests, a future file source) are
    # held to the same bounds; the CRD is generated from the declarations the parser reads.
    raw = _managed_budget({key: value})

    problems = _problems(BudgetError, lambda: parse_budget(raw))

    assert any(p.startswith(f"spec.workloads[0].scaling.{key}: want an integer") for p in problems), problems


def test_every_scaling_field_the_crd_accepts_is_one_the_parser_knows() -> None:
    # The parser reports unknown keys; a CRD field it did not declare would reject valid objects.
    assert set(_crd_scaling()) == set(declared_fields(ScalingFields)) | {"mode", "demand"}


def _crd_spec_numbers() -> list[tuple[str, str, float]]:
    """(where, key, a value just outside the CRD's bound) for the spec's and a workload's numbers."""
    path = Path(__file__).resolve().parents[2] / "apiservice" / "powerbudget-crd.yaml"
    spec = yaml.safe_load(path.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    spec_properties = spec["spec"]["properties"]
    workload_properties = spec_properties["workloads"]["items"]["properties"]
    return [
        ("spec", "capWatts", spec_properties["capWatts"]["minimum"] - 0.5),
        ("spec", "marginRatio", spec_properties["marginRatio"]["maximum"] + 0.1),
        ("workload", "replicaPeakPowerWatts", workload_properties["replicaPeakPowerWatts"]["minimum"] - 0.5),
    ]


@pytest.mark.parametrize(("where", "key", "value"), _crd_spec_numbers())
def test_the_budget_parser_rejects_the_numbers_the_crd_rejects(where: str, key: str, value: float) -> None:
    raw = _managed_budget({})
    target = raw["spec"] if where == "spec" else raw["spec"]["workloads"][0]
    target[key] = value

    problems = _problems(BudgetError, lambda: parse_budget(raw))

    assert any(key in p and "want a number" in p for p in problems), problems

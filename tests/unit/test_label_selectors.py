"""Label selectors are converted in one place (`collectors.label_selectors`), and both programs give the same
answer for the same selector: the metrics server's request parser, the operator's PowerBudget parser and
its Deployment pod lookup, the adapter's configuration file and the collectors' pod discovery."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from adapter.errors import BadQueryError
from adapter.selectors import parse_selector as parse_request_selector
from adapter.settings import Settings
from collectors.base import PodEndpoint
from collectors.discovery import pod_scrape_targets
from collectors.label_selectors import SelectorError, parse_selector, selector_from_object
from poweroperator.budget import BudgetError, Workload, parse_budget
from poweroperator.cluster import KubeCluster

NODE_SELECTOR: dict[str, Any] = {
    "matchLabels": {"zone": "a"},
    "matchExpressions": [
        {"key": "rack", "operator": "In", "values": ["r2", "r1"]},
        {"key": "tier", "operator": "NotIn", "values": ["batch"]},
        {"key": "gpu", "operator": "Exists"},
        {"key": "drain", "operator": "DoesNotExist"},
    ],
}
LABELS = (
    {"zone": "a", "rack": "r1", "gpu": "h100"},
    {"zone": "a", "rack": "r3", "gpu": "h100"},
    {"zone": "a", "rack": "r2", "gpu": "h100", "tier": "batch"},
    {"zone": "a", "rack": "r2", "gpu": "h100", "drain": "yes"},
    {"zone": "b", "rack": "r1", "gpu": "h100"},
    {"zone": "a", "rack": "r1"},
)


def budget(node_selector: object) -> dict[str, Any]:
    return {"metadata": {"name": "rack-a"}, "spec": {"nodeSelector": node_selector, "capWatts": 12000}}


def test_the_operators_node_selector_is_the_string_the_metrics_server_parses_back() -> None:
    parsed = parse_budget(budget(NODE_SELECTOR)).node_selector

    assert str(parsed) == "zone=a,rack in (r1,r2),tier notin (batch),gpu,!drain"
    assert parse_request_selector(str(parsed)) == parsed
    assert (
        parse_request_selector(str(parsed)).as_label_selector()
        == selector_from_object(NODE_SELECTOR).as_label_selector()
    )
    assert [parsed.matches(labels) for labels in LABELS] == [True, False, False, False, False, False]


def test_the_server_and_the_operator_read_a_power_budget_as_the_same_rack() -> None:
    from adapter.commands.serve import power_budget_racks
    from adapter.objects import KubeObject

    spec = budget(NODE_SELECTOR)["spec"]
    [rack] = power_budget_racks([KubeObject("powerbudgets", "", "rack-a", {}, spec=spec)])

    assert rack.node_selector == parse_budget(budget(NODE_SELECTOR)).node_selector


def test_a_bad_selector_is_a_400_in_a_request_and_a_keyed_problem_in_configuration() -> None:
    bad = "rack in ()"
    with pytest.raises(SelectorError) as shared:
        parse_selector(bad)
    with pytest.raises(BadQueryError) as request:
        parse_request_selector(bad)
    with pytest.raises(Exception) as config:
        Settings.from_mapping({"racks": [{"name": "a", "cap_watts": 1000, "node_selector": bad}]})

    assert str(request.value) == str(shared.value)
    assert f"racks[0].node_selector: {shared.value}" in str(config.value)


@pytest.mark.parametrize(
    ("node_selector", "expected"),
    [
        ({}, "nodeSelector: empty"),
        ({"matchExpressions": [{"key": "rack", "operator": "Near"}]}, "unknown operator 'Near'"),
        ({"matchExpressions": [{"key": "rack", "operator": "In"}]}, "values: must be non-empty for In"),
        ({"matchLabels": {"bad key!": "x"}}, "invalid label key 'bad key!'"),
    ],
)
def test_a_bad_node_selector_is_named_in_the_budgets_problems(node_selector: object, expected: str) -> None:
    with pytest.raises(BudgetError) as error:
        parse_budget(budget(node_selector))

    assert any(p.startswith("nodeSelector") and expected in p for p in error.value.problems), (
        error.value.problems
    )


def test_discovery_matches_pods_as_a_match_labels_selector_does() -> None:
    pods = [
        PodEndpoint(namespace="llm", name=f"p{i}", ip=f"10.0.0.{i}", labels=labels, ports={"metrics": 8000})
        for i, labels in enumerate(LABELS)
    ]
    wanted = {"zone": "a", "gpu": "h100"}

    found = {t.labels["pod"] for t in pod_scrape_targets(pods, match_labels=wanted, port_name="metrics")}

    selector = selector_from_object({"matchLabels": wanted})
    assert found == {pod.name for pod in pods if selector.matches(pod.labels)} == {"p0", "p1", "p2", "p3"}


class FakeApps:
    def __init__(self, selector: client.V1LabelSelector) -> None:
        self.selector = selector

    async def read_namespaced_deployment(self, name: str, namespace: str) -> client.V1Deployment:
        return client.V1Deployment(
            metadata=client.V1ObjectMeta(name=name, namespace=namespace),
            spec=client.V1DeploymentSpec(selector=self.selector, template=client.V1PodTemplateSpec()),
        )


class FakeCore:
    def __init__(self) -> None:
        self.asked: list[str] = []

    async def list_namespaced_pod(self, namespace: str, *, label_selector: str) -> client.V1PodList:
        self.asked.append(label_selector)
        return client.V1PodList(items=[client.V1Pod(metadata=client.V1ObjectMeta(name="llama-0"))])


async def test_the_operator_lists_a_deployments_pods_with_its_own_selector() -> None:
    # The Kubernetes client's to_dict() spells the fields match_labels/match_expressions.
    selector = client.V1LabelSelector(
        match_labels={"app": "llama"},
        match_expressions=[client.V1LabelSelectorRequirement(key="tier", operator="NotIn", values=["batch"])],
    )
    core = FakeCore()
    async with client.ApiClient() as api:
        cluster = KubeCluster(api, agent_url_template="http://{node_ip}:9400")
        cluster._apps, cluster._core = FakeApps(selector), core  # type: ignore[assignment]
        workload = Workload(kind="Deployment", namespace="llm", name="llama", priority=1)

        pods = await cluster.workload_pods(workload)

    assert pods == {("llm", "llama-0")}
    assert core.asked == ["app=llama,tier notin (batch)"]


def test_no_other_module_converts_label_selectors() -> None:
    # A second converter has to spell the object form's field names or the string form's operators.
    spellings = {"matchExpressions", "match_expressions", "notin", "NotIn", "DoesNotExist"}
    allowed = {"collectors/label_selectors.py", "poweroperator/crd.py"}  # crd.py: the schema, not a converter
    repo = Path(__file__).resolve().parents[2]
    found = sorted(
        str(path.relative_to(repo))
        for package in ("adapter", "collectors", "estimators", "poweroperator")
        for path in (repo / package).rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and node.value in spellings
    )

    assert [path for path in found if path not in allowed] == []

"""PowerBudget parsing, the CRD's defaults agreeing with the code's, and Lease-based leader election."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from adapter.cli import main
from collectors.label_selectors import selector_from_object
from poweroperator.budget import BudgetError, parse_budget
from poweroperator.crd import render
from poweroperator.lease import LeaseElector
from poweroperator.policy import PRIORITY_HIGH, PRIORITY_LOW, PolicyConfig

CRD = Path(__file__).resolve().parents[3] / "apiservice" / "powerbudget-crd.yaml"


def minimal(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "rack-a", "uid": "u", "generation": 1},
        "spec": {
            "nodeSelector": {"matchLabels": {"wattscale.io/rack": "rack-a"}},
            "capWatts": 40_800,
            **spec,
        },
    }


def test_a_minimal_budget_is_dry_run_with_the_default_thresholds() -> None:
    budget = parse_budget(minimal())

    assert budget.enforce is False
    assert str(budget.node_selector) == "wattscale.io/rack=rack-a"
    config = budget.policy
    defaults = PolicyConfig(cap_watts=40_800)
    assert (config.soft_ratio, config.hard_ratio, config.guard_ratio, config.rack_watts_per_gpu_watt) == (
        defaults.soft_ratio,
        defaults.hard_ratio,
        defaults.guard_ratio,
        defaults.rack_watts_per_gpu_watt,
    )


def test_the_checked_in_crd_is_the_generated_one() -> None:
    assert CRD.read_text(encoding="utf-8") == render(), "run: python -m poweroperator.crd > " + str(CRD)


def test_the_crd_defaults_are_the_policy_defaults() -> None:
    crd = yaml.safe_load(CRD.read_text(encoding="utf-8"))
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    thresholds = spec["thresholds"]["properties"]
    defaults = PolicyConfig(cap_watts=1.0)
    assert thresholds["softRatio"]["default"] == defaults.soft_ratio
    assert thresholds["guardRatio"]["default"] == defaults.guard_ratio
    assert thresholds["staleLowerAfterSeconds"]["default"] == defaults.stale_lower_after_seconds
    assert spec["rackWattsPerGpuWatt"]["default"] == defaults.rack_watts_per_gpu_watt
    assert spec["mode"]["default"] == "dryRun"
    scaling = spec["workloads"]["items"]["properties"]["scaling"]
    assert scaling["properties"]["mode"]["default"] == "unmanaged"
    assert len(scaling["x-kubernetes-validations"]) == 4


def test_workload_priorities_and_enforce_mode_are_read() -> None:
    budget = parse_budget(
        minimal(
            mode="enforce",
            thresholds={"guardRatio": 0},
            workloads=[
                {"kind": "InferenceService", "namespace": "llm", "name": "chat", "priorityClass": "high"},
                {"kind": "Deployment", "namespace": "llm", "name": "batch", "replicaPeakPowerWatts": 900},
            ],
        )
    )

    assert budget.enforce is True and budget.policy.guard_ratio is None
    assert [w.priority for w in budget.workloads] == [PRIORITY_HIGH, PRIORITY_LOW]
    assert budget.workloads[1].replica_peak_power_watts == 900.0


def test_every_problem_of_a_bad_budget_is_listed() -> None:
    raw = minimal(
        capWatts="lots",
        mode="yolo",
        workloads=[{"kind": "StatefulSet", "namespace": "x", "name": "y", "priorityClass": "urgent"}],
    )
    raw["spec"]["nodeSelector"] = {}

    with pytest.raises(BudgetError) as exc:
        parse_budget(raw)

    text = str(exc.value)
    for expected in ("nodeSelector", "capWatts", "spec.mode", "kind", "priorityClass"):
        assert expected in text


def test_label_selectors_use_the_list_api_syntax() -> None:
    selector = selector_from_object(
        {
            "matchLabels": {"zone": "a"},
            "matchExpressions": [
                {"key": "rack", "operator": "In", "values": ["r1", "r2"]},
                {"key": "gpu", "operator": "Exists"},
                {"key": "drain", "operator": "DoesNotExist"},
            ],
        }
    )

    assert str(selector) == "zone=a,rack in (r1,r2),gpu,!drain"


class FakeLeaseApi:
    """The Lease endpoints with the API server's optimistic concurrency (409 on a stale resourceVersion)."""

    def __init__(self) -> None:
        self.lease: client.V1Lease | None = None
        self.version = 0
        self.writes = 0

    async def read_namespaced_lease(self, name: str, namespace: str) -> client.V1Lease:
        if self.lease is None:
            raise ApiException(status=404)
        return copy.deepcopy(self.lease)

    async def create_namespaced_lease(self, namespace: str, body: client.V1Lease) -> client.V1Lease:
        if self.lease is not None:
            raise ApiException(status=409)
        return self._store(body)

    async def replace_namespaced_lease(
        self, name: str, namespace: str, body: client.V1Lease
    ) -> client.V1Lease:
        assert self.lease is not None
        if body.metadata.resource_version != self.lease.metadata.resource_version:
            raise ApiException(status=409)
        return self._store(body)

    def _store(self, body: client.V1Lease) -> client.V1Lease:
        self.version += 1
        self.writes += 1
        body.metadata.resource_version = str(self.version)
        self.lease = copy.deepcopy(body)
        return body


async def test_one_replica_leads_until_its_lease_expires_then_another_takes_over() -> None:
    api = FakeLeaseApi()
    now = [100.0]

    def elector(identity: str) -> LeaseElector:
        return LeaseElector(
            api,  # type: ignore[arg-type]
            namespace="kube-system",
            name="wattscale-operator",
            identity=identity,
            lease_seconds=15,
            clock=lambda: now[0],
        )

    a, b = elector("a"), elector("b")
    assert await a.try_acquire_or_renew() is True
    assert await b.try_acquire_or_renew() is False and b.holder == "a"

    now[0] += 10
    assert await a.try_acquire_or_renew() is True  # renewed at 110
    now[0] += 10
    assert await b.try_acquire_or_renew() is False  # 120 < 110 + 15

    now[0] += 20  # a stopped renewing
    assert await b.try_acquire_or_renew() is True
    assert api.lease is not None and api.lease.spec.lease_transitions == 1
    assert await a.try_acquire_or_renew() is False and a.is_leader is False


async def test_a_holder_whose_clock_runs_behind_keeps_the_lease_while_it_renews() -> None:
    # a's wall clock is an hour behind b's: every renewTime a writes looks an hour old to b. Only whether
    # the record changes, timed on b's own clock, may decide.
    api = FakeLeaseApi()
    monotonic = [0.0]
    a = LeaseElector(
        api,  # type: ignore[arg-type]
        namespace="ns",
        name="l",
        identity="a",
        clock=lambda: monotonic[0],
        wall_clock=lambda: 1_000_000.0 + monotonic[0] - 3600,
    )
    b = LeaseElector(
        api,  # type: ignore[arg-type]
        namespace="ns",
        name="l",
        identity="b",
        clock=lambda: monotonic[0] + 500.0,  # monotonic clocks share no origin either
        wall_clock=lambda: 1_000_000.0 + monotonic[0],
    )
    for _ in range(30):
        assert await a.try_acquire_or_renew() is True
        assert await b.try_acquire_or_renew() is False
        monotonic[0] += 2.0

    assert b.holder == "a"


async def test_a_dead_holder_whose_clock_ran_ahead_is_replaced_after_one_lease_duration() -> None:
    api = FakeLeaseApi()
    monotonic = [0.0]
    a = LeaseElector(
        api,  # type: ignore[arg-type]
        namespace="ns",
        name="l",
        identity="a",
        lease_seconds=15,
        clock=lambda: monotonic[0],
        wall_clock=lambda: 1_000_000.0 + monotonic[0] + 3600,  # an hour ahead
    )
    b = LeaseElector(
        api,  # type: ignore[arg-type]
        namespace="ns",
        name="l",
        identity="b",
        clock=lambda: monotonic[0],
        wall_clock=lambda: 1_000_000.0 + monotonic[0],
    )
    assert await a.try_acquire_or_renew() is True
    taken_at = None
    while monotonic[0] < 60:  # a has died: the record stops changing
        if await b.try_acquire_or_renew():
            taken_at = monotonic[0]
            break
        monotonic[0] += 1.0

    assert taken_at is not None and 15 <= taken_at <= 16


async def test_an_unreachable_api_server_costs_the_lead_not_the_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class FakeUnreachableLeaseApi:
        async def read_namespaced_lease(self, name: str, namespace: str) -> client.V1Lease:
            raise aiohttp.ClientConnectionError("connection refused")

    elector = LeaseElector(
        FakeUnreachableLeaseApi(),  # type: ignore[arg-type]
        namespace="ns",
        name="l",
        identity="a",
    )
    with caplog.at_level(logging.WARNING):
        assert await elector.try_acquire_or_renew() is False
        assert await elector.try_acquire_or_renew() is False

    errors = [r for r in caplog.records if r.getMessage() == "operator.lease.error"]
    assert len(errors) == 1 and "connection refused" in errors[0].__dict__["error"]


async def test_a_leader_does_not_rewrite_the_lease_every_period() -> None:
    api = FakeLeaseApi()
    now = [0.0]
    leader = LeaseElector(
        api,  # type: ignore[arg-type]
        namespace="ns",
        name="l",
        identity="a",
        renew_seconds=2.0,
        clock=lambda: now[0],
    )
    for _ in range(10):
        assert await leader.try_acquire_or_renew()
        now[0] += 0.5

    assert api.writes == 3  # at 0, 2 and 4 s


async def test_a_released_lease_is_taken_at_once() -> None:
    api = FakeLeaseApi()
    a = LeaseElector(api, namespace="ns", name="l", identity="a", clock=lambda: 50.0)  # type: ignore[arg-type]
    b = LeaseElector(api, namespace="ns", name="l", identity="b", clock=lambda: 51.0)  # type: ignore[arg-type]
    await a.try_acquire_or_renew()

    await a.release()

    assert await b.try_acquire_or_renew() is True


@pytest.mark.usefixtures("restored_logging")
def test_capper_without_a_cluster_exits_with_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    assert main(["capper", "--once", "--metrics-port", "0"]) == 2
    assert "no cluster" in capsys.readouterr().err


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """The command sets up the root logger for the process; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restored_logging")
def test_operator_logs_are_json_lines_with_their_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # An API server nobody listens on: the lease cannot be read, which the operator logs and survives.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    code = main(
        [
            "operator",
            "--once",
            "--kubeconfig",
            str(kubeconfig),
            "--metrics-address",
            "127.0.0.1",
            "--metrics-port",
            "0",
        ]
    )

    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    errors = [line for line in lines if line["event"] == "operator.lease.error"]
    assert errors and errors[0]["lease"] == "wattscale-operator" and "127.0.0.1" in errors[0]["error"]


def managed(**scaling: Any) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "namespace": "llm",
        "name": "llama",
        "scaling": {"mode": "managed", **scaling},
    }


QUEUE = {
    "name": "queue",
    "type": "prometheus",
    "metadata": {"query": "q", "threshold": "4"},
    "replicaTarget": 4,
}


def test_a_managed_workload_gets_the_schema_defaults() -> None:
    budget = parse_budget(minimal(workloads=[managed(maxReplicas=8, demand=[QUEUE])]))

    scaling = budget.workloads[0].scaling
    assert scaling is not None
    assert (scaling.min_replicas, scaling.max_replicas, scaling.polling_interval_seconds) == (1, 8, 15)
    assert [(d.name, d.type, d.replica_target) for d in scaling.demand] == [("queue", "prometheus", 4.0)]


def test_an_unmanaged_workload_has_no_scaling() -> None:
    budget = parse_budget(minimal(workloads=[{"kind": "Deployment", "namespace": "a", "name": "b"}]))

    assert budget.workloads[0].scaling is None


@pytest.mark.parametrize(
    ("scaling", "problem"),
    [
        ({"maxReplicas": 4}, "demand: one or more"),
        ({"demand": [QUEUE]}, "maxReplicas: required"),
        ({"minReplicas": 5, "maxReplicas": 4, "demand": [QUEUE]}, "minReplicas 5 > maxReplicas 4"),
        ({"maxReplicas": 4, "demand": [QUEUE, QUEUE]}, "names must be unique"),
        (
            {"maxReplicas": 4, "demand": [{**QUEUE, "name": "wattscale_budget"}]},
            "other than wattscale_budget",
        ),
        ({"maxReplicas": 4, "demand": [{**QUEUE, "name": "queue-depth"}]}, "identifier"),
        (
            {"maxReplicas": 4, "demand": [{**QUEUE, "replicaTarget": 0}]},
            "replicaTarget: want a positive number, got 0",
        ),
    ],
)
def test_a_managed_workload_breaking_a_cel_rule_is_refused_by_the_parser_too(
    scaling: dict[str, Any], problem: str
) -> None:
    with pytest.raises(BudgetError, match=problem):
        parse_budget(minimal(workloads=[managed(**scaling)]))

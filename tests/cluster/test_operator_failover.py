"""Two `wattscale operator` replicas on the real control plane: only the Lease holder writes GPU limits; when
it is killed (SIGKILL, so it cannot release the Lease) the other takes over once the Lease expires and goes on
acting, and no limit is ever written by both.

Who wrote is told apart by each replica's own /metrics (wattscale_capper_gpu_limit_changes_total), besides the
PowerBudget status (`leader`) and the Lease's holderIdentity.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator

import pytest
from kubeharness.adapter import DeployedAdapter
from kubeharness.controlplane import ControlPlane
from kubeharness.processes import ManagedProcess, free_port, wait_until
from prometheus_client.parser import text_string_to_metric_families
from test_operator_cluster import (
    GPUS_PER_AGENT,
    NODES,
    _budget,
    _budget_status,
    _events,
    _limits,
    agents,  # noqa: F401  (module-scoped here too: fresh agents, every GPU at its maximum)
    power_budget_crd,  # noqa: F401
    start_operator,
)

pytestmark = pytest.mark.cluster

IDENTITIES = ("operator-a", "operator-b")
LEASE_SECONDS = 6
# One renew period (2 s) and one control period (1 s) past the Lease's expiry, and a busy 2-core machine.
TAKEOVER_ALLOWANCE_SECONDS = 10
MIN_WATTS, MAX_WATTS = 200.0, 700.0  # the agents' FakeNvml devices
_TIMEOUT_SECONDS = 150


def _limit_changes(port: int, direction: str) -> float:
    """This replica's count of GPU limit changes sent to agents in the given direction."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "wattscale_capper_gpu_limit_changes_total"
        and sample.labels.get("direction") == direction
        and sample.labels.get("mode") == "enforce"
    )


def _lease_holder(plane: ControlPlane) -> str:
    lease = plane.kubectl("get", "lease", "wattscale-operator", "-n", "default", "-o", "json")
    holder: str = json.loads(lease.stdout)["spec"].get("holderIdentity") or ""
    return holder


def _within_device_range(limits: list[float]) -> bool:
    return all(MIN_WATTS <= watts <= MAX_WATTS for watts in limits)


@pytest.fixture
def two_operators(
    control_plane: ControlPlane,
    adapter: DeployedAdapter,
    power_budget_crd: None,  # noqa: F811
    agents: dict[str, str],  # noqa: F811
) -> Iterator[dict[str, tuple[ManagedProcess, int]]]:
    replicas = {}
    for identity in IDENTITIES:
        port = free_port()
        replicas[identity] = (
            start_operator(control_plane, identity, port, "--lease-seconds", str(LEASE_SECONDS)),
            port,
        )
    try:
        yield replicas
    finally:
        for process, _ in replicas.values():
            process.stop()
        control_plane.kubectl("delete", "powerbudget", "rack-a", "--ignore-not-found")
        control_plane.kubectl("delete", "lease", "wattscale-operator", "-n", "default", "--ignore-not-found")
        control_plane.kubectl(
            "delete", "events", "-n", "default", "--field-selector", "involvedObject.kind=PowerBudget"
        )


def test_the_standby_operator_takes_over_when_the_leader_is_killed_and_no_limit_is_written_by_both(
    control_plane: ControlPlane,
    two_operators: dict[str, tuple[ManagedProcess, int]],
    agents: dict[str, str],  # noqa: F811
) -> None:
    gpus = len(NODES) * GPUS_PER_AGENT
    assert _limits(agents) == [MAX_WATTS] * gpus
    control_plane.apply([_budget("enforce")], "--force-conflicts")

    def tails() -> str:
        return "\n".join(process.tail() for process, _ in two_operators.values())

    wait_until(
        lambda: _limits(agents) == [MIN_WATTS] * gpus,
        timeout_seconds=_TIMEOUT_SECONDS,
        description="the leader lowered every GPU to its minimum",
        on_timeout=tails,
    )
    leader = wait_until(
        lambda: _budget_status(control_plane).get("leader"),
        timeout_seconds=_TIMEOUT_SECONDS,
        description="PowerBudget rack-a status naming its leader",
        on_timeout=tails,
    )
    assert leader in IDENTITIES and _lease_holder(control_plane) == leader
    (survivor,) = (identity for identity in IDENTITIES if identity != leader)
    leader_process, leader_port = two_operators[leader]
    survivor_process, survivor_port = two_operators[survivor]
    assert _limit_changes(leader_port, "down") >= gpus  # every GPU lowered (maybe in steps) by the leader
    assert _limit_changes(survivor_port, "down") == 0
    assert _limit_changes(survivor_port, "up") == 0

    os.kill(leader_process.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(
        lambda: leader_process.exit_code() == -signal.SIGKILL,
        timeout_seconds=10,
        description=f"{leader} dead",
    )
    wait_until(
        lambda: _lease_holder(control_plane) == survivor,
        timeout_seconds=LEASE_SECONDS + TAKEOVER_ALLOWANCE_SECONDS,
        description=f"{survivor} holding the Lease within its duration ({LEASE_SECONDS} s) and the allowance",
        on_timeout=survivor_process.tail,
    )
    print(f"takeover {time.monotonic() - killed_at:.1f} s after SIGKILL (lease {LEASE_SECONDS} s)")
    wait_until(
        lambda: _budget_status(control_plane).get("leader") == survivor,
        timeout_seconds=_TIMEOUT_SECONDS,
        description=f"PowerBudget status written by {survivor}",
        on_timeout=survivor_process.tail,
    )
    # The limits the dead leader set are what the survivor finds: nothing for it to write again.
    assert _limits(agents) == [MIN_WATTS] * gpus
    assert _limit_changes(survivor_port, "down") == 0

    # The survivor goes on acting: headroom comes back, and it (the only live writer) restores the limits.
    budget = _budget("enforce")
    budget["spec"]["capWatts"] = 1e9
    budget["spec"]["thresholds"]["restoreAfterSeconds"] = 0
    control_plane.apply([budget], "--force-conflicts")
    wait_until(
        lambda: _limit_changes(survivor_port, "up") > 0 and min(_limits(agents)) > MIN_WATTS,
        timeout_seconds=_TIMEOUT_SECONDS,
        description=f"{survivor} raising the limits after the cap went up",
        on_timeout=survivor_process.tail,
    )
    assert _within_device_range(_limits(agents))
    assert any(
        e["reason"] == "PowerLimitsRestored" and e["message"].startswith("enforce: ")
        for e in _events(control_plane)
    ), [e["message"] for e in _events(control_plane)]
    assert leader_process.exit_code() == -signal.SIGKILL
    survivor_process.check_running()

"""`wattscale serve` settings that need no cluster: rack definitions and the refusal to run open."""

from __future__ import annotations

import subprocess
import sys

from adapter.catalogue import POWER_BUDGETS
from adapter.commands.serve import merge_racks, power_budget_racks
from adapter.objects import KubeObject
from adapter.settings import RackSettings


def test_power_budgets_define_racks_and_replace_config_racks_of_the_same_name() -> None:
    budgets = [
        KubeObject(
            POWER_BUDGETS,
            "",
            "rack-a",
            spec={"capWatts": 30000, "marginRatio": 0.05, "nodeSelector": {"matchLabels": {"rack": "a"}}},
        ),
        KubeObject(POWER_BUDGETS, "", "no-cap", spec={"nodeSelector": {"matchLabels": {"rack": "c"}}}),
        # An empty selector would make every node the rack's: the capper refuses it, so the adapter does too.
        KubeObject(POWER_BUDGETS, "", "everything", spec={"capWatts": 9000, "nodeSelector": {}}),
        KubeObject(
            POWER_BUDGETS,
            "",
            "bad-margin",
            spec={"capWatts": 9000, "marginRatio": 3, "nodeSelector": {"matchLabels": {"rack": "d"}}},
        ),
    ]
    configured = [RackSettings(name="rack-a", cap_watts=20000), RackSettings(name="rack-b", cap_watts=20000)]
    racks = {rack.name: rack for rack in merge_racks(configured, power_budget_racks(budgets))}
    assert set(racks) == {"rack-a", "rack-b"}  # invalid budgets (no cap, every node, margin 3) define none
    assert (racks["rack-a"].cap_watts, racks["rack-a"].margin_ratio) == (30000.0, 0.05)
    assert racks["rack-a"].node_selector.matches({"rack": "a"})
    assert not racks["rack-a"].node_selector.matches({"rack": "b"})


def test_serve_without_a_cluster_refuses_to_run_unauthenticated() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "adapter.cli", "serve", "--secure-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    )
    assert result.returncode == 2
    assert "--insecure-disable-auth" in result.stderr


def test_serve_reports_every_config_problem_and_exits_2(tmp_path: object) -> None:
    from pathlib import Path

    config = Path(str(tmp_path)) / "bad.yaml"
    config.write_text("window_seconds: -1\nracks: [{name: r}]\n")
    result = subprocess.run(
        [sys.executable, "-m", "adapter.cli", "serve", "--config", str(config), "--insecure-disable-auth"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "window_seconds: want a positive number, got -1" in result.stderr
    assert "racks[0].cap_watts: required" in result.stderr

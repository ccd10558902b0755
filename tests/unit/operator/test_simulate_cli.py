"""`wattscale simulate` as a user runs it."""

from __future__ import annotations

import json

import pytest

from adapter.cli import main
from poweroperator.commands import simulate as simulate_command
from poweroperator.sim import policies, traces


def test_json_output_has_the_safety_service_and_efficiency_numbers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        [
            "simulate",
            "--policy",
            "polca",
            "--trace",
            "flash-crowd",
            "--oversubscription",
            "1.5",
            "--seed",
            "2",
            "--duration",
            "60",
            "--json",
        ]
    )

    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["policy"] == "polca" and record["trace"] == "flash-crowd" and record["servers"] == 6
    for key in (
        "time_above_cap_percent",
        "worst_overshoot_1s_percent",
        "trips",
        "tokens_high_vs_uncapped",
        "tokens_low_vs_uncapped",
        "p99_ttft_seconds_high",
        "p99_tbt_seconds_low",
        "gpu_joules_per_token",
        "limit_changes_per_gpu_per_minute",
    ):
        assert key in record
    assert 0.5 < record["tokens_high_vs_uncapped"] <= 1.01


def test_table_output_names_every_metric(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--policy", "none", "--duration", "30"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("time_above_cap_percent") for line in lines)
    assert any(line.split() == ["tokens_high_vs_uncapped", "1"] for line in lines)


@pytest.mark.parametrize(
    "argv",
    [["--policy", "magic"], ["--oversubscription", "0"], ["--duration", "-5"], ["--trace", "weekday"]],
)
def test_bad_flags_exit_with_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["simulate", *argv])

    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_a_duration_too_short_for_the_control_loop_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--duration", "2"]) == 2
    assert "duration_seconds" in capsys.readouterr().err


def test_the_cli_offers_exactly_the_simulator_policies_and_traces() -> None:
    # The command lists them itself so that `wattscale --help` does not import NumPy.
    assert simulate_command._POLICIES == policies.POLICIES
    assert simulate_command._TRACES == traces.TRACES

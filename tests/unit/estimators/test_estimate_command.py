"""`wattscale estimate` on CSV files, as a user runs it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adapter.cli import main
from estimators.sampling import ScrapePlan, compare_to_truth, scrape_trace

TRACE = Path(__file__).resolve().parents[3] / "data" / "h100-llama8b"


def _scraped_csv(path: Path, *, interval_seconds: float, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    plan = ScrapePlan(interval_seconds=interval_seconds, offset_seconds=3.0)
    frame = scrape_trace(
        pd.read_csv(TRACE / "samples.csv"),
        pd.read_csv(TRACE / "steps.csv"),
        energy_plan=plan,
        token_plan=ScrapePlan(interval_seconds=interval_seconds, offset_seconds=3.2),
        rng=rng,
    )
    frame.rename(columns={"timestamp_seconds": "timestamp"}).to_csv(path, index=False)
    return path


def test_watts_per_token_csv_matches_the_energy_counter_truth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _scraped_csv(tmp_path / "h100.csv", interval_seconds=15.0)
    assert main(["estimate", "watts-per-token", "--input", str(source), "--window", "30s"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(table.columns) == [
        "window_start",
        "window_end",
        "watts_per_token",
        "power_watts",
        "tokens_per_second",
        "method",
    ]
    assert len(table) >= 5
    assert set(table["method"]) == {"energy_counter"}
    estimate = table.rename(
        columns={"window_start": "window_start_seconds", "window_end": "window_end_seconds"}
    )
    compared = compare_to_truth(
        estimate, pd.read_csv(TRACE / "samples.csv"), pd.read_csv(TRACE / "steps.csv")
    )
    assert compared["relative_error"].abs().max() <= 0.05


def test_watts_per_token_without_energy_counter_uses_the_gauge_and_writes_a_file(tmp_path: Path) -> None:
    source = _scraped_csv(tmp_path / "h100.csv", interval_seconds=15.0)
    frame = pd.read_csv(source)
    frame[frame["metric"] != "gpu_energy_joules_total"].to_csv(source, index=False)
    target = tmp_path / "out.csv"
    code = main(
        [
            "estimate",
            "watts-per-token",
            "--input",
            str(source),
            "--window",
            "1m",
            "--all-columns",
            "--output",
            str(target),
        ]
    )
    assert code == 0
    table = pd.read_csv(target)
    assert set(table["method"]) == {"power_gauge"}
    assert {"joules_per_token_with_prompt", "idle_joules_per_token", "dynamic_joules_per_token"} <= set(
        table.columns
    )


def test_power_model_reports_cross_validated_error_and_picks_linear(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _scraped_csv(tmp_path / "h100.csv", interval_seconds=5.0)
    assert main(["estimate", "power-model", "--input", str(source), "--window", "30s", "--step", "2s"]) == 0
    out = capsys.readouterr().out
    scores = pd.read_csv(io.StringIO(out), comment="#")
    assert list(scores.columns) == ["regressor", "cv_mape", "cv_mape_std"]
    assert scores["regressor"].iloc[0] == "linear"
    assert scores["cv_mape"].iloc[0] < 0.10
    assert "# chosen: linear" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("time,metric,value\n1,a,2\n", "missing column(s) timestamp"),
        ("timestamp,metric,value\n1,gpu_power_watts,2\n", "no generation_tokens_total"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    source = tmp_path / "bad.csv"
    source.write_text(content)
    assert main(["estimate", "watts-per-token", "--input", str(source)]) == 2
    assert message in capsys.readouterr().err


def test_missing_file_and_bad_window(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "watts-per-token", "--input", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["estimate", "watts-per-token", "--input", "x.csv", "--window", "soon"])
    assert exited.value.code == 2
    assert "not a duration" in capsys.readouterr().err


def test_power_model_with_too_little_data_says_what_to_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _scraped_csv(tmp_path / "h100.csv", interval_seconds=15.0)
    assert main(["estimate", "power-model", "--input", str(source), "--window", "60s", "--step", "60s"]) == 2
    assert "use a shorter --window or --step" in capsys.readouterr().err


def test_power_model_without_requests_running_uses_the_token_rates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _scraped_csv(tmp_path / "h100.csv", interval_seconds=5.0)
    frame = pd.read_csv(source)
    frame[frame["metric"] != "requests_running"].to_csv(source, index=False)
    assert main(["estimate", "power-model", "--input", str(source), "--window", "30s", "--step", "2s"]) == 0
    out = capsys.readouterr().out
    assert "# features: generation_tokens_per_second, prompt_tokens_per_second\n" in out
    scores = pd.read_csv(io.StringIO(out), comment="#")
    assert scores["cv_mape"].min() < 0.10

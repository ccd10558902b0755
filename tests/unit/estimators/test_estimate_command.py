"""`wattscale estimate` on CSV files, as a user runs it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adapter.cli import build_parser, main
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
        "confidence",
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


def _epoch_csv() -> tuple[str, list[str]]:
    """A steady pod scraped every ~15 s at millisecond epoch times; the token sample times as written."""
    times = [f"17900000{3 + 15 * k:02d}.{200 + 13 * k:03d}" for k in range(6)]
    lines = ["timestamp,metric,value"]
    for k, at in enumerate(times):
        lines += [
            f"{at},generation_tokens_total,{1500 * k}",
            f"{at},gpu_energy_joules_total,{1000 + 4000 * k}",
        ]
    return "\n".join(lines) + "\n", times


def test_epoch_timestamps_round_trip_exactly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    content, times = _epoch_csv()
    source = tmp_path / "epoch.csv"
    source.write_text(content)
    assert main(["estimate", "watts-per-token", "--input", str(source), "--window", "30s"]) == 0
    out = capsys.readouterr().out
    table = pd.read_csv(io.StringIO(out), dtype={"window_start": str, "window_end": str})
    # Edges are token sample instants (token-aligned windows), written back exactly as read.
    edges = sorted(set(table["window_start"]) | set(table["window_end"]))
    assert len(table) == 3  # 0-30 s, 30-60 s and the last 15 s (a window is at least half the length)
    assert all(float(edge) in {float(t) for t in times} for edge in edges)
    assert table["window_start"].nunique() == len(table)
    assert table["watts_per_token"].tolist() == pytest.approx([4000 / 1500] * 3, rel=1e-5)


def test_rfc3339_input_and_standard_input_give_the_same_windows(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    content, _ = _epoch_csv()
    epoch = pd.read_csv(io.StringIO(content), dtype={"timestamp": str})
    rfc3339 = epoch.assign(
        timestamp=pd.to_datetime(epoch["timestamp"].astype(float), unit="s", utc=True).map(
            lambda t: t.isoformat(timespec="milliseconds")
        )
    )
    outputs = []
    for frame in (epoch, rfc3339):
        monkeypatch.setattr("sys.stdin", io.StringIO(frame.to_csv(index=False)))
        assert main(["estimate", "watts-per-token", "--input", "-", "--window", "30s"]) == 0
        outputs.append(capsys.readouterr().out)
    assert "+00:00" in rfc3339["timestamp"].iloc[0]
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30.0), ("5m", 300.0), ("2h", 7200.0), ("90", 90.0)])
def test_durations_with_units(text: str, seconds: float) -> None:
    from collectors.durations import duration_seconds

    assert duration_seconds(text) == seconds
    args = build_parser().parse_args(["estimate", "watts-per-token", "--input", "-", "--window", text])
    assert args.window == seconds

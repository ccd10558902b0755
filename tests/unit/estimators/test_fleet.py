"""The pipeline's one call: pods, nodes and racks from a frame of samples."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from estimators.fleet import (
    GROUP_COLUMNS,
    NODE_COLUMNS,
    POD_COLUMNS,
    RACK_COLUMNS,
    aggregate_pods,
    estimate_fleet,
    replicas_within_budget,
)
from estimators.sampling import ScrapePlan, scrape_trace, token_counters, true_joules_per_token

SCRAPES_SECONDS = [0.0, 15.0, 30.0, 45.0, 60.0]
RACKS = pd.DataFrame({"rack": ["rack-a"], "cap_watts": [5000.0], "margin_ratio": [0.1]})


def _row(metric: str, value: float, t: float, **labels: str) -> dict[str, object]:
    return {"metric": metric, "value": value, "timestamp_seconds": t, **labels}


def _gpu_pod_samples() -> pd.DataFrame:
    """GPU g0 (energy counter, 300 W) serves pod a; GPU g1 (gauge only, 200 W) is shared by b and c."""
    rows = []
    for t in SCRAPES_SECONDS:
        rows.append(_row("gpu_energy_joules_total", 1e6 + 300.0 * t, t, node="n1", gpu_uuid="g0"))
        rows.append(_row("gpu_power_watts", 290.0, t, node="n1", gpu_uuid="g0"))
        rows.append(_row("gpu_power_watts", 200.0, t, node="n1", gpu_uuid="g1"))
        for gpu, pod in [("g0", "a"), ("g1", "b"), ("g1", "c")]:
            rows.append(
                _row("gpu_assignment_info", 1.0, t, node="n1", gpu_uuid=gpu, namespace="llm", pod=pod)
            )
        # Token counters scraped 3 s later than the GPU: different targets, different moments.
        rows.append(_row("generation_tokens_total", 1000.0 * t, t + 3, namespace="llm", pod="a"))
        rows.append(_row("generation_tokens_total", 100.0 * t, t + 3, namespace="llm", pod="b"))
        rows.append(_row("generation_tokens_total", 300.0 * t, t + 3, namespace="llm", pod="c"))
        rows.append(_row("prompt_tokens_total", 50.0 * t, t + 3, namespace="llm", pod="a"))
    return pd.DataFrame(rows)


def _estimate(samples: pd.DataFrame) -> pd.DataFrame:
    estimate = estimate_fleet(
        samples, node_racks={"n1": "rack-a"}, racks=RACKS, window_seconds=60.0, now_seconds=64.0
    )
    return estimate.pods.set_index("pod")


def test_energy_counter_gives_pod_power_and_joules_per_token() -> None:
    pods = _estimate(_gpu_pod_samples())
    assert sorted(pods.reset_index().columns) == sorted(POD_COLUMNS)
    a = pods.loc["a"]
    # The counter (300 W) wins over the gauge (290 W), which sees only moments.
    assert a["gpu_power_watts"] == pytest.approx(300.0)
    assert a["method"] == "energy_counter"
    assert a["generation_tokens_per_second"] == pytest.approx(1000.0)
    assert a["watts_per_token"] == pytest.approx(0.3)
    assert a["energy_joules"] == pytest.approx(300.0 * 60.0)
    assert a["prompt_tokens"] == pytest.approx(50.0 * 60.0)
    assert a["node"] == "n1"
    # The power window ends at the GPU's newest reading (60 s), not at the pass (64 s): it covers
    # exactly the span it is stamped with, nothing extrapolated.
    assert (a["window_start_seconds"], a["window_end_seconds"]) == (0.0, 60.0)


def test_shared_gpu_split_by_token_share_never_exceeds_the_gpu() -> None:
    pods = _estimate(_gpu_pod_samples())
    assert pods.loc["b", "gpu_power_watts"] == pytest.approx(50.0)
    assert pods.loc["c", "gpu_power_watts"] == pytest.approx(150.0)
    assert pods.loc["b", "method"] == "power_gauge/token_share"
    assert pods.loc[["b", "c"], "gpu_power_watts"].sum() == pytest.approx(200.0)


def test_shared_gpu_split_equally_when_a_pod_has_no_token_counter() -> None:
    samples = _gpu_pod_samples()
    samples = samples[~((samples["metric"] == "generation_tokens_total") & (samples["pod"] == "c"))]
    pods = _estimate(samples)
    assert pods.loc["b", "gpu_power_watts"] == pytest.approx(100.0)
    assert pods.loc["c", "gpu_power_watts"] == pytest.approx(100.0)
    assert pods.loc["c", "method"] == "power_gauge/equal_share"
    assert math.isnan(pods.loc["c", "watts_per_token"])


def test_counter_reset_inside_the_window_does_not_go_negative() -> None:
    samples = _gpu_pod_samples()
    restarted = (samples["metric"] == "generation_tokens_total") & (samples["pod"] == "a")
    restarted &= samples["timestamp_seconds"] > 40
    # The server restarted between 33 s and 48 s: its counter starts again from zero.
    samples.loc[restarted, "value"] = samples.loc[restarted, "value"] - 45_000.0
    pods = _estimate(samples)
    assert pods.loc["a", "generation_tokens_per_second"] > 0
    assert pods.loc["a", "watts_per_token"] > 0


def test_kepler_cpu_power_adds_to_the_pod_and_to_the_estimated_node() -> None:
    samples = _gpu_pod_samples()
    kepler = [
        _row("pod_cpu_energy_joules_total", 20.0 * t, t, node="n1", namespace="llm", pod="a")
        for t in SCRAPES_SECONDS
    ]
    estimate = estimate_fleet(
        pd.concat([samples, pd.DataFrame(kepler)], ignore_index=True),
        node_racks={"n1": "rack-a"},
        racks=RACKS,
        window_seconds=60.0,
        now_seconds=64.0,
    )
    a = estimate.pods.set_index("pod").loc["a"]
    assert a["power_watts"] == pytest.approx(320.0)
    assert a["method"] == "energy_counter+kepler_cpu"
    node = estimate.nodes.set_index("node").loc["n1"]
    assert bool(node["estimated"])
    assert node["gpu_power_watts"] == pytest.approx(500.0)
    assert node["node_power_watts"] == pytest.approx(520.0)


def test_measured_node_power_is_not_estimated() -> None:
    samples = pd.concat(
        [
            _gpu_pod_samples(),
            pd.DataFrame([_row("node_power_watts", 2500.0, t, node="n1") for t in SCRAPES_SECONDS]),
        ]
    )
    nodes = estimate_fleet(
        samples, node_racks={"n1": "rack-a"}, racks=RACKS, window_seconds=60.0, now_seconds=64.0
    ).nodes
    assert list(nodes.columns) == NODE_COLUMNS
    assert nodes.set_index("node").loc["n1", "node_power_watts"] == pytest.approx(2500.0)
    assert not bool(nodes.set_index("node").loc["n1", "estimated"])


def test_rack_from_pdu_with_margin_covering_the_recent_rise() -> None:
    pdu = [_row("pdu_power_watts", 3000.0 + 20.0 * t, t, rack="rack-a", pdu="p1") for t in SCRAPES_SECONDS]
    racks = estimate_fleet(
        pd.DataFrame(pdu), node_racks={}, racks=RACKS, window_seconds=60.0, now_seconds=64.0
    ).racks
    assert list(racks.columns) == RACK_COLUMNS
    rack = racks.set_index("rack").loc["rack-a"]
    assert not bool(rack["estimated"])
    # Samples from 15 s to 60 s: mean 3750 W; largest rise 900 W + 1% sensor error beats 10% of the cap.
    assert rack["rack_power_watts"] == pytest.approx(3750.0)
    assert rack["margin_watts"] == pytest.approx(900.0 + 37.5)
    assert rack["headroom_watts"] == pytest.approx(5000.0 - 937.5 - 3750.0)
    assert rack["overdraw_watts"] == 0.0


def test_rack_overdraw_is_positive_and_headroom_zero_when_over_budget() -> None:
    pdu = [_row("pdu_energy_joules_total", 4800.0 * t, t, rack="rack-a") for t in SCRAPES_SECONDS]
    rack = (
        estimate_fleet(pd.DataFrame(pdu), node_racks={}, racks=RACKS, window_seconds=60.0, now_seconds=64.0)
        .racks.set_index("rack")
        .loc["rack-a"]
    )
    assert rack["rack_power_watts"] == pytest.approx(4800.0)
    assert rack["headroom_watts"] == 0.0
    assert rack["overdraw_watts"] == pytest.approx(4800.0 - 4500.0)


def test_rack_without_pdu_is_the_sum_of_its_nodes_and_marked_estimated() -> None:
    estimate = estimate_fleet(
        _gpu_pod_samples(), node_racks={"n1": "rack-a"}, racks=RACKS, window_seconds=60.0, now_seconds=64.0
    )
    rack = estimate.racks.set_index("rack").loc["rack-a"]
    assert bool(rack["estimated"])
    assert rack["rack_power_watts"] == pytest.approx(500.0)
    assert rack["margin_watts"] == pytest.approx(500.0)  # 10% of the cap beats 5% of 500 W


def test_samples_outside_the_window_are_ignored_and_empty_input_gives_empty_frames() -> None:
    late = estimate_fleet(
        _gpu_pod_samples(), node_racks={}, racks=RACKS, window_seconds=30.0, now_seconds=500.0
    )
    assert late.pods.empty
    empty = estimate_fleet(
        pd.DataFrame(columns=["metric", "value", "timestamp_seconds"]),
        node_racks={},
        racks=RACKS,
        window_seconds=60.0,
        now_seconds=0.0,
    )
    assert empty.pods.empty and empty.nodes.empty
    assert list(empty.pods.columns) == POD_COLUMNS
    assert math.isnan(empty.racks.set_index("rack").loc["rack-a", "headroom_watts"])


def test_aggregate_divides_summed_energy_by_summed_tokens() -> None:
    pods = estimate_fleet(
        _gpu_pod_samples(), node_racks={}, racks=RACKS, window_seconds=60.0, now_seconds=64.0
    ).pods
    groups = pd.Series(np.where(pods["pod"] == "c", None, "llm/llama"), index=pods.index)
    out = aggregate_pods(pods, groups)
    assert list(out.columns) == GROUP_COLUMNS
    row = out.set_index("group").loc["llm/llama"]
    assert row["pods"] == 2
    assert row["power_watts"] == pytest.approx(350.0)
    assert row["generation_tokens_per_second"] == pytest.approx(1100.0)
    # 350 W / 1100 tok/s, not the mean of 0.3 and 0.5 J/token.
    assert row["watts_per_token"] == pytest.approx(350.0 / 1100.0)


def test_aggregate_with_no_groups_is_empty() -> None:
    pods = estimate_fleet(
        _gpu_pod_samples(), node_racks={}, racks=RACKS, window_seconds=60.0, now_seconds=64.0
    ).pods
    assert aggregate_pods(pods, pd.Series(None, index=pods.index, dtype=object)).empty


@pytest.mark.parametrize(
    ("headroom_watts", "peak_watts", "current", "expected"),
    [(1000.0, 400.0, 2, 4), (399.0, 400.0, 3, 3), (0.0, 400.0, 1, 1), (float("nan"), 400.0, 2, 2)],
)
def test_replicas_within_budget(
    headroom_watts: float, peak_watts: float, current: int, expected: int
) -> None:
    assert replicas_within_budget(headroom_watts, peak_watts, current) == expected


@pytest.mark.parametrize("peak_watts", [0.0, -5.0, float("nan"), float("inf")])
def test_replicas_within_budget_refuses_an_unknown_peak(peak_watts: float) -> None:
    with pytest.raises(ValueError, match="replica_peak_power_watts"):
        replicas_within_budget(100.0, peak_watts, 1)


def test_pod_on_two_gpus_sums_them_and_names_both_methods() -> None:
    samples = _gpu_pod_samples()
    samples = samples[~((samples["metric"] == "gpu_assignment_info") & (samples["pod"] != "a"))]
    extra = [
        _row("gpu_assignment_info", 1.0, t, node="n1", gpu_uuid="g1", namespace="llm", pod="a")
        for t in SCRAPES_SECONDS
    ]
    pods = _estimate(pd.concat([samples, pd.DataFrame(extra)], ignore_index=True))
    assert pods.loc["a", "gpu_power_watts"] == pytest.approx(500.0)
    assert pods.loc["a", "method"] == "energy_counter,power_gauge"


TRACE = Path(__file__).resolve().parents[3] / "data" / "h100-llama8b"


@pytest.fixture(scope="module")
def h100() -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_csv(TRACE / "samples.csv"), pd.read_csv(TRACE / "steps.csv")


def _pipeline_frame(h100: tuple[pd.DataFrame, pd.DataFrame], seed: int, *, restart: bool) -> pd.DataFrame:
    """The H100 trace as the pipeline's history: one GPU (node agent) and one vLLM pod, polled every
    15 s in the same pass (+-0.5 s), 5% of polls lost."""
    samples, steps = h100
    rng = np.random.default_rng(seed)
    offset = rng.uniform(0.0, 15.0)
    plan = ScrapePlan(interval_seconds=15.0, offset_seconds=offset, drop_ratio=0.05, jitter_seconds=0.5)
    frame = scrape_trace(
        samples,
        steps,
        energy_plan=plan,
        token_plan=plan,
        rng=rng,
        energy_restart_seconds=rng.uniform(60.0, 180.0) if restart else None,
    )
    gpu = frame["metric"].str.startswith("gpu_")
    frame = frame.assign(
        node="node-1",
        gpu_uuid=np.where(gpu, "GPU-0", None),
        namespace=np.where(gpu, None, "llm"),
        pod=np.where(gpu, None, "llama-0"),
    )
    assigned = frame[frame["metric"] == "gpu_power_watts"].assign(
        metric="gpu_assignment_info", value=1.0, namespace="llm", pod="llama-0"
    )
    return pd.concat([frame, assigned], ignore_index=True)


def _served(
    h100: tuple[pd.DataFrame, pd.DataFrame], seeds: range, window_seconds: float, *, restart: bool = False
) -> pd.DataFrame:
    samples, steps = h100
    tokens = token_counters(steps)
    rows = []
    for seed in seeds:
        frame = _pipeline_frame(h100, seed, restart=restart)
        for now in np.arange(60.0, 212.0, 12.0):
            pod = estimate_fleet(
                frame, node_racks={}, racks=RACKS, window_seconds=window_seconds, now_seconds=now
            ).pods.iloc[0]
            edges = [pod["token_window_start_seconds"], pod["token_window_end_seconds"]]
            truth = true_joules_per_token(samples["t"], samples["energy_j"], tokens, edges)["watts_per_token"]
            stated = np.interp(
                [pod["window_start_seconds"], pod["window_end_seconds"]], samples["t"], samples["energy_j"]
            )
            rows.append(
                {
                    **pod.to_dict(),
                    "now_seconds": now,
                    "true_watts_per_token": truth.iloc[0] if np.isfinite(edges).all() else np.nan,
                    "true_power_watts": (stated[1] - stated[0])
                    / (pod["window_end_seconds"] - pod["window_start_seconds"]),
                }
            )
    out = pd.DataFrame(rows)
    return out.assign(relative_error=out["watts_per_token"] / out["true_watts_per_token"] - 1.0)


@pytest.mark.parametrize("window_seconds", [30.0, 60.0])
def test_served_watts_per_token_matches_the_energy_counter_on_the_h100_trace(
    h100: tuple[pd.DataFrame, pd.DataFrame], window_seconds: float
) -> None:
    served = _served(h100, range(3), window_seconds)
    # A lost scrape can leave the newest token sample over half a window old: that pass refreshes
    # nothing (the store keeps the previous value) rather than describe the past as now.
    assert np.isfinite(served["watts_per_token"]).mean() >= 0.9
    spanned = served.dropna(subset=["true_watts_per_token", "watts_per_token"])
    assert len(spanned) >= 0.8 * len(served)
    # The token window is about one window long and ends at the latest token scrape.
    span = spanned["token_window_end_seconds"] - spanned["token_window_start_seconds"]
    assert (span >= 0.5 * window_seconds).all() and (span <= window_seconds + 16.0).all()
    assert (spanned["token_window_end_seconds"] <= spanned["now_seconds"]).all()
    errors = spanned["relative_error"].abs()
    assert (errors <= 0.05).mean() >= 0.9
    assert errors.median() <= 0.01


@pytest.mark.parametrize("window_seconds", [30.0, 60.0])
def test_served_power_is_the_mean_over_the_window_it_states(
    h100: tuple[pd.DataFrame, pd.DataFrame], window_seconds: float
) -> None:
    # Issue 13 item 6: the value stamped [end - window, end] must be that span's mean power (from the
    # dense NVML energy counter), not the mean of an older, shorter span with the rest extrapolated.
    served = _served(h100, range(3), window_seconds)
    stated = served["window_end_seconds"] - served["window_start_seconds"]
    # The full window wherever the history reaches back that far; before that, what the samples cover.
    assert (stated <= window_seconds).all() and (stated == window_seconds).mean() >= 0.7
    assert (served["window_end_seconds"] <= served["now_seconds"]).all()
    errors = (served["gpu_power_watts"] / served["true_power_watts"] - 1.0).abs()
    # What remains is the counter interpolated inside one scrape interval at the window's start.
    assert errors.median() <= 0.005
    assert errors.quantile(0.9) <= 0.05


def test_served_watts_per_token_through_a_gpu_counter_restart(
    h100: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    served = _served(h100, range(3, 5), 60.0, restart=True).dropna(subset=["watts_per_token"])
    assert (served["watts_per_token"] > 0).all()
    assert "energy_counter+reset_fill" in set(served["method"])
    assert served["relative_error"].abs().max() <= 0.35


def test_a_server_that_stopped_reporting_publishes_no_token_figures_but_still_weighs_the_split() -> None:
    samples = _gpu_pod_samples()
    silent = (samples["metric"] == "generation_tokens_total") & (samples["pod"] == "b")
    samples = samples[~(silent & (samples["timestamp_seconds"] > 40.0))]  # b last read at 33 s
    pods = _estimate(samples)  # window 4..64 s: 33 s is more than half a window ago
    assert pods.loc["b", "method"] == "power_gauge/token_share"
    assert pods.loc["b", "gpu_power_watts"] == pytest.approx(50.0)
    assert math.isnan(pods.loc["b", "watts_per_token"])
    assert math.isnan(pods.loc["b", "generation_tokens_per_second"])
    assert pods.loc["c", "watts_per_token"] == pytest.approx(0.5)

"""Pods whose figures recording rules computed: the fleet estimate takes them as recorded."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from estimators.fleet import estimate_fleet

NO_RACKS = pd.DataFrame(columns=["rack", "cap_watts", "margin_ratio"])


def _pod_rows(at: float, pod: str, tokens_per_second: float) -> list[dict[str, object]]:
    """What the `prometheus_api` collector makes of one evaluation's series of `pod`, holding GPU G at
    `GPU_WATTS`."""
    labels = {"namespace": "llm", "pod": pod}
    return [
        {"metric": "gpu_holder_power_watts", "value": GPU_WATTS, "timestamp_seconds": at, **labels, **GPU},
        {"metric": "pod_cpu_power_watts", "value": 40.0, "timestamp_seconds": at, **labels},
        {
            "metric": "pod_generation_tokens_per_second",
            "value": tokens_per_second,
            "timestamp_seconds": at,
            **labels,
        },
    ]


def _gpu_row(at: float, watts: float) -> dict[str, object]:
    return {"metric": "gpu_power_watts", "value": watts, "timestamp_seconds": at, **GPU}


GPU = {"node": "n1", "gpu_uuid": "G"}
GPU_WATTS = 250.0


def test_newest_recorded_figures_make_the_pod() -> None:
    older = [_gpu_row(100.0, 250.0), *_pod_rows(100.0, "llama-0", 400.0)]
    frame = pd.DataFrame([*older, _gpu_row(115.0, 250.0), *_pod_rows(115.0, "llama-0", 500.0)])
    estimate = estimate_fleet(frame, node_racks={}, racks=NO_RACKS, window_seconds=60.0, now_seconds=120.0)
    (pod,) = estimate.pods.to_dict("records")
    assert pod["power_watts"] == pytest.approx(290.0)
    assert pod["watts_per_token"] == pytest.approx(290.0 / 500.0)
    assert pod["energy_joules"] == pytest.approx(290.0 * 60.0)
    assert (pod["window_start_seconds"], pod["window_end_seconds"]) == (55.0, 115.0)
    assert pod["method"] == "recording_rule+kepler_cpu"
    assert pod["node"] == "n1"
    # The node's GPU power is the recorded GPU average; its estimate adds the pod's CPU.
    (node,) = estimate.nodes.to_dict("records")
    assert node["node_power_watts"] == pytest.approx(290.0)


def test_a_shared_gpu_is_split_by_the_recorded_token_rates() -> None:
    frame = pd.DataFrame(
        [_gpu_row(115.0, 250.0), *_pod_rows(115.0, "llama-0", 500.0), *_pod_rows(115.0, "llama-1", 1500.0)]
    )
    estimate = estimate_fleet(frame, node_racks={}, racks=NO_RACKS, window_seconds=60.0, now_seconds=120.0)
    pods = estimate.pods.set_index("pod")
    assert pods.loc["llama-0", "gpu_power_watts"] == pytest.approx(250.0 * 500.0 / 2000.0)
    assert pods.loc["llama-1", "gpu_power_watts"] == pytest.approx(250.0 * 1500.0 / 2000.0)
    assert pods.loc["llama-0", "method"] == "recording_rule/token_share+kepler_cpu"


def test_a_pod_without_tokens_gets_no_watts_per_token() -> None:
    frame = pd.DataFrame([_gpu_row(115.0, 250.0), *_pod_rows(115.0, "llama-0", 0.0)])
    estimate = estimate_fleet(frame, node_racks={}, racks=NO_RACKS, window_seconds=60.0, now_seconds=120.0)
    assert math.isnan(estimate.pods.loc[0, "watts_per_token"])
    assert estimate.pods.loc[0, "power_watts"] == pytest.approx(290.0)


def test_a_recorded_pod_gpu_power_is_taken_over_a_split() -> None:
    """What an earlier rules file recorded (each pod's own GPU share) is served as it is."""
    pod = {"namespace": "llm", "pod": "llama-0", "node": "n1"}
    share = {"metric": "pod_gpu_power_watts", "value": 62.5, "timestamp_seconds": 115.0, **pod}
    frame = pd.DataFrame([_gpu_row(115.0, 250.0), *_pod_rows(115.0, "llama-0", 500.0), share])
    estimate = estimate_fleet(frame, node_racks={}, racks=NO_RACKS, window_seconds=60.0, now_seconds=120.0)
    assert estimate.pods.loc[0, "power_watts"] == pytest.approx(102.5)
    assert estimate.pods.loc[0, "method"] == "recording_rule+kepler_cpu"

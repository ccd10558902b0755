"""Pods whose figures recording rules computed: the fleet estimate takes them as recorded."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from estimators.fleet import estimate_fleet

NO_RACKS = pd.DataFrame(columns=["rack", "cap_watts", "margin_ratio"])


def _rows(at: float, gpu_watts: float, tokens_per_second: float) -> list[dict[str, object]]:
    pod = {"namespace": "llm", "pod": "llama-0"}
    return [
        {"metric": "pod_gpu_power_watts", "value": gpu_watts, "timestamp_seconds": at, **pod, "node": "n1"},
        {"metric": "pod_cpu_power_watts", "value": 40.0, "timestamp_seconds": at, **pod},
        {
            "metric": "pod_generation_tokens_per_second",
            "value": tokens_per_second,
            "timestamp_seconds": at,
            **pod,
        },
        {"metric": "gpu_power_watts", "value": 250.0, "timestamp_seconds": at, "node": "n1", "gpu_uuid": "G"},
    ]


def test_newest_recorded_figures_make_the_pod() -> None:
    frame = pd.DataFrame(_rows(100.0, 50.0, 400.0) + _rows(115.0, 62.5, 500.0))
    estimate = estimate_fleet(frame, node_racks={}, racks=NO_RACKS, window_seconds=60.0, now_seconds=120.0)
    (pod,) = estimate.pods.to_dict("records")
    assert pod["power_watts"] == pytest.approx(102.5)
    assert pod["watts_per_token"] == pytest.approx(102.5 / 500.0)
    assert pod["energy_joules"] == pytest.approx(102.5 * 60.0)
    assert (pod["window_start_seconds"], pod["window_end_seconds"]) == (55.0, 115.0)
    assert pod["method"] == "recording_rule+kepler_cpu"
    assert pod["node"] == "n1"
    # The node's GPU power is the recorded GPU average; its estimate adds the pod's CPU.
    (node,) = estimate.nodes.to_dict("records")
    assert node["node_power_watts"] == pytest.approx(290.0)


def test_a_pod_without_tokens_gets_no_watts_per_token() -> None:
    frame = pd.DataFrame(_rows(115.0, 62.5, 0.0))
    estimate = estimate_fleet(frame, node_racks={}, racks=NO_RACKS, window_seconds=60.0, now_seconds=120.0)
    assert math.isnan(estimate.pods.loc[0, "watts_per_token"])
    assert estimate.pods.loc[0, "power_watts"] == pytest.approx(102.5)

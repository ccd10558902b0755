"""Splitting measured GPU and node power among pods: shares add up to the measurement, never more."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from estimators.attribution import cpu_scale, split_gpu_power
from estimators.fleet import estimate_fleet

GPUS = pd.DataFrame(
    {
        "node": ["n1", "n1"],
        "gpu_uuid": ["g0", "g1"],
        "power_watts": [300.0, 200.0],
        "method": "energy_counter",
    }
)


def _assign(*pairs: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame([{"node": "n1", "gpu_uuid": g, "namespace": "llm", "pod": p} for g, p in pairs])


def test_utilisation_share_when_a_pod_has_no_token_counter() -> None:
    load = pd.DataFrame({"namespace": "llm", "pod": ["b", "c"], "utilization_ratio": [0.3, 0.1]})
    shares = split_gpu_power(GPUS, _assign(("g1", "b"), ("g1", "c")), load).set_index("pod")
    assert shares.loc["b", "gpu_share_watts"] == pytest.approx(150.0)
    assert shares.loc["c", "gpu_share_watts"] == pytest.approx(50.0)
    assert shares.loc["b", "method"] == "energy_counter/utilization_share"


def test_tokens_win_over_utilisation_and_zero_tokens_fall_back() -> None:
    load = pd.DataFrame(
        {
            "namespace": "llm",
            "pod": ["b", "c"],
            "generation_tokens_per_second": [300.0, 100.0],
            "utilization_ratio": [0.1, 0.1],
        }
    )
    shares = split_gpu_power(GPUS, _assign(("g1", "b"), ("g1", "c")), load).set_index("pod")
    assert shares.loc["b", "gpu_share_watts"] == pytest.approx(150.0)
    idle = load.assign(generation_tokens_per_second=0.0)
    shares = split_gpu_power(GPUS, _assign(("g1", "b"), ("g1", "c")), idle).set_index("pod")
    assert shares.loc["b", "gpu_share_watts"] == pytest.approx(100.0)  # equal utilisation
    assert shares.loc["b", "method"] == "energy_counter/utilization_share"


def test_pod_on_two_gpus_and_unknown_gpu_is_left_out() -> None:
    load = pd.DataFrame({"namespace": ["llm"], "pod": ["a"]})
    shares = split_gpu_power(GPUS, _assign(("g0", "a"), ("g1", "a"), ("g9", "a")), load)
    assert shares["gpu_share_watts"].sum() == pytest.approx(500.0)
    assert set(shares["method"]) == {"energy_counter"}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.integers(0, 5),
            st.one_of(st.none(), st.floats(0, 5000)),
            st.one_of(st.none(), st.floats(0, 1)),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_shares_sum_to_each_gpu_and_never_exceed_it(
    rows: list[tuple[int, int, float | None, float | None]],
) -> None:
    gpus = pd.DataFrame(
        {"node": "n", "gpu_uuid": [f"g{i}" for i in range(4)], "power_watts": [100.0, 250.0, 400.0, 75.0]}
    ).assign(method="power_gauge")
    assignments = pd.DataFrame(
        [{"node": "n", "gpu_uuid": f"g{g}", "namespace": "x", "pod": f"p{p}"} for g, p, _, _ in rows]
    )
    load = pd.DataFrame(
        [
            {"namespace": "x", "pod": f"p{p}", "generation_tokens_per_second": t, "utilization_ratio": u}
            for _, p, t, u in rows
        ]
    ).drop_duplicates(["namespace", "pod"])
    shares = split_gpu_power(gpus, assignments, load)
    assert (shares["gpu_share_watts"] >= 0).all()
    per_gpu = shares.groupby("gpu_uuid")["gpu_share_watts"].sum()
    np.testing.assert_allclose(per_gpu, gpus.set_index("gpu_uuid").loc[per_gpu.index, "power_watts"])


def test_kepler_cpu_is_scaled_into_the_measured_node_power() -> None:
    node = np.array([0, 0, 1])  # n1, n1, n2
    gpu, cpu = np.array([300.0, 200.0, 100.0]), np.array([150.0, 50.0, 80.0])
    fitted, scaled = cpu_scale(node, gpu, cpu, np.array([600.0, 600.0, np.nan]))  # n2 not measured
    # n1 measured 600 W, GPUs take 500 W: 100 W left for 200 W of Kepler CPU, so it is halved.
    np.testing.assert_allclose(fitted, [75.0, 25.0, 80.0])
    assert scaled.tolist() == [True, True, False]
    roomy, _ = cpu_scale(node, gpu, cpu, np.array([2000.0, 2000.0, np.nan]))
    np.testing.assert_allclose(roomy, cpu)


def test_fleet_pods_never_exceed_the_measured_node() -> None:
    rows = []
    for t in (0.0, 15.0, 30.0):
        rows.append(
            {
                "metric": "gpu_power_watts",
                "value": 400.0,
                "timestamp_seconds": t,
                "node": "n1",
                "gpu_uuid": "g0",
            }
        )
        rows.append({"metric": "node_power_watts", "value": 450.0, "timestamp_seconds": t, "node": "n1"})
        for pod in ("a", "b"):
            rows.append(
                {
                    "metric": "gpu_assignment_info",
                    "value": 1.0,
                    "timestamp_seconds": t,
                    "node": "n1",
                    "gpu_uuid": "g0",
                    "namespace": "llm",
                    "pod": pod,
                }
            )
            rows.append(
                {
                    "metric": "pod_cpu_energy_joules_total",
                    "value": 100.0 * t,
                    "timestamp_seconds": t,
                    "node": "n1",
                    "namespace": "llm",
                    "pod": pod,
                }
            )
    estimate = estimate_fleet(
        pd.DataFrame(rows),
        node_racks={},
        racks=pd.DataFrame(columns=["rack", "cap_watts", "margin_ratio"]),
        window_seconds=60.0,
        now_seconds=30.0,
    )
    pods = estimate.pods
    assert pods["power_watts"].sum() == pytest.approx(450.0)
    assert set(pods["method"]) == {"power_gauge/equal_share+kepler_cpu_scaled"}

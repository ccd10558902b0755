"""Pod figures that recording rules already computed in Prometheus (the `prometheus_api` collector).

The rules did the per-sample work (counter increases, the split of shared GPUs by tokens); what is
left is arithmetic on each pod's newest recorded averages: power is GPU plus CPU, watts per token is
power over the token rate, energies and tokens are the averages times the window. A pod's window
ends at the rule evaluation that recorded its newest figure, so the store ages it from there. Kepler
CPU power is taken as recorded (no scaling to a measured node power, which the rules do not see).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

RECORDED_COLUMNS = {
    "pod_gpu_power_watts": "gpu_power_watts",
    "pod_cpu_power_watts": "cpu_power_watts",
    "pod_generation_tokens_per_second": "generation_tokens_per_second",
    "pod_prompt_tokens_per_second": "prompt_tokens_per_second",
}
METHOD = "recording_rule"
_POD = ["namespace", "pod"]


def recorded_pods(current: pd.DataFrame, window_seconds: float) -> pd.DataFrame:
    """One row per pod with recorded figures in `current` (the window's samples): namespace, pod, node,
    the power, energy and token columns of `estimators.fleet.POD_COLUMNS`, and the pod's own window."""
    rows = current.loc[current["metric"].astype(str).isin(list(RECORDED_COLUMNS))].dropna(subset=_POD)
    if rows.empty:
        return pd.DataFrame(columns=[*_POD, "node"])
    rows = rows.assign(metric=rows["metric"].astype(str)).sort_values("timestamp_seconds")
    newest = rows.drop_duplicates([*_POD, "metric"], keep="last")
    pods = newest.pivot(index=_POD, columns="metric", values="value").rename(columns=RECORDED_COLUMNS)
    pods = pods.reindex(columns=list(RECORDED_COLUMNS.values())).astype(np.float64)
    pods.columns.name = None
    pods["window_end_seconds"] = newest.groupby(_POD)["timestamp_seconds"].max()
    placed = newest.dropna(subset=["node"]) if "node" in newest.columns else newest.iloc[0:0]
    pods["node"] = placed.groupby(_POD)["node"].last().reindex(pods.index) if not placed.empty else None
    pods = pods.reset_index()

    gpu, cpu = pods["gpu_power_watts"], pods["cpu_power_watts"]
    rate = pods["generation_tokens_per_second"]
    pods["power_watts"] = gpu.add(cpu, fill_value=0.0)
    pods["watts_per_token"] = pods["power_watts"] / rate.where(rate > 0)
    pods["gpu_energy_joules"] = gpu * window_seconds
    pods["energy_joules"] = pods["power_watts"] * window_seconds
    pods["generation_tokens"] = rate * window_seconds
    pods["prompt_tokens"] = pods["prompt_tokens_per_second"] * window_seconds
    pods["window_start_seconds"] = pods["window_end_seconds"] - window_seconds
    pods["token_window_start_seconds"] = pods["window_start_seconds"]
    pods["token_window_end_seconds"] = pods["window_end_seconds"]
    with_cpu = np.where(gpu.notna(), METHOD + "+kepler_cpu", "kepler_cpu")
    pods["method"] = np.where(cpu.notna(), with_cpu, np.where(gpu.notna(), METHOD, "none"))
    return pods

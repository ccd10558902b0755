"""Pod figures from series that recording rules already computed (the `prometheus_api` collector).

The rules did the per-sample work (counter increases); what is left is arithmetic on each pod's newest
recorded averages. A pod's GPU power is its recorded `pod_gpu_power_watts` where one was recorded; else
the recorded power of the GPUs it holds (`gpu_holder_power_watts`, one series per GPU and holding pod),
split as rule 3 of `estimators.fleet` splits a GPU read from the exporters
(`estimators.attribution.split_gpu_power`, by the pods' recorded token rates). Power is GPU plus CPU,
watts per token is power over the token rate, energies and tokens are the averages times the window. A
pod's window ends at the rule evaluation that recorded its newest figure, so the store ages it from
there. Kepler CPU power is taken as recorded (no scaling to a measured node power, which the rules do
not see).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from estimators.attribution import GPU_KEYS, POD_KEYS, split_gpu_power

RECORDED_COLUMNS = {
    "pod_gpu_power_watts": "gpu_power_watts",
    "pod_cpu_power_watts": "cpu_power_watts",
    "pod_generation_tokens_per_second": "generation_tokens_per_second",
    "pod_prompt_tokens_per_second": "prompt_tokens_per_second",
}
HOLDER_POWER = "gpu_holder_power_watts"
RECORDED_METRICS = (*RECORDED_COLUMNS, HOLDER_POWER)
"""Every metric this module reads; a pod is recorded when it has one of RECORDED_COLUMNS."""
METHOD = "recording_rule"


def _newest(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Each `keys` group's newest row."""
    return rows.sort_values("timestamp_seconds", kind="stable").drop_duplicates(keys, keep="last")


def _pod_figures(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per pod: its newest value of each of RECORDED_COLUMNS (renamed), gpu_method where its GPU
    power was recorded, node and window_end_seconds (the newest of their stamps)."""
    newest = _newest(rows, [*POD_KEYS, "metric"])
    pods = newest.pivot(index=POD_KEYS, columns="metric", values="value").rename(columns=RECORDED_COLUMNS)
    pods = pods.reindex(columns=list(RECORDED_COLUMNS.values())).astype(np.float64)
    pods.columns.name = None
    pods["window_end_seconds"] = newest.groupby(POD_KEYS)["timestamp_seconds"].max()
    placed = newest.dropna(subset=["node"]) if "node" in newest.columns else newest.iloc[0:0]
    pods["node"] = placed.groupby(POD_KEYS)["node"].last().reindex(pods.index) if not placed.empty else None
    pods["gpu_method"] = pods["gpu_power_watts"].notna().map({True: METHOD, False: None})
    return pods.reset_index()


def _gpu_shares(holders: pd.DataFrame, pods: pd.DataFrame) -> pd.DataFrame:
    """Per pod of `pods` holding a recorded GPU: node, its shares summed (gpu_share_watts), gpu_method
    and gpu_end_seconds (the newest GPU reading in it)."""
    held = _newest(holders.dropna(subset=[*GPU_KEYS, *POD_KEYS]), [*GPU_KEYS, *POD_KEYS])
    held = held.merge(pods[POD_KEYS], on=POD_KEYS)
    gpus = _newest(held, GPU_KEYS).rename(columns={"value": "power_watts"})
    shares = split_gpu_power(gpus.assign(method=METHOD), held, pods)
    shares = shares.merge(gpus[[*GPU_KEYS, "timestamp_seconds"]], on=GPU_KEYS)
    grouped = shares.groupby(POD_KEYS)
    return pd.DataFrame(
        {
            "gpu_node": grouped["node"].last(),
            "gpu_share_watts": grouped["gpu_share_watts"].sum(),
            "share_method": grouped["method"].last(),
            "gpu_end_seconds": grouped["timestamp_seconds"].max(),
        }
    ).reset_index()


def _with_gpu_shares(pods: pd.DataFrame, holders: pd.DataFrame) -> pd.DataFrame:
    """Pods without a recorded GPU power take their share of the recorded GPUs they hold."""
    if holders.empty:
        return pods
    pods = pods.merge(_gpu_shares(holders, pods), on=POD_KEYS, how="left")
    share = pods["gpu_power_watts"].isna() & pods["gpu_share_watts"].notna()
    pods.loc[share, "gpu_power_watts"] = pods.loc[share, "gpu_share_watts"]
    pods.loc[share, "gpu_method"] = pods.loc[share, "share_method"]
    pods.loc[share, "node"] = pods.loc[share, "gpu_node"]
    latest = pods[["window_end_seconds", "gpu_end_seconds"]].max(axis=1)
    pods["window_end_seconds"] = pods["window_end_seconds"].where(~share, latest)
    return pods.drop(columns=["gpu_node", "gpu_share_watts", "share_method", "gpu_end_seconds"])


def recorded_pods(current: pd.DataFrame, window_seconds: float) -> pd.DataFrame:
    """One row per pod with recorded figures in `current` (the window's samples of RECORDED_METRICS):
    namespace, pod, node, the power, energy and token columns of `estimators.fleet.POD_COLUMNS`, and the
    pod's own window."""
    rows = current.dropna(subset=POD_KEYS)
    rows = rows.assign(metric=rows["metric"].astype(str))
    figures = rows.loc[rows["metric"].isin(list(RECORDED_COLUMNS))]
    if figures.empty:  # the usual pass, without a prometheus_api collector: nothing to copy
        return pd.DataFrame(columns=[*POD_KEYS, "node"])
    pods = _with_gpu_shares(_pod_figures(figures), rows.loc[rows["metric"] == HOLDER_POWER])

    gpu, cpu = pods["gpu_power_watts"].astype(np.float64), pods["cpu_power_watts"]
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
    gpu_method = pods["gpu_method"].where(gpu.notna(), "").astype(str)
    with_cpu = np.where(gpu.notna(), gpu_method + "+kepler_cpu", "kepler_cpu")
    pods["method"] = np.where(cpu.notna(), with_cpu, np.where(gpu.notna(), gpu_method, "none"))
    return pods.drop(columns=["gpu_method"])

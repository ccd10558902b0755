"""Attribute measured GPU and node power to pods, never handing out more than was measured.

NVML and DCGM report per device, Kepler per process but with a model (anchors-power.md: RMSE 11.9 W,
about 15x overestimate in one study). So the device reading is the budget and the pods share it:

GPU power
    Each GPU's power goes to the pods `gpu_assignment_info` puts on it. A GPU with one pod gives it
    everything. A shared GPU (time-slicing, MPS, MIG reported per parent) splits by the pods'
    generation-token rates (`token_share`) when every pod on it has one and they are not all zero,
    else by their utilisation ratios (`utilization_share`) under the same condition, else equally
    (`equal_share`). Weights are normalised per GPU, so the shares sum to the GPU's power exactly.
CPU and DRAM power
    From Kepler's per-pod counters. Where the node's own power is measured, the pods' CPU power is
    scaled down (never up) so that GPU shares plus CPU power fit inside it (`kepler_cpu_scaled`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd

FloatArray = npt.NDArray[np.float64]

GPU_KEYS = ["node", "gpu_uuid"]
POD_KEYS = ["namespace", "pod"]


def split_gpu_power(gpus: pd.DataFrame, assignments: pd.DataFrame, pod_load: pd.DataFrame) -> pd.DataFrame:
    """Each GPU's power split among its pods.

    gpus: node, gpu_uuid, power_watts, method. assignments: node, gpu_uuid, namespace, pod.
    pod_load: namespace, pod and any of generation_tokens_per_second, utilization_ratio.
    Returns node, gpu_uuid, namespace, pod, share_ratio (the pod's fraction of the GPU; they sum to 1
    per GPU), gpu_share_watts, method (the GPU's method, plus
    "/token_share", "/utilization_share" or "/equal_share" for a shared GPU).
    """
    load = pod_load.copy()
    for column in ("generation_tokens_per_second", "utilization_ratio"):
        if column not in load.columns:
            load[column] = np.nan
    shares = assignments[[*GPU_KEYS, *POD_KEYS]].drop_duplicates()
    shares = shares.merge(gpus[[*GPU_KEYS, "power_watts", "method"]], on=GPU_KEYS, how="inner")
    shares = shares.merge(
        load[[*POD_KEYS, "generation_tokens_per_second", "utilization_ratio"]], on=POD_KEYS, how="left"
    )
    if shares.empty:
        return pd.DataFrame(columns=[*GPU_KEYS, *POD_KEYS, "share_ratio", "gpu_share_watts", "method"])
    # One integer per GPU, factorised once: every per-GPU sum groups by it, not by strings.
    by_gpu = shares.groupby(GPU_KEYS, sort=False).ngroup().to_numpy(np.int64).astype(np.int64)
    weight, split = share_weights(
        by_gpu,
        shares["generation_tokens_per_second"].to_numpy(np.float64),
        shares["utilization_ratio"].to_numpy(np.float64),
    )
    shares["share_ratio"] = weight
    shares["gpu_share_watts"] = shares["power_watts"].to_numpy(np.float64) * weight
    shares["method"] = shares["method"].astype(str) + split
    return shares[[*GPU_KEYS, *POD_KEYS, "share_ratio", "gpu_share_watts", "method"]]


def share_weights(
    by_gpu: npt.NDArray[np.int64], tokens_per_second: FloatArray, utilization: FloatArray
) -> tuple[FloatArray, npt.NDArray[np.str_]]:
    """Each share's fraction of its GPU (`by_gpu`: one integer per GPU, one row per pod on it) and
    the split's label ("", "/token_share", "/utilization_share" or "/equal_share")."""
    pods_on_gpu = np.bincount(by_gpu)[by_gpu].astype(np.float64)
    weight = 1.0 / pods_on_gpu
    split = np.where(pods_on_gpu > 1, "/equal_share", "")
    # Utilisation first, then tokens, so tokens win where both are usable.
    for values, label in ((utilization, "/utilization_share"), (tokens_per_second, "/token_share")):
        unknown = np.isnan(values)
        total = np.bincount(by_gpu, np.where(unknown, 0.0, values))[by_gpu]
        complete = np.bincount(by_gpu, unknown)[by_gpu] == 0
        usable = complete & (total > 0) & (pods_on_gpu > 1)
        weight = np.where(usable, values / np.where(total > 0, total, 1.0), weight)
        split = np.where(usable, label, split)
    return weight, split


def cpu_scale(
    node: npt.NDArray[np.int64], gpu_watts: FloatArray, cpu_watts: FloatArray, measured_watts: FloatArray
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Scale pods' CPU power down (never up) where GPU shares plus CPU power would exceed their node's
    measurement. One entry per pod: its node as an integer (-1: unknown), GPU and CPU power (NaN where
    unknown), its node's measured power (NaN: not measured). Returns the CPU power and where it was
    scaled."""
    known = node >= 0
    on, gpu, cpu = node[known], gpu_watts[known], cpu_watts[known]
    gpu_sum = np.full(node.size, np.nan)
    cpu_sum = np.full(node.size, np.nan)
    gpu_sum[known] = np.bincount(on, np.where(np.isnan(gpu), 0.0, gpu))[on]
    cpu_sum[known] = np.bincount(on, np.where(np.isnan(cpu), 0.0, cpu))[on]
    with np.errstate(invalid="ignore", divide="ignore"):
        allowance = np.maximum(measured_watts - gpu_sum, 0.0)
        factor = np.minimum(allowance / np.where(cpu_sum > 0, cpu_sum, np.nan), 1.0)
    scale = ~np.isnan(measured_watts) & ~np.isnan(cpu_watts) & (factor < 1.0)
    return np.where(scale, cpu_watts * factor, cpu_watts), scale

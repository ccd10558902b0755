"""Request traces: per-tick arrivals for every GPU (one replica per GPU), drawn once per run from a seed.

The base mix is code-completion-like (long prompts, short answers; the Azure LLM inference 2023 code trace
has ~2k context and a few dozen generated tokens), the kind of load where prefill drives rack peaks
(POLCA: prompt length, not output length, sets peak power). Scenarios, anchors-power.md 9.3:

- ``diurnal``: a 3:1 peak/trough sinusoid over the run, peak in the middle.
- ``flash-crowd``: 70 % of peak load, then twice that for 5 minutes.
- ``long-prompt-storm``: 70 % of peak load, and for 2 minutes every prompt is 8k tokens.
- ``sync-prefill``: 70 % of peak load, and every 60 s every replica receives a large batch of 4k-token
  prompts in the same 100 ms (a coherent prefill the rack sees as one step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

TRACES: tuple[str, ...] = ("diurnal", "flash-crowd", "long-prompt-storm", "sync-prefill")

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadConfig:
    peak_requests_per_second_per_gpu: float = 9.5
    prompt_tokens_mean: float = 2048.0
    output_tokens_mean: float = 64.0
    prompt_shape: float = 2.0
    """Gamma shape of one prompt's length (2: coefficient of variation ~0.7)."""
    steady_load_ratio: float = 0.7
    event_start_ratio: float = 1 / 3
    """Events start at this fraction of the run, so a short run still contains them."""
    flash_crowd_seconds: float = 300.0
    storm_seconds: float = 120.0
    storm_prompt_tokens: float = 8192.0
    sync_period_seconds: float = 60.0
    sync_requests_per_gpu: int = 16
    sync_prompt_tokens: float = 4096.0


@dataclass(frozen=True, slots=True)
class Arrivals:
    requests: FloatArray
    """(ticks, gpus): requests arriving in each tick."""
    prompt_tokens: FloatArray
    """(ticks, gpus): prompt tokens those requests bring."""
    output_tokens_mean: float


def generate(
    trace: str,
    *,
    ticks: int,
    tick_seconds: float,
    gpus: int,
    workload: WorkloadConfig,
    rng: np.random.Generator,
) -> Arrivals:
    if trace not in TRACES:
        raise ValueError(f"unknown trace {trace!r}; known: {', '.join(TRACES)}")
    t_seconds = np.arange(ticks) * tick_seconds
    duration_seconds = ticks * tick_seconds
    start_seconds = workload.event_start_ratio * duration_seconds
    load = np.full(ticks, workload.steady_load_ratio)
    prompt_mean = np.full(ticks, workload.prompt_tokens_mean)
    if trace == "diurnal":
        load = (2.0 + np.cos(2 * np.pi * (t_seconds / duration_seconds - 0.5))) / 3.0
    elif trace == "flash-crowd":
        crowd = (t_seconds >= start_seconds) & (t_seconds < start_seconds + workload.flash_crowd_seconds)
        load = np.where(crowd, 2.0 * workload.steady_load_ratio, load)
    elif trace == "long-prompt-storm":
        storm = (t_seconds >= start_seconds) & (t_seconds < start_seconds + workload.storm_seconds)
        prompt_mean = np.where(storm, workload.storm_prompt_tokens, prompt_mean)

    rate = workload.peak_requests_per_second_per_gpu * load * tick_seconds
    requests = rng.poisson(np.broadcast_to(rate[:, None], (ticks, gpus))).astype(np.float64)
    if trace == "sync-prefill":
        period_ticks = max(1, round(workload.sync_period_seconds / tick_seconds))
        # The first burst comes one period in, so no policy meets it before its first reading.
        burst_ticks = np.arange(period_ticks, ticks, period_ticks)
        requests[burst_ticks, :] += workload.sync_requests_per_gpu
    # The sum of n Gamma(k, m/k) prompts is Gamma(n k, m/k): one draw per (tick, GPU), not per request.
    shape = requests * workload.prompt_shape
    mean_per_request = np.broadcast_to(prompt_mean[:, None], (ticks, gpus)).copy()
    if trace == "sync-prefill":
        # Burst requests bring long prompts; background ones the usual mix (weighted mean per tick).
        burst = np.zeros((ticks, gpus))
        burst[burst_ticks, :] = workload.sync_requests_per_gpu
        background = requests - burst
        total = background * workload.prompt_tokens_mean + burst * workload.sync_prompt_tokens
        mean_per_request = np.divide(total, requests, out=mean_per_request, where=requests > 0)
    prompt_tokens = np.zeros((ticks, gpus))
    positive = shape > 0
    prompt_tokens[positive] = rng.gamma(shape[positive], mean_per_request[positive] / workload.prompt_shape)
    return Arrivals(
        requests=requests, prompt_tokens=prompt_tokens, output_tokens_mean=workload.output_tokens_mean
    )

"""The H100 trace played back to back: an hour of serving from three minutes of recording.

The online estimators (`estimators.gauge_model`) learn from history; judging them needs more history
than the trace's ~195 s of served load. Played back, the trace repeats its idle, batch sweep, prefill
and mixed phases, with idle pauses of random length between repeats; every counter keeps counting
across the seams, as a real one would.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from estimators.energy import window_edges
from estimators.gauge_model import Replica, token_intervals
from estimators.sampling import ScrapePlan, scrape_trace, step_value_at, token_counters

SERVED_PHASES = ("idle", "sweep", "prefill", "trace", "cooldown")


def play_back(
    samples: pd.DataFrame,
    steps: pd.DataFrame,
    *,
    repeats: int,
    rng: np.random.Generator | None = None,
    max_pause_seconds: float = 30.0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(samples, steps) of the trace's served phases (`SERVED_PHASES`: no model build or warm-up)
    repeated `repeats` times, with the trace's columns.

    With `rng`, each repeat is followed by a pause of up to `max_pause_seconds` (uniform) in which the
    GPU idles at the trace's last power (`phase` "pause"). Without pauses a scrape every 15 s meets
    the ~195 s loop at nearly the same moments every repeat (195 is 13 x 15), and an hour of scrapes
    sees only a dozen moments of the load - not how a real workload is sampled. Times shift by each
    repeat's length; `energy_j` starts at 0 and keeps rising across repeats and pauses.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    served = samples.loc[samples["phase"].isin(SERVED_PHASES)].sort_values("t")
    times = served["t"].to_numpy(np.float64)
    energy = served["energy_j"].to_numpy(np.float64)
    body = served.assign(t=times - times[0], energy_j=energy - energy[0])
    period = float(np.median(np.diff(times)))
    last = body.iloc[-1]
    # The GPU keeps drawing what it drew last: the mean rate of the body's last second.
    tail = times >= times[-1] - 1.0
    last_watts = float((energy[tail][-1] - energy[tail][0]) / (times[tail][-1] - times[tail][0]))
    kept_steps = steps.loc[(steps["t_start"] >= times[0]) & (steps["t_end"] <= times[-1] + period)]
    kept_steps = kept_steps.assign(
        t_start=kept_steps["t_start"] - times[0], t_end=kept_steps["t_end"] - times[0]
    )
    sample_parts, step_parts = [], []
    start, start_energy = 0.0, 0.0
    for _ in range(repeats):
        pause = 0.0 if rng is None else float(rng.uniform(0.0, max_pause_seconds))
        idle = float(last["t"]) + np.arange(period, period + pause, period)
        paused = pd.DataFrame([last] * idle.size).assign(
            t=idle,
            energy_j=float(last["energy_j"]) + last_watts * (idle - float(last["t"])),
            phase="pause",
            batch=0,
        )
        part = pd.concat([body, paused], ignore_index=True)
        sample_parts.append(part.assign(t=part["t"] + start, energy_j=part["energy_j"] + start_energy))
        step_parts.append(
            kept_steps.assign(t_start=kept_steps["t_start"] + start, t_end=kept_steps["t_end"] + start)
        )
        length = float(last["t"]) + period + pause
        start += length
        start_energy += float(last["energy_j"]) + last_watts * (length - float(last["t"]))
    return (
        pd.concat(sample_parts, ignore_index=True).astype(served.dtypes.to_dict()),
        pd.concat(step_parts, ignore_index=True),
    )


def scrape_gpu(
    samples: pd.DataFrame,
    steps: pd.DataFrame,
    *,
    seed: int,
    gauge_seconds: float = 15.0,
    token_seconds: float = 15.0,
    window_seconds: float = 30.0,
) -> tuple[pd.DataFrame, Replica]:
    """One GPU of a (played-back) trace as a cluster scrapes it, and its `Replica` for
    `estimators.gauge_model`: the GPU exporter (energy counter and power gauge) every `gauge_seconds`
    and the inference server (token counters) every `token_seconds`, at independent random phases,
    +-0.5 s jitter, 5% of scrapes dropped; the server restarts once at a random moment in the middle
    60% (its token counters start again from zero). Windows of `window_seconds` at token scrapes.

    Returns the `timestamp,metric,value` frame (`estimators.sampling.scrape_trace`) and the replica.
    """
    rng = np.random.default_rng(seed)
    end = float(samples["t"].max())
    frame = scrape_trace(
        samples,
        steps,
        energy_plan=ScrapePlan(
            interval_seconds=gauge_seconds,
            offset_seconds=rng.uniform(0.0, gauge_seconds),
            drop_ratio=0.05,
            jitter_seconds=0.5,
        ),
        token_plan=ScrapePlan(
            interval_seconds=token_seconds,
            offset_seconds=rng.uniform(0.0, token_seconds),
            drop_ratio=0.05,
            jitter_seconds=0.5,
        ),
        rng=rng,
        start_seconds=0.0,
        end_seconds=end,
    )
    restart = rng.uniform(0.2 * end, 0.8 * end)
    tokens = token_counters(steps)
    for metric in ("generation_tokens_total", "prompt_tokens_total"):
        lost = step_value_at(tokens["timestamp_seconds"], tokens[metric], [restart])[0]
        after = (frame["metric"] == metric) & (frame["timestamp_seconds"] >= restart)
        frame.loc[after, "value"] -= lost

    def series(metric: str) -> pd.DataFrame:
        return frame.loc[frame["metric"] == metric].sort_values("timestamp_seconds")

    generated, prompted, gauge = (
        series("generation_tokens_total"),
        series("prompt_tokens_total"),
        series("gpu_power_watts"),
    )
    replica = Replica(
        intervals=token_intervals(generated["timestamp_seconds"], generated["value"], prompted["value"]),
        gauge_times=gauge["timestamp_seconds"].to_numpy(np.float64),
        gauge_watts=gauge["value"].to_numpy(np.float64),
        edges_seconds=window_edges(
            generated["timestamp_seconds"], window_seconds=window_seconds, start_seconds=0.0, end_seconds=end
        ),
    )
    return frame, replica

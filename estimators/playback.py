"""The H100 trace played back to back: an hour of serving from three minutes of recording.

The online estimators (`estimators.gauge_model`) learn from history; judging them needs more history
than the trace's ~195 s of served load. Played back, the trace repeats its idle, batch sweep, prefill
and mixed phases; every counter keeps counting across the seams, as a real one would.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SERVED_PHASES = ("idle", "sweep", "prefill", "trace", "cooldown")


def play_back(
    samples: pd.DataFrame, steps: pd.DataFrame, *, repeats: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(samples, steps) of the trace's served phases (`SERVED_PHASES`: no model build or warm-up)
    repeated `repeats` times back to back, with the trace's columns.

    Times shift by the loop's length each repeat; `energy_j` starts at 0 and keeps rising across
    repeats. Steps are those of the served phases, shifted alike.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    served = samples.loc[samples["phase"].isin(SERVED_PHASES)].sort_values("t")
    start = float(served["t"].iloc[0])
    period = float(np.median(np.diff(served["t"].to_numpy(np.float64))))
    length = float(served["t"].iloc[-1]) - start + period
    loop_energy = float(served["energy_j"].iloc[-1] - served["energy_j"].iloc[0])
    # The counter's increase over the seam (one sample period), as the last interval's rate gives it.
    last_rate = float(np.diff(served["energy_j"].to_numpy(np.float64)[-20:]).sum()) / float(
        np.diff(served["t"].to_numpy(np.float64)[-20:]).sum()
    )
    loop_energy += last_rate * period
    kept_steps = steps.loc[(steps["t_start"] >= start) & (steps["t_end"] <= start + length)]
    sample_loops = []
    step_loops = []
    for repeat in range(repeats):
        shift = repeat * length
        sample_loops.append(
            served.assign(
                t=served["t"] - start + shift,
                energy_j=served["energy_j"] - served["energy_j"].iloc[0] + repeat * loop_energy,
            )
        )
        step_loops.append(
            kept_steps.assign(
                t_start=kept_steps["t_start"] - start + shift, t_end=kept_steps["t_end"] - start + shift
            )
        )
    return pd.concat(sample_loops, ignore_index=True), pd.concat(step_loops, ignore_index=True)

"""GPU and server power for the simulator, shaped by the real H100 trace (Llama-3.1-8B shape, 1x H100 SXM).

The decode curve is the trace's 1 s-averaged NVML power while decode steps ran, per batch size; decode
speed is generated tokens over decode-step time; prefill runs at ~34k prompt tokens/s and draws ~690 W
(instant readings during batch >= 32 prefills; the 1 s average smooths that to ~550 W), at the 700 W
limit. These are the numbers `steps.csv` joined with `samples.csv` gives (data/h100-llama8b); absolute
speeds are eager PyTorch's, the curve shapes are the GPU's.

Capped physics (anchors-power.md 9.2): delivered power = min(demand, limit); work runs at
(limit / demand) ** alpha of full speed when the limit binds (alpha = 0.33 from POLCA's "-20 % power,
<= 7 % slower").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

_TRACE_BATCH = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 192.0, 256.0)
_TRACE_DECODE_WATTS = (74.0, 158.0, 158.7, 157.0, 175.1, 169.6, 212.7, 240.9, 256.7, 288.5, 306.9)
_TRACE_DECODE_TOKENS_PER_SECOND = (0.0, 12.1, 26.4, 46.8, 100.9, 163.4, 420.4, 984.7, 1408.4, 2200.7, 2537.7)


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuPowerCurve:
    batch: tuple[float, ...] = _TRACE_BATCH
    decode_power_watts: tuple[float, ...] = _TRACE_DECODE_WATTS
    decode_tokens_per_second: tuple[float, ...] = _TRACE_DECODE_TOKENS_PER_SECOND
    idle_power_watts: float = 74.0
    prefill_power_watts: float = 690.0
    prefill_tokens_per_second: float = 34_000.0
    limit_min_watts: float = 200.0
    limit_max_watts: float = 700.0
    alpha: float = 0.33
    _batch: FloatArray = field(init=False, repr=False)
    _power: FloatArray = field(init=False, repr=False)
    _speed: FloatArray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_batch", np.asarray(self.batch, dtype=np.float64))
        object.__setattr__(self, "_power", np.asarray(self.decode_power_watts, dtype=np.float64))
        object.__setattr__(self, "_speed", np.asarray(self.decode_tokens_per_second, dtype=np.float64))

    @property
    def max_batch(self) -> float:
        return float(self._batch[-1])

    def decode_power(self, batch: FloatArray) -> FloatArray:
        return np.interp(batch, self._batch, self._power)

    def decode_rate(self, batch: FloatArray) -> FloatArray:
        """Generated tokens per second of one replica at this batch size, uncapped."""
        return np.interp(batch, self._batch, self._speed)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerModel:
    """P_server = base + (1 + overhead) x sum(P_gpu): ~2.8 kW idle, ~10.1 kW at 8 x 700 W (DGX H100: 10.2 kW)."""

    gpus: int = 8
    base_watts: float = 2000.0
    overhead_per_gpu_watt: float = 0.45
    rated_watts: float = 10_200.0

    @property
    def rack_watts_per_gpu_watt(self) -> float:
        return 1.0 + self.overhead_per_gpu_watt

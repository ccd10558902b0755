"""GPU and server power for the simulator, from the real H100 trace (Llama-3.1-8B shape, 1x H100 SXM).

The curves come from `estimators.power_curve` (the trace's derived table, energy-counter based): the
decode curve gives power and generated tokens/s per batch size; prefill steps of 32k+ prompt tokens give
prefill power (~680 W, at the 700 W limit) and speed (~34k prompt tokens/s). Absolute speeds are eager
PyTorch's; the curve shapes are the GPU's.

Capped physics (anchors-power.md 9.2): delivered power = min(demand, limit); work runs at
(limit / demand) ** alpha of full speed when the limit binds (alpha = 0.33 from POLCA's "-20 % power,
<= 7 % slower").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

_LARGE_PREFILL_TOKENS = 32_768


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuPowerCurve:
    batch: tuple[float, ...]
    """Batch sizes, starting at 0 (idle)."""
    decode_power_watts: tuple[float, ...]
    decode_tokens_per_second: tuple[float, ...]
    prefill_power_watts: float
    prefill_tokens_per_second: float
    limit_min_watts: float = 200.0
    limit_max_watts: float = 700.0
    alpha: float = 0.33
    _batch: FloatArray = field(init=False, repr=False, compare=False)
    _power: FloatArray = field(init=False, repr=False, compare=False)
    _speed: FloatArray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_batch", np.asarray(self.batch, dtype=np.float64))
        object.__setattr__(self, "_power", np.asarray(self.decode_power_watts, dtype=np.float64))
        object.__setattr__(self, "_speed", np.asarray(self.decode_tokens_per_second, dtype=np.float64))

    @classmethod
    def h100(cls) -> GpuPowerCurve:
        from estimators.power_curve import load_h100_decode_curve, load_h100_prefill_power

        decode = load_h100_decode_curve()
        prefill = load_h100_prefill_power()
        large = prefill[prefill["batch"] * prefill["prompt_tokens"] >= _LARGE_PREFILL_TOKENS]
        return cls(
            batch=tuple(float(b) for b in decode["batch"]),
            decode_power_watts=tuple(float(w) for w in decode["power_watts"]),
            decode_tokens_per_second=tuple(float(r) for r in decode["tokens_per_second"]),
            prefill_power_watts=float(large["power_watts"].mean()),
            prefill_tokens_per_second=float(large["tokens_per_second"].mean()),
        )

    @property
    def idle_power_watts(self) -> float:
        return float(self._power[0])

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

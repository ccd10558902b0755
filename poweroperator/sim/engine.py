"""Discrete-time rack simulation (dt = 100 ms): requests -> GPU power -> rack power -> breaker, with a
policy in the loop that sees delayed, noisy sensors and whose limits take effect after an actuation delay.

Vectorised over GPUs with NumPy; one Python step per tick, so a 30-minute run of 48 GPUs takes about a
second. Every random draw comes from one `numpy.random.Generator` seeded by `SimConfig.seed`.

Model (anchors-power.md section 9; the numbers marked [U] there are assumptions, kept as fields here):
- Each GPU serves one replica: a fluid queue of waiting requests and prompt tokens, and a decode batch.
  Prefill has priority (as vLLM schedules it) and runs while the batch has free slots; the rest of the tick
  decodes. Power is the time-weighted blend of prefill power and the decode curve at the batch size.
- A GPU enforces its limit against its own sensor, which has a fixed gain error of up to +-5 %.
- Controllers read each GPU's 1 s average (with that gain error) and the PDU's 1 s average, which
  reaches them `pdu_delay_seconds` late, with a fixed gain error of up to +-1 %.
- Breaker: inverse-time accumulator on the rating (cap / 0.8): trip when the integral of
  dt / (214 s / ((P / rating)^2 - 1)) reaches 1 (110 % -> ~17 min); it cools with a 10-minute time
  constant. A trip darkens the rack for `trip_outage_seconds`: no power, no tokens, queued work lost.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from poweroperator.policy import PRIORITY_HIGH, PRIORITY_LOW, FloatArray
from poweroperator.sim import policies, traces
from poweroperator.sim.power import GpuPowerCurve, ServerModel


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    policy: str = "ours"
    trace: str = "diurnal"
    oversubscription: float = 1.25
    seed: int = 0
    duration_seconds: float = 1800.0
    tick_seconds: float = 0.1
    control_period_seconds: float = 1.0
    actuation_delay_seconds: float = 1.0
    pdu_delay_seconds: float = 1.0
    servers_at_1x: int = 4
    """The cap is what this many servers are rated for; oversubscription multiplies the server count."""
    high_priority_fraction: float = 0.5
    gpu_gain_error: float = 0.05
    pdu_gain_error: float = 0.01
    breaker_rating_ratio: float = 1.25
    breaker_constant_seconds: float = 214.0
    breaker_cooldown_seconds: float = 600.0
    trip_outage_seconds: float = 300.0
    curve: GpuPowerCurve = field(default_factory=GpuPowerCurve.h100)
    server: ServerModel = field(default_factory=ServerModel)
    workload: traces.WorkloadConfig = field(default_factory=traces.WorkloadConfig)

    @property
    def servers(self) -> int:
        return max(1, round(self.servers_at_1x * self.oversubscription))

    @property
    def cap_watts(self) -> float:
        return self.servers_at_1x * self.server.rated_watts

    def problems(self) -> list[str]:
        found = []
        if self.policy not in policies.POLICIES:
            found.append(f"policy: want one of {', '.join(policies.POLICIES)}, got {self.policy!r}")
        if self.trace not in traces.TRACES:
            found.append(f"trace: want one of {', '.join(traces.TRACES)}, got {self.trace!r}")
        if not self.oversubscription > 0:
            found.append(f"oversubscription: must be > 0, got {self.oversubscription}")
        if not self.duration_seconds >= 10 * self.control_period_seconds:
            found.append("duration_seconds: must cover at least 10 control periods")
        if not 0 < self.tick_seconds <= self.control_period_seconds:
            found.append("tick_seconds: must be > 0 and <= control_period_seconds")
        if self.actuation_delay_seconds < 0 or self.pdu_delay_seconds < 0:
            found.append("actuation_delay_seconds, pdu_delay_seconds: must be >= 0")
        return found


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    policy: str
    trace: str
    oversubscription: float
    seed: int
    duration_seconds: float
    servers: int
    gpus: int
    cap_watts: float
    time_above_cap_percent: float
    worst_overshoot_1s_percent: float
    """max over 1 s windows of (rack power / cap - 1), in percent; negative when never above."""
    longest_excursion_seconds: float
    peak_rack_power_1s_ratio: float
    mean_rack_power_ratio: float
    trips: int
    breaker_margin: float
    """Largest value the trip accumulator reached (1.0 trips)."""
    emergencies: int
    tokens_high: float
    tokens_low: float
    p99_ttft_seconds_high: float
    p99_ttft_seconds_low: float
    p99_tbt_seconds_high: float
    p99_tbt_seconds_low: float
    gpu_joules_per_token: float
    rack_joules_per_token: float
    limit_changes_per_gpu_per_minute: float
    gpu_energy_joules: float
    rack_energy_joules: float
    tokens_high_vs_uncapped: float | None = None
    tokens_low_vs_uncapped: float | None = None
    p99_ttft_high_vs_uncapped: float | None = None
    p99_ttft_low_vs_uncapped: float | None = None

    def versus_uncapped(self, uncapped: RunResult) -> RunResult:
        """The same run with its tokens and p99 TTFT expressed relative to the no-cap run of the same trace
        and seed."""
        return dataclasses.replace(
            self,
            tokens_high_vs_uncapped=_ratio(self.tokens_high, uncapped.tokens_high),
            tokens_low_vs_uncapped=_ratio(self.tokens_low, uncapped.tokens_low),
            p99_ttft_high_vs_uncapped=_ratio(self.p99_ttft_seconds_high, uncapped.p99_ttft_seconds_high),
            p99_ttft_low_vs_uncapped=_ratio(self.p99_ttft_seconds_low, uncapped.p99_ttft_seconds_low),
        )

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def breaker_trip_seconds(load_ratio: float, constant_seconds: float = 214.0) -> float:
    """Seconds a breaker carries `load_ratio` x its rating before it trips (inverse-time, I^2 t)."""
    return math.inf if load_ratio <= 1.0 else constant_seconds / (load_ratio * load_ratio - 1.0)


def _ratio(value: float, reference: float) -> float | None:
    return value / reference if reference > 0 else None


def _weighted_p99(values: npt.NDArray[np.float32], weights: npt.NDArray[np.float32]) -> float:
    mask = weights > 0
    if not bool(mask.any()):
        return float("nan")
    v = values[mask]
    w = weights[mask].astype(np.float64)
    order = np.argsort(v)
    cumulative = np.cumsum(w[order])
    index = int(np.searchsorted(cumulative, 0.99 * cumulative[-1]))
    return float(v[order][min(index, len(v) - 1)])


def _longest_run(mask: npt.NDArray[np.bool_]) -> int:
    if not bool(mask.any()):
        return 0
    padded = np.concatenate(([0], mask.astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[::2]).max())


def rack_spec(config: SimConfig) -> policies.RackSpec:
    gpus_per_server = config.server.gpus
    gpus = config.servers * gpus_per_server
    high_per_server = round(config.high_priority_fraction * gpus_per_server)
    slot = np.arange(gpus) % gpus_per_server
    return policies.RackSpec(
        cap_watts=config.cap_watts,
        servers=config.servers,
        gpus_per_server=gpus_per_server,
        server_base_watts=config.server.base_watts,
        rack_watts_per_gpu_watt=config.server.rack_watts_per_gpu_watt,
        limit_min_watts=np.full(gpus, config.curve.limit_min_watts),
        limit_max_watts=np.full(gpus, config.curve.limit_max_watts),
        priority=np.where(slot < high_per_server, PRIORITY_HIGH, PRIORITY_LOW).astype(np.int64),
    )


def simulate(config: SimConfig, policy: policies.SimPolicy | None = None) -> RunResult:
    problems = config.problems()
    if problems:
        raise ValueError("; ".join(problems))
    rng = np.random.default_rng(config.seed)
    rack = rack_spec(config)
    policy = policy or policies.build(config.policy, rack)
    curve, server, dt = config.curve, config.server, config.tick_seconds
    gpus = rack.priority.size
    ticks = round(config.duration_seconds / dt)
    arrivals = traces.generate(
        config.trace, ticks=ticks, tick_seconds=dt, gpus=gpus, workload=config.workload, rng=rng
    )
    gpu_gain = 1.0 + rng.uniform(-config.gpu_gain_error, config.gpu_gain_error, gpus)
    pdu_gain = 1.0 + rng.uniform(-config.pdu_gain_error, config.pdu_gain_error)

    control_ticks = max(1, round(config.control_period_seconds / dt))
    delay_ticks = round(config.actuation_delay_seconds / dt)
    pdu_delay_ticks = round(config.pdu_delay_seconds / dt)
    window_ticks = max(1, round(1.0 / dt))
    rating_watts = config.breaker_rating_ratio * config.cap_watts
    cooldown = float(np.exp(-dt / config.breaker_cooldown_seconds))
    prompt_mean = config.workload.prompt_tokens_mean
    output_mean = arrivals.output_tokens_mean

    commanded = policy.initial_limits()
    applied = commanded.copy()
    pending: collections.deque[tuple[int, FloatArray]] = collections.deque()
    changes = 0

    wait_requests = np.zeros(gpus)
    wait_tokens = np.zeros(gpus)
    active = np.zeros(gpus)
    admit_rate = np.zeros(gpus)
    tokens = np.zeros(gpus)
    gpu_energy = np.zeros(gpus)
    gpu_window = np.zeros((window_ticks, gpus))
    rack_watts = np.zeros(ticks)
    ttft = np.zeros((ticks, gpus), dtype=np.float32)
    tbt = np.zeros((ticks, gpus), dtype=np.float32)
    tbt_weight = np.zeros((ticks, gpus), dtype=np.float32)
    dark = np.zeros(ticks, dtype=bool)
    server_of_gpu = np.arange(gpus) // config.server.gpus
    accumulator, breaker_margin, trips, dark_until = 0.0, 0.0, 0, -1
    alpha, max_batch = curve.alpha, curve.max_batch
    prefill_watts, prefill_rate = curve.prefill_power_watts, curve.prefill_tokens_per_second

    for t in range(ticks):
        while pending and pending[0][0] <= t:
            applied = pending.popleft()[1]
        if t < dark_until:
            dark[t] = True
            wait_requests[:] = 0.0
            wait_tokens[:] = 0.0
            active[:] = 0.0
            gpu_window[t % window_ticks] = 0.0
        else:
            wait_requests += arrivals.requests[t]
            wait_tokens += arrivals.prompt_tokens[t]
            slots = np.maximum(max_batch - active, 0.0)
            admit = np.minimum(wait_requests, slots)
            admit_tokens = np.divide(
                wait_tokens * admit, wait_requests, out=np.zeros(gpus), where=wait_requests > 0
            )
            prefill_share = np.minimum(1.0, admit_tokens / (prefill_rate * dt))
            demand = prefill_share * prefill_watts + (1.0 - prefill_share) * curve.decode_power(active)
            enforced = applied / gpu_gain
            delivered = np.minimum(demand, enforced)
            speed = np.where(demand > enforced, (enforced / demand) ** alpha, 1.0)
            prefilled = np.minimum(admit_tokens, prefill_rate * speed * prefill_share * dt)
            started = np.divide(admit * prefilled, admit_tokens, out=np.zeros(gpus), where=admit_tokens > 0)
            wait_requests -= started
            wait_tokens = np.maximum(wait_tokens - prefilled, 0.0)
            active += started
            decode_rate = curve.decode_rate(active) * speed * (1.0 - prefill_share)
            generated = decode_rate * dt
            active = np.maximum(active - generated / output_mean, 0.0)
            tokens += generated
            gpu_energy += delivered * dt
            gpu_window[t % window_ticks] = delivered

            admit_rate += 0.1 * (started / dt - admit_rate)
            queue_seconds = np.divide(
                wait_requests,
                admit_rate,
                out=np.full(gpus, float(config.duration_seconds)),
                where=admit_rate > 1e-6,
            )
            queue_seconds = np.where(
                wait_requests < 1e-3, 0.0, np.minimum(queue_seconds, config.duration_seconds)
            )
            arriving = arrivals.requests[t]
            own_prompt = np.divide(
                arrivals.prompt_tokens[t], arriving, out=np.full(gpus, prompt_mean), where=arriving > 0
            )
            ttft[t] = queue_seconds + own_prompt / (prefill_rate * speed)
            tbt[t] = np.divide(active, decode_rate, out=np.zeros(gpus), where=decode_rate > 0)
            tbt_weight[t] = np.where(active >= 1.0, generated, 0.0)
            server_gpu_watts = np.bincount(server_of_gpu, weights=delivered, minlength=config.servers)
            rack_watts[t] = float(
                (server.base_watts + server.rack_watts_per_gpu_watt * server_gpu_watts).sum()
            )

        load = rack_watts[t] / rating_watts
        if load > 1.0:
            accumulator += dt / breaker_trip_seconds(load, config.breaker_constant_seconds)
        else:
            accumulator *= cooldown
        breaker_margin = max(breaker_margin, accumulator)
        if accumulator >= 1.0:
            trips += 1
            accumulator = 0.0
            dark_until = t + 1 + round(config.trip_outage_seconds / dt)

        if (t + 1) % control_ticks == 0:
            end = t + 1 - pdu_delay_ticks
            pdu_watts = (
                float(rack_watts[max(0, end - window_ticks) : end].mean()) if end > 0 else float("nan")
            )
            readings = policies.Readings(
                now_seconds=(t + 1) * dt,
                rack_power_watts=pdu_watts * pdu_gain,
                gpu_power_watts=gpu_window.mean(axis=0) * gpu_gain,
                limits_watts=commanded,
            )
            wanted = np.clip(policy.step(readings), rack.limit_min_watts, rack.limit_max_watts)
            changed = wanted != commanded
            if bool(changed.any()):
                changes += int(changed.sum())
                commanded = wanted.copy()
                pending.append((t + 1 + delay_ticks, commanded))

    window_watts = np.convolve(rack_watts, np.ones(window_ticks) / window_ticks, mode="valid")
    above = rack_watts > config.cap_watts
    high = rack.priority >= PRIORITY_HIGH
    ttft_weight = arrivals.requests.astype(np.float32)
    ttft_weight[dark] = 0.0  # requests that arrive while the rack is dark are lost, not slow
    total_tokens = float(tokens.sum())
    rack_energy = float(rack_watts.sum() * dt)
    return RunResult(
        policy=policy.name,
        trace=config.trace,
        oversubscription=config.oversubscription,
        seed=config.seed,
        duration_seconds=config.duration_seconds,
        servers=config.servers,
        gpus=gpus,
        cap_watts=config.cap_watts,
        time_above_cap_percent=100.0 * float(above.mean()),
        worst_overshoot_1s_percent=100.0 * (float(window_watts.max()) / config.cap_watts - 1.0),
        longest_excursion_seconds=_longest_run(above) * dt,
        peak_rack_power_1s_ratio=float(window_watts.max()) / config.cap_watts,
        mean_rack_power_ratio=float(rack_watts.mean()) / config.cap_watts,
        trips=trips,
        breaker_margin=breaker_margin,
        emergencies=policy.emergencies,
        tokens_high=float(tokens[high].sum()),
        tokens_low=float(tokens[~high].sum()),
        p99_ttft_seconds_high=_weighted_p99(ttft[:, high], ttft_weight[:, high]),
        p99_ttft_seconds_low=_weighted_p99(ttft[:, ~high], ttft_weight[:, ~high]),
        p99_tbt_seconds_high=_weighted_p99(tbt[:, high], tbt_weight[:, high]),
        p99_tbt_seconds_low=_weighted_p99(tbt[:, ~high], tbt_weight[:, ~high]),
        gpu_joules_per_token=float(gpu_energy.sum()) / total_tokens if total_tokens > 0 else float("nan"),
        rack_joules_per_token=rack_energy / total_tokens if total_tokens > 0 else float("nan"),
        limit_changes_per_gpu_per_minute=changes / gpus / (config.duration_seconds / 60.0),
        gpu_energy_joules=float(gpu_energy.sum()),
        rack_energy_joules=rack_energy,
    )

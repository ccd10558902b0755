"""The node agent's HTTP server (`wattscale agent`, one per GPU node as a DaemonSet).

    GET  /v1/gpus                       every local GPU: power (1 s average and instant), energy,
                                        limit and its constraints, clocks, utilisation, holding pods
    GET  /metrics                       the same as Prometheus text, names prefixed `wattscale_agent_`
    PUT  /v1/gpus/{uuid}/power-limit    {"watts": W} -> clamped to the GPU's constraints; needs
                                        `Authorization: Bearer <control token>`; changes nothing
                                        unless the agent runs with --allow-power-limit-changes
    GET  /healthz                       200 once the first NVML read is done

NVML is read in a background task every `interval_seconds` (in a thread: NVML calls block), so a
request never waits on the driver; GPU -> pod mapping comes from the kubelet's pod-resources socket.
Errors are Kubernetes `Status` objects, as the rest of wattscale answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from collectors.base import CollectorError
from collectors.nvml import GpuReading, NvmlReader, reason_of
from collectors.pod_resources import gpu_pods, list_pod_devices

log = logging.getLogger("wattscale.agent")


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSettings:
    node: str
    interval_seconds: float = 5.0
    pod_resources_socket: str | None = None
    """None: no pod mapping (e.g. outside Kubernetes)."""
    control_token_file: str | None = None
    """Read at each request; while it is unset, missing or empty, every power-limit request is refused
    (the DaemonSet mounts an optional Secret there)."""
    allow_power_limit_changes: bool = False

    def problems(self) -> list[str]:
        found = []
        if not self.node:
            found.append("node: must not be empty")
        if not self.interval_seconds > 0:
            found.append("interval_seconds: must be > 0")
        if self.allow_power_limit_changes and self.control_token_file is None:
            found.append("allow_power_limit_changes: needs control_token_file")
        return found


@dataclass
class AgentState:
    readings: list[GpuReading] = field(default_factory=list)
    pods: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    read_at_seconds: float | None = None
    read_error: str | None = None
    pod_mapping_error: str | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)


SETTINGS = web.AppKey("settings", AgentSettings)
READER = web.AppKey("reader", NvmlReader)
STATE = web.AppKey("state", AgentState)


def status_response(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)


async def refresh(app: web.Application) -> None:
    """One read of NVML and of the kubelet; failures keep the previous snapshot and are reported."""
    settings, reader, state = app[SETTINGS], app[READER], app[STATE]
    try:
        state.readings = await asyncio.to_thread(reader.read_all)
        state.read_at_seconds = time.time()
        if state.read_error is not None:
            log.info("agent.nvml_recovered", extra={"event": "agent.nvml_recovered"})
        state.read_error = None
    except CollectorError as exc:
        if state.read_error is None:
            log.error("agent.nvml_failing", extra={"event": "agent.nvml_failing", "error": str(exc)})
        state.read_error = str(exc)
    if settings.pod_resources_socket is not None:
        try:
            devices = await list_pod_devices(settings.pod_resources_socket)
            state.pods = gpu_pods(devices, [(r.uuid, r.index, r.mig_uuids) for r in state.readings])
            state.pod_mapping_error = None
        except CollectorError as exc:
            if state.pod_mapping_error is None:
                log.warning(
                    "agent.pod_mapping_failing",
                    extra={"event": "agent.pod_mapping_failing", "error": str(exc)},
                )
            state.pod_mapping_error = str(exc)
    state.ready.set()


async def _refresh_loop(app: web.Application) -> AsyncIterator[None]:
    async def loop() -> None:
        while True:
            try:
                await refresh(app)
            except Exception:  # our bug: log it and keep serving the last snapshot
                log.exception("agent.refresh_failed", extra={"event": "agent.refresh_failed"})
            await asyncio.sleep(app[SETTINGS].interval_seconds)

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.to_thread(app[READER].stop)


def gpu_document(reading: GpuReading, pods: Iterable[tuple[str, str]]) -> dict[str, Any]:
    return {
        "uuid": reading.uuid,
        "index": reading.index,
        "name": reading.name,
        "lost": reading.lost,
        "power_watts": reading.power_watts,
        "power_average_watts": reading.power_average_watts,
        "power_instant_watts": reading.power_instant_watts,
        "energy_joules_total": reading.energy_joules_total,
        "power_limit_watts": reading.power_limit_watts,
        "enforced_power_limit_watts": reading.enforced_power_limit_watts,
        "power_limit_min_watts": reading.power_limit_min_watts,
        "power_limit_max_watts": reading.power_limit_max_watts,
        "default_power_limit_watts": reading.default_power_limit_watts,
        "utilization_ratio": reading.utilization_ratio,
        "memory_utilization_ratio": reading.memory_utilization_ratio,
        "sm_clock_hertz": reading.sm_clock_hertz,
        "memory_clock_hertz": reading.memory_clock_hertz,
        "timestamp_seconds": reading.timestamp_seconds,
        "pods": [{"namespace": namespace, "pod": pod} for namespace, pod in pods],
        "errors": dict(reading.errors),
    }


FIRST_READ_WAIT_SECONDS = 10.0


async def _first_read(app: web.Application) -> None:
    """Right after start-up, wait (briefly) for the first NVML read instead of answering empty."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(FIRST_READ_WAIT_SECONDS):
            await app[STATE].ready.wait()


async def get_gpus(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await _first_read(request.app)
    if not state.ready.is_set():
        return status_response(503, "ServiceUnavailable", "the first NVML read has not finished")
    if state.read_error is not None and not state.readings:
        return status_response(503, "ServiceUnavailable", state.read_error)
    body = {
        "node": request.app[SETTINGS].node,
        "read_at_seconds": state.read_at_seconds,
        "read_error": state.read_error,
        "pod_mapping_error": state.pod_mapping_error,
        "gpus": [gpu_document(r, state.pods.get(r.uuid, [])) for r in state.readings],
    }
    return web.json_response(body)


async def healthz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if not state.ready.is_set() or (state.read_error is not None and not state.readings):
        return web.Response(status=503, text=state.read_error or "starting")
    return web.Response(text="ok")


def _authorised(request: web.Request) -> bool:
    token_file = request.app[SETTINGS].control_token_file
    if token_file is None:
        return False
    try:
        expected = Path(token_file).read_text().strip()
    except OSError:
        return False
    given = request.headers.get("Authorization", "")
    return bool(expected) and hmac.compare_digest(given.encode(), f"Bearer {expected}".encode())


async def put_power_limit(request: web.Request) -> web.Response:
    if not _authorised(request):
        return status_response(403, "Forbidden", "power-limit changes need the agent's control token")
    try:
        body = await request.json()
        watts = float(body["watts"])
    except (ValueError, KeyError, TypeError):
        return status_response(400, "BadRequest", 'want a JSON body {"watts": <number>}')
    if not math.isfinite(watts) or watts <= 0:
        return status_response(400, "BadRequest", f"watts must be a positive number, got {watts}")
    uuid = request.match_info["uuid"]
    apply = request.app[SETTINGS].allow_power_limit_changes
    reader = request.app[READER]
    try:
        change = await asyncio.to_thread(reader.set_power_limit, uuid, watts, apply=apply)
    except KeyError:
        return status_response(404, "NotFound", f"no GPU {uuid} on node {request.app[SETTINGS].node}")
    except CollectorError as exc:
        return status_response(503, "ServiceUnavailable", str(exc))
    except Exception as exc:
        reason = reason_of(exc)
        if reason == "no_permission":
            return status_response(403, "Forbidden", "the driver refused: setting power limits needs root")
        log.exception(
            "agent.power_limit_failed", extra={"event": "agent.power_limit_failed", "gpu_uuid": uuid}
        )
        return status_response(500, "InternalError", f"NVML: {reason}")
    log.info(
        "agent.power_limit",
        extra={"event": "agent.power_limit", **{k: v for k, v in asdict(change).items()}},
    )
    return web.json_response(asdict(change))  # collectors.node_agent.change_from_json reads it back


class AgentMetrics:
    """Prometheus view of the agent's snapshot, built fresh at every scrape."""

    _GAUGES: Mapping[str, str] = {
        "power_watts": "GPU power from nvmlDeviceGetPowerUsage (1 s average on Ampere and newer).",
        "power_average_watts": "GPU power averaged over 1 s (NVML field 185).",
        "power_instant_watts": "Instantaneous GPU power (NVML field 186).",
        "power_limit_watts": "Software power limit.",
        "enforced_power_limit_watts": "Effective power limit after every limiter.",
        "power_limit_min_watts": "Lowest power limit the GPU accepts.",
        "power_limit_max_watts": "Highest power limit the GPU accepts.",
        "default_power_limit_watts": "Power limit at boot.",
        "utilization_ratio": "Fraction of time a kernel ran.",
        "memory_utilization_ratio": "Fraction of time memory was read or written.",
        "sm_clock_hertz": "SM clock.",
        "memory_clock_hertz": "Memory clock.",
    }

    def __init__(self, app: web.Application) -> None:
        self._app = app

    def collect(self) -> Iterable[Metric]:
        state, node = self._app[STATE], self._app[SETTINGS].node
        labels = ["node", "gpu_uuid", "gpu_index", "gpu_name"]
        readings = [r for r in state.readings if not r.lost]
        for key, doc in self._GAUGES.items():
            family = GaugeMetricFamily(f"wattscale_agent_gpu_{key}", doc, labels=labels)
            for r in readings:
                value = getattr(r, key)
                if value is not None:
                    family.add_metric([node, r.uuid, str(r.index), r.name], value)
            yield family
        energy = CounterMetricFamily(
            "wattscale_agent_gpu_energy_joules", "GPU energy since the driver loaded.", labels=labels
        )
        for r in readings:
            if r.energy_joules_total is not None:
                energy.add_metric([node, r.uuid, str(r.index), r.name], r.energy_joules_total)
        yield energy
        assignment = GaugeMetricFamily(
            "wattscale_agent_gpu_assignment_info",
            "1 for each pod holding the GPU (from the kubelet's pod-resources API).",
            labels=["node", "gpu_uuid", "namespace", "pod"],
        )
        for uuid, pods in state.pods.items():
            for namespace, pod in pods:
                assignment.add_metric([node, uuid, namespace, pod], 1.0)
        yield assignment
        lost = GaugeMetricFamily(
            "wattscale_agent_gpu_lost", "1 when NVML reports the GPU lost.", labels=labels[:2]
        )
        errors = GaugeMetricFamily(
            "wattscale_agent_gpu_read_errors",
            "1 per GPU field NVML could not read, by reason (not_supported, no_permission, ...).",
            labels=["node", "gpu_uuid", "field", "reason"],
        )
        for r in state.readings:
            lost.add_metric([node, r.uuid], 1.0 if r.lost else 0.0)
            for key, reason in r.errors.items():
                errors.add_metric([node, r.uuid, key, reason], 1.0)
        yield lost
        yield errors
        read_at = GaugeMetricFamily(
            "wattscale_agent_last_read_timestamp_seconds", "Time of the last NVML read."
        )
        if state.read_at_seconds is not None:
            read_at.add_metric([], state.read_at_seconds)
        yield read_at


def create_agent_app(settings: AgentSettings, reader: NvmlReader) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app[READER] = reader
    app[STATE] = AgentState()
    registry = CollectorRegistry(auto_describe=True)
    registry.register(AgentMetrics(app))
    app.cleanup_ctx.append(_refresh_loop)
    app.router.add_get("/v1/gpus", get_gpus)
    app.router.add_put("/v1/gpus/{uuid}/power-limit", put_power_limit)
    app.router.add_get("/healthz", healthz)
    export = make_aiohttp_handler(registry)

    async def metrics(request: web.Request) -> web.StreamResponse:
        await _first_read(request.app)
        return await export(request)

    app.router.add_get("/metrics", metrics)
    return app

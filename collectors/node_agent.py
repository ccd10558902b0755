"""The adapter's side of the node agents: reads every agent's `/v1/gpus` (or its `/metrics`) and
returns per-GPU samples plus `gpu_assignment_info` per pod holding a GPU.

Agents are listed (`agent_urls`) or found through a headless Service (`agent_service`,
"name.namespace.svc:port", resolved to every address at each poll). An agent that does not answer
is left out of that poll (logged once) unless none answers. The energy counter is reset-proofed per
GPU, since a driver reload restarts it.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, Self

import aiohttp
from prometheus_client import CollectorRegistry

from collectors.base import CollectorError, Sample
from collectors.nvml import GpuReading, PowerLimitChange, reading_samples
from collectors.prometheus_text import parse_exposition
from collectors.support import (
    HttpPolledCollector,
    MonotonicSums,
    PollSettings,
    TransientCollectorError,
    build_settings,
    mapped_http_errors,
    read_bounded,
)

_URL = re.compile(r"^https?://[^/\s]+$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.-]+:\d+$")
_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
_NUMBER_FIELDS = {f.name for f in fields(GpuReading)} - {
    "uuid",
    "index",
    "name",
    "mig_uuids",
    "lost",
    "errors",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeAgentSettings(PollSettings):
    agent_urls: tuple[str, ...] = ()
    agent_service: str | None = None
    source: Literal["gpus", "metrics"] = "gpus"
    interval_seconds: float = 5.0

    def problems(self) -> list[str]:
        found = PollSettings.problems(self)
        if bool(self.agent_urls) == (self.agent_service is not None):
            found.append("agent_urls, agent_service: set exactly one of them")
        for i, url in enumerate(self.agent_urls):
            if not _URL.match(url.rstrip("/")):
                found.append(f"agent_urls[{i}]: want http(s)://host:port, got {url!r}")
        if self.agent_service is not None and not _HOST_PORT.match(self.agent_service):
            found.append(f"agent_service: want name:port, got {self.agent_service!r}")
        return found


@dataclass(frozen=True, slots=True)
class AgentAnswer:
    node: str
    readings: list[GpuReading]
    pods: dict[str, list[tuple[str, str]]]


def answer_from_gpus_json(document: Any) -> AgentAnswer:
    """Parse `/v1/gpus`; raises `CollectorError` when it is not shaped as the agent API says."""
    try:
        node = str(document["node"])
        readings, pods = [], {}
        for gpu in document["gpus"]:
            reading = GpuReading(
                uuid=str(gpu["uuid"]), index=int(gpu["index"]), name=str(gpu.get("name", ""))
            )
            for key in _NUMBER_FIELDS:
                value = gpu.get(key)
                if value is not None:
                    setattr(reading, key, float(value))
            reading.lost = bool(gpu.get("lost", False))
            reading.errors = {str(k): str(v) for k, v in (gpu.get("errors") or {}).items()}
            readings.append(reading)
            pods[reading.uuid] = [(str(p["namespace"]), str(p["pod"])) for p in gpu.get("pods", [])]
    except (KeyError, TypeError, ValueError) as exc:
        raise CollectorError(f"malformed /v1/gpus answer: {type(exc).__name__}: {exc}") from exc
    return AgentAnswer(node, readings, pods)


def change_from_json(document: Any) -> PowerLimitChange:
    """Parse the answer to `PUT /v1/gpus/{uuid}/power-limit`; raises `CollectorError` when malformed."""
    try:
        return PowerLimitChange(
            uuid=str(document["uuid"]),
            previous_watts=float(document["previous_watts"]),
            applied_watts=float(document["applied_watts"]),
            clamped=bool(document.get("clamped", False)),
            dry_run=bool(document.get("dry_run", False)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CollectorError(f"malformed power-limit answer: {type(exc).__name__}: {exc}") from exc


def answer_from_metrics(text: str) -> AgentAnswer:
    prefix = "wattscale_agent_gpu_"
    readings: dict[str, GpuReading] = {}
    pods: dict[str, list[tuple[str, str]]] = {}
    node = ""
    for series in parse_exposition(text, lambda name: name.startswith(prefix)):
        labels = series.labels
        uuid = labels.get("gpu_uuid", "")
        node = labels.get("node", node)
        key = series.name.removeprefix(prefix)
        if key == "assignment_info":
            pods.setdefault(uuid, []).append((labels.get("namespace", ""), labels.get("pod", "")))
            continue
        if key not in _NUMBER_FIELDS or "gpu_index" not in labels:
            continue
        reading = readings.setdefault(
            uuid, GpuReading(uuid=uuid, index=int(labels["gpu_index"]), name=labels.get("gpu_name", ""))
        )
        setattr(reading, key, series.value)
    return AgentAnswer(node, list(readings.values()), pods)


def _status_message(body: bytes) -> str:
    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", errors="replace")


class NodeAgentCollector(HttpPolledCollector):
    settings: NodeAgentSettings

    def __init__(
        self,
        name: str,
        settings: NodeAgentSettings,
        *,
        session: aiohttp.ClientSession | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name, settings, session=session, registry=registry, clock=clock)
        self._energy = MonotonicSums()

    @classmethod
    def from_settings(cls, name: str, raw: Mapping[str, object]) -> Self:
        return cls(name, build_settings(NodeAgentSettings, name, raw))

    async def _agent_urls(self) -> list[str]:
        if self.settings.agent_urls:
            return [url.rstrip("/") for url in self.settings.agent_urls]
        assert self.settings.agent_service is not None
        host, port = self.settings.agent_service.rsplit(":", 1)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except OSError as exc:
            raise TransientCollectorError(f"{self.name}: cannot resolve {host}: {exc}") from exc
        addresses = sorted({str(info[4][0]) for info in infos})
        return [f"http://[{a}]:{port}" if ":" in a else f"http://{a}:{port}" for a in addresses]

    async def _read_agent(self, url: str) -> AgentAnswer:
        path = "/v1/gpus" if self.settings.source == "gpus" else "/metrics"
        what = url + path
        with mapped_http_errors(what):
            async with self._get_session().get(what) as response:
                body = await read_bounded(response, _MAX_RESPONSE_BYTES, what)
                if response.status == 503:
                    # The agent is up but has no readings (no driver, first read pending): its Status says why.
                    raise TransientCollectorError(f"{what}: HTTP 503: {_status_message(body)}")
                response.raise_for_status()
        if self.settings.source == "metrics":
            return answer_from_metrics(body.decode("utf-8", errors="replace"))
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise CollectorError(f"{url}/v1/gpus: answer is not JSON") from exc
        try:
            return answer_from_gpus_json(document)
        except CollectorError as exc:
            raise CollectorError(f"{url}: {exc}") from exc

    async def _poll(self) -> list[Sample]:
        urls = await self._agent_urls()
        if not urls:
            raise TransientCollectorError(f"{self.name}: no agents found")
        answers = await self._from_each(urls, lambda url: url, self._read_agent)
        energy = self._energy.update(
            ((a.node, r.uuid), (a.node, r.uuid), r.energy_joules_total)
            for a in answers
            for r in a.readings
            if r.energy_joules_total is not None and not r.lost
        )
        samples: list[Sample] = []
        for answer in answers:
            for reading in answer.readings:
                if reading.lost:
                    continue
                if not reading.timestamp_seconds:
                    reading.timestamp_seconds = self._clock()  # /metrics carries no read time
                samples.extend(reading_samples(answer.node, reading, energy.get((answer.node, reading.uuid))))
                for namespace, pod in answer.pods.get(reading.uuid, []):
                    samples.append(
                        Sample(
                            metric="gpu_assignment_info",
                            value=1.0,
                            timestamp_seconds=reading.timestamp_seconds,
                            labels={
                                "node": answer.node,
                                "gpu_uuid": reading.uuid,
                                "namespace": namespace,
                                "pod": pod,
                            },
                        )
                    )
        return samples

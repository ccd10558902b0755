"""Client of the node agent's HTTP API (`wattscale agent`): read GPUs, set one GPU's power limit.

The agent applies a limit with NVML within the device's constraints, refuses a PUT without the control
token, and changes nothing unless it was started with --allow-power-limit-changes (it answers with
dry_run true). The capper trusts the agent's answer, not its own request, for what was applied.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp


class AgentError(Exception):
    """An agent could not be reached or answered something other than the contract."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuReading:
    node: str
    uuid: str
    index: int
    power_watts: float
    """The 1 s average where the agent has it, else the plain reading; NaN when the read failed."""
    limit_watts: float
    limit_min_watts: float
    limit_max_watts: float
    pods: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitChange:
    uuid: str
    previous_watts: float
    applied_watts: float
    clamped: bool
    dry_run: bool


def _float(raw: Mapping[str, Any], key: str) -> float:
    value = raw.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


def parse_gpus(body: Mapping[str, Any]) -> list[GpuReading]:
    node = str(body.get("node") or "")
    readings = []
    for gpu in body.get("gpus") or []:
        power = _float(gpu, "power_average_watts")
        if math.isnan(power):
            power = _float(gpu, "power_watts")
        limit = _float(gpu, "power_limit_watts")
        low, high = _float(gpu, "power_limit_min_watts"), _float(gpu, "power_limit_max_watts")
        if math.isnan(limit) or math.isnan(low) or math.isnan(high) or not low <= high:
            # Without the device's range the capper cannot keep a limit inside it: leave this GPU alone.
            continue
        pods = tuple((str(p.get("namespace", "")), str(p.get("pod", ""))) for p in gpu.get("pods") or [])
        readings.append(
            GpuReading(
                node=node,
                uuid=str(gpu["uuid"]),
                index=int(gpu.get("index", 0)),
                power_watts=power,
                limit_watts=limit,
                limit_min_watts=low,
                limit_max_watts=high,
                pods=pods,
            )
        )
    return readings


class AgentClient:
    def __init__(
        self, session: aiohttp.ClientSession, *, token: str | None, timeout_seconds: float = 2.0
    ) -> None:
        self._session = session
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)

    async def gpus(self, base_url: str) -> list[GpuReading]:
        url = f"{base_url.rstrip('/')}/v1/gpus"
        try:
            async with self._session.get(url, timeout=self._timeout) as response:
                if response.status != 200:
                    raise AgentError(f"GET {url}: HTTP {response.status}")
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise AgentError(f"GET {url}: {type(exc).__name__}: {exc}") from exc
        try:
            return parse_gpus(body)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise AgentError(f"GET {url}: unexpected body: {exc}") from exc

    async def set_power_limit(self, base_url: str, uuid: str, watts: float) -> LimitChange:
        url = f"{base_url.rstrip('/')}/v1/gpus/{uuid}/power-limit"
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        try:
            async with self._session.put(
                url, json={"watts": round(watts, 1)}, headers=headers, timeout=self._timeout
            ) as response:
                if response.status != 200:
                    detail = (await response.text())[:200]
                    raise AgentError(f"PUT {url}: HTTP {response.status}: {detail}")
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise AgentError(f"PUT {url}: {type(exc).__name__}: {exc}") from exc
        try:
            return LimitChange(
                uuid=str(body["uuid"]),
                previous_watts=float(body["previous_watts"]),
                applied_watts=float(body["applied_watts"]),
                clamped=bool(body.get("clamped", False)),
                dry_run=bool(body.get("dry_run", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AgentError(f"PUT {url}: unexpected body: {exc}") from exc

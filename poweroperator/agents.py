"""Client of the node agent's HTTP API (`wattscale agent`): read GPUs, set one GPU's power limit.

The agent's answers are parsed by the agent's own client code (`collectors.node_agent`), the one reader
of that contract; this module adds the operator's view of a GPU (what the policy needs) and the calls.
The agent applies a limit with NVML within the device's constraints, refuses a PUT without the control
token, and changes nothing unless it was started with --allow-power-limit-changes (it answers with
dry_run true). The operator trusts the agent's answer, not its own request, for what was applied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from collectors.base import CollectorError
from collectors.node_agent import AgentAnswer, answer_from_gpus_json, change_from_json
from collectors.nvml import GpuReading, PowerLimitChange


class AgentError(Exception):
    """An agent could not be reached or answered something other than the contract."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuState:
    """One GPU as the capping policy sees it."""

    node: str
    uuid: str
    index: int
    power_watts: float
    """The 1 s average where the agent has it, else the plain reading; NaN when the read failed."""
    limit_watts: float
    limit_min_watts: float
    limit_max_watts: float
    pods: tuple[tuple[str, str], ...]


def _known(value: float | None) -> float:
    return math.nan if value is None else value


def _state(node: str, gpu: GpuReading, pods: Sequence[tuple[str, str]]) -> GpuState | None:
    limit, low, high = (
        _known(gpu.power_limit_watts),
        _known(gpu.power_limit_min_watts),
        _known(gpu.power_limit_max_watts),
    )
    if math.isnan(limit) or math.isnan(low) or math.isnan(high) or not low <= high:
        # Without the device's range the operator cannot keep a limit inside it: leave this GPU alone.
        return None
    power = gpu.power_average_watts if gpu.power_average_watts is not None else gpu.power_watts
    return GpuState(
        node=node,
        uuid=gpu.uuid,
        index=gpu.index,
        power_watts=_known(power),
        limit_watts=limit,
        limit_min_watts=low,
        limit_max_watts=high,
        pods=tuple(pods),
    )


def gpu_states(answer: AgentAnswer) -> list[GpuState]:
    states = (_state(answer.node, gpu, answer.pods.get(gpu.uuid, [])) for gpu in answer.readings)
    return [state for state in states if state is not None]


class AgentClient:
    def __init__(
        self, session: aiohttp.ClientSession, *, token: str | None, timeout_seconds: float = 2.0
    ) -> None:
        self._session = session
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)

    async def gpus(self, base_url: str) -> list[GpuState]:
        url = f"{base_url.rstrip('/')}/v1/gpus"
        try:
            async with self._session.get(url, timeout=self._timeout) as response:
                if response.status != 200:
                    raise AgentError(f"GET {url}: HTTP {response.status}")
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise AgentError(f"GET {url}: {type(exc).__name__}: {exc}") from exc
        try:
            return gpu_states(answer_from_gpus_json(body))
        except CollectorError as exc:
            raise AgentError(f"GET {url}: {exc}") from exc

    async def set_power_limit(self, base_url: str, uuid: str, watts: float) -> PowerLimitChange:
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
            return change_from_json(body)
        except CollectorError as exc:
            raise AgentError(f"PUT {url}: {exc}") from exc

"""Keep internal tasks running: restart what stops, with backoff, and tell liveness what cannot stay up.

Every long-lived task of the adapter (the worker process, each collector's poll loop, the estimator
loop, each object-cache watch, the front-proxy CA watch) runs under a `Supervisor`. When one ends for
any reason other than shutdown (an exception, a return, a cancellation from elsewhere, its process
killed) the supervisor logs one line, counts it (`on_restart`, which feeds
`wattscale_internal_restarts_total{component}`), waits with exponential backoff and starts it again.
A component that keeps dying without ever running healthily for `healthy_after_seconds` is reported
by `problems()`, which `/livez` answers with, so the kubelet restarts the pod rather than leave a
crash loop serving ever older values.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Backoff:
    initial_seconds: float = 0.5
    max_seconds: float = 30.0
    healthy_after_seconds: float = 60.0
    """A run this long resets the backoff and the count of consecutive failures."""
    unhealthy_after_failures: int = 5
    """This many consecutive short-lived runs make the component a liveness problem."""

    def delay(self, consecutive_failures: int) -> float:
        return float(min(self.initial_seconds * 2.0 ** max(consecutive_failures - 1, 0), self.max_seconds))


@dataclass(slots=True)
class _Component:
    run: Callable[[], Awaitable[None]]
    loop_task: asyncio.Task[None] | None = None
    attempt: asyncio.Task[None] | None = None
    attempt_started: float = 0.0
    consecutive_failures: int = 0


def _why(attempt: asyncio.Task[None]) -> tuple[str, BaseException | None]:
    if attempt.cancelled():
        return "cancelled", None
    error = attempt.exception()
    if error is None:
        return "returned", None
    return f"{type(error).__name__}: {error}", error


class Supervisor:
    def __init__(
        self, on_restart: Callable[[str], None] = lambda component: None, backoff: Backoff = Backoff()
    ) -> None:
        self._on_restart = on_restart
        self._backoff = backoff
        self._components: dict[str, _Component] = {}
        self._stopping = False

    def start(self, component: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run `run()` under supervision from now until `stop()`; `component` names it in logs and metrics."""
        if component in self._components:
            raise ValueError(f"{component} is already supervised")
        state = self._components[component] = _Component(run)
        state.loop_task = asyncio.create_task(self._keep(component, state), name=f"supervise:{component}")

    def attempt(self, component: str) -> asyncio.Task[None] | None:
        """The task now running `component` (None while it waits to restart)."""
        return self._components[component].attempt

    async def _keep(self, component: str, state: _Component) -> None:
        loop = asyncio.get_running_loop()
        while True:
            state.attempt_started = loop.time()
            state.attempt = asyncio.create_task(_call(state.run), name=component)
            try:
                await asyncio.wait({state.attempt})
            except asyncio.CancelledError:  # stop(): end the attempt with the supervisor
                state.attempt.cancel()
                with contextlib.suppress(BaseException):
                    await state.attempt
                raise
            ran_seconds = loop.time() - state.attempt_started
            why, error = _why(state.attempt)
            state.attempt = None
            if ran_seconds >= self._backoff.healthy_after_seconds:
                state.consecutive_failures = 0
            state.consecutive_failures += 1
            delay = self._backoff.delay(state.consecutive_failures)
            log.error(
                "supervisor.restarting",
                extra={
                    "component": component,
                    "reason": why,
                    "ran_seconds": round(ran_seconds, 3),
                    "restart_in_seconds": delay,
                    "consecutive_failures": state.consecutive_failures,
                },
                exc_info=error,
            )
            self._on_restart(component)
            await asyncio.sleep(delay)

    def problems(self) -> list[str]:
        """Components that are not being kept alive: what `/livez` reports."""
        if self._stopping:
            return []
        found = []
        now = asyncio.get_running_loop().time()
        for component, state in self._components.items():
            if state.loop_task is not None and state.loop_task.done():
                found.append(f"{component}: supervision ended")
            elif (
                state.consecutive_failures >= self._backoff.unhealthy_after_failures
                and now - state.attempt_started < self._backoff.healthy_after_seconds
            ):
                found.append(f"{component}: failed {state.consecutive_failures} times in a row")
        return found

    async def stop(self) -> None:
        self._stopping = True
        tasks = [state.loop_task for state in self._components.values() if state.loop_task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _call(run: Callable[[], Awaitable[None]]) -> None:
    await run()

"""Internal tasks that stop are restarted with backoff, counted, and reported to /livez if they keep dying."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest

from adapter.supervise import Backoff, Supervisor

FAST = Backoff(initial_seconds=0.01, max_seconds=0.05, healthy_after_seconds=60.0, unhealthy_after_failures=3)
DEADLINE_SECONDS = 30.0


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.01)


async def test_a_task_that_raises_is_restarted_counted_and_logged_once_per_restart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    restarts: list[str] = []
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError("boom")
        await asyncio.Event().wait()

    supervisor = Supervisor(on_restart=restarts.append, backoff=FAST)
    with caplog.at_level(logging.ERROR, logger="adapter.supervise"):
        supervisor.start("flaky", flaky)
        await until(lambda: len(runs) == 3, "the third run")
    assert restarts == ["flaky", "flaky"]
    lines = [r for r in caplog.records if r.getMessage() == "supervisor.restarting"]
    assert [(r.component, r.reason) for r in lines] == [("flaky", "RuntimeError: boom")] * 2  # type: ignore[attr-defined]
    assert supervisor.problems() == []
    await supervisor.stop()


async def test_a_task_cancelled_from_elsewhere_is_restarted() -> None:
    restarts: list[str] = []
    started = asyncio.Queue[int]()

    async def quiet() -> None:
        started.put_nowait(1)
        await asyncio.Event().wait()

    supervisor = Supervisor(on_restart=restarts.append, backoff=FAST)
    supervisor.start("watch", quiet)
    await started.get()
    attempt = supervisor.attempt("watch")
    assert attempt is not None
    attempt.cancel()
    await asyncio.wait_for(started.get(), DEADLINE_SECONDS)
    assert restarts == ["watch"]
    await supervisor.stop()


async def test_a_task_that_keeps_dying_is_a_liveness_problem() -> None:
    async def broken() -> None:
        raise OSError("socket gone")

    supervisor = Supervisor(backoff=FAST)
    supervisor.start("cache:pods", broken)
    await until(lambda: bool(supervisor.problems()), "the third failure in a row")
    assert supervisor.problems() == ["cache:pods: failed 3 times in a row"]
    await supervisor.stop()
    assert supervisor.problems() == []  # shutting down is not dying


async def test_the_backoff_doubles_up_to_its_maximum() -> None:
    backoff = Backoff(initial_seconds=0.5, max_seconds=30.0)
    assert [backoff.delay(n) for n in (1, 2, 3, 7, 8)] == [0.5, 1.0, 2.0, 30.0, 30.0]

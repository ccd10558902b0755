"""Child processes with their logs kept, and polling with a deadline instead of sleeps."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_POLL_INTERVAL_SECONDS = 0.25


class WaitTimeoutError(AssertionError):
    """A condition did not come true before its deadline; the message says what was awaited and last seen."""


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout_seconds: float,
    description: str,
    on_timeout: Callable[[], str] = lambda: "",
) -> T:
    """Call `probe` until it returns something other than None (or False) and return that.

    An exception from `probe` counts as "not yet" and is reported if the deadline passes, so a probe may simply
    try the request it waits for.
    """
    deadline = time.monotonic() + timeout_seconds
    last_seen = "nothing"
    while True:
        try:
            result = probe()
        except Exception as exc:
            last_seen = f"{type(exc).__name__}: {exc}"
        else:
            if result is not None and result is not False:
                return result
            last_seen = repr(result)
        if time.monotonic() > deadline:
            extra = on_timeout()
            raise WaitTimeoutError(
                f"timed out after {timeout_seconds:.0f}s waiting for {description}; last seen: {last_seen}"
                + (f"\n{extra}" if extra else "")
            )
        time.sleep(_POLL_INTERVAL_SECONDS)


REPO_ROOT = Path(__file__).resolve().parents[3]
WATTSCALE_CLI = (sys.executable, "-m", "adapter.cli")
"""The CLI of the package under test, run by the interpreter running the tests: whichever `wattscale` is
first on PATH (a stale install elsewhere, say) is not necessarily that package."""


def free_port() -> int:
    """A loopback port nobody listens on now (another process could still take it before we bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ManagedProcess:
    """A long-running child whose stdout+stderr go to a log file that outlives it."""

    def __init__(
        self, name: str, argv: Sequence[str], log_path: Path, *, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._env = {**os.environ, **(env or {})}
        self._log = log_path.open("ab")
        self._process = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self._env,
            cwd=REPO_ROOT,  # so `-m adapter.cli` imports the checkout under test first
            start_new_session=True,
        )

    def restart(self) -> None:
        """Start the same command again (after `stop`, for fault tests), logging on to the same file."""
        if self._process.poll() is None:
            raise AssertionError(f"{self.name} is still running")
        if self._log.closed:
            self._log = self.log_path.open("ab")
        self._process = self._spawn()

    @property
    def pid(self) -> int:
        return self._process.pid

    def exit_code(self) -> int | None:
        return self._process.poll()

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"({self.log_path}: {exc})"
        body = "\n".join(text.splitlines()[-lines:])
        return f"--- last {lines} lines of {self.name} ({self.log_path}) ---\n{body}"

    def check_running(self) -> None:
        """Fail with the log tail if the process has exited."""
        code = self._process.poll()
        if code is not None:
            raise AssertionError(f"{self.name} exited with status {code}\n{self.tail()}")

    def stop(self, timeout_seconds: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after the timeout; only this process's own session is signalled."""
        if self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout_seconds)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout_seconds)
        self._log.close()

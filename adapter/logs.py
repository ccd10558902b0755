"""One JSON line per event: a stable event name as the message, the facts as fields."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
        }
        entry.update({key: value for key, value in record.__dict__.items() if key not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class RateLimitedLog:
    """One event's log lines, at most `per_second` a second on average (bursts of `burst`). Lines over
    the limit are dropped and counted; the next line written says how many (`suppressed`)."""

    def __init__(
        self,
        logger: logging.Logger,
        event: str,
        *,
        per_second: float = 10.0,
        burst: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._event = event
        self._per_second = per_second
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self._suppressed = 0

    def _allowed(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._per_second)
        self._last = now
        if self._tokens < 1.0:
            self._suppressed += 1
            return False
        self._tokens -= 1.0
        return True

    def log(self, level: int, **fields: object) -> None:
        if not self._allowed():
            return
        if self._suppressed:
            fields["suppressed"] = self._suppressed
            self._suppressed = 0
        self._logger.log(level, self._event, extra=fields)

    def info(self, **fields: object) -> None:
        self.log(logging.INFO, **fields)

    def warning(self, **fields: object) -> None:
        self.log(logging.WARNING, **fields)

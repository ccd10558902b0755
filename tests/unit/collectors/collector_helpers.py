"""Plain helpers for collector unit tests (fixtures live in conftest.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry

from collectors.prometheus_text import ExporterCollector
from collectors.support import build_settings

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
C = TypeVar("C", bound=ExporterCollector)


class TextEndpoint:
    """What a `/metrics` handler answers; a test rewrites `text` or `status` between polls."""

    def __init__(self, text: str = "") -> None:
        self.text = text
        self.status = 200
        self.requests = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(text=self.text, status=self.status, content_type="text/plain")


ServeText = Callable[[str], Awaitable[tuple[TextEndpoint, str]]]


def fixture_text(relative: str) -> str:
    return (FIXTURES / relative).read_text()


def make(cls: type[C], registry: CollectorRegistry, **raw: object) -> C:
    """A collector built as `from_settings` builds it, with its self-metrics in `registry`."""
    settings = build_settings(cls.settings_cls, cls.__name__, {"backoff_seconds": 0.0, **raw})
    return cls(cls.__name__, settings, registry=registry)

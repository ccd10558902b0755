from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from collector_helpers import ServeText, TextEndpoint
from prometheus_client import CollectorRegistry


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def serve_text(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> ServeText:
    """Start a server answering `/metrics` with the given text; returns (endpoint, url)."""

    async def start(text: str) -> tuple[TextEndpoint, str]:
        endpoint = TextEndpoint(text)
        app = web.Application()
        app.router.add_get("/metrics", endpoint.handle)
        server = await aiohttp_server(app)
        return endpoint, str(server.make_url("/metrics"))

    return start

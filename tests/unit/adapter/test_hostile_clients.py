"""Hostile and broken clients over raw TLS sockets: slow, silent, oversized, malformed.

The server is the real one (`GuardedAppRunner` over the API app, TLS from `adapter.tls`) with the
generic apiserver's limits, except the timeouts, shortened so a test waits well under a second.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from api_fixtures import example_app

from adapter.connections import ConnectionLimits, GuardedAppRunner
from adapter.tls import ServingTls, generate_self_signed

LIMITS = ConnectionLimits(read_header_timeout_seconds=0.5, idle_timeout_seconds=1.0, max_connections=16)
DEADLINE_SECONDS = 10.0
"""How long a test waits for what must happen in about a second; never reached when all is well."""
PODS = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/inference/pods/*/gpu_power_watts"


@dataclass
class Server:
    port: int
    runner: web.AppRunner
    client_context: ssl.SSLContext

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port, ssl=self.client_context)

    async def exchange(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send `raw` on a new connection and read until the server closes it."""
        reader, writer = await self.connect()
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(DEADLINE_SECONDS):
            answer = await reader.read(-1)
        writer.close()
        return _parse(answer)


def _parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def _request(path: str = "/apis", *, method: str = "GET", headers: tuple[str, ...] = ()) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: wattscale", *headers, "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


def _status(body: bytes) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(body)
    assert document["kind"] == "Status" and document["apiVersion"] == "v1", document
    return document


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    cert, key = generate_self_signed(tmp_path, ["127.0.0.1"])
    tls = ServingTls(cert, key, request_client_certificates=False)
    runner = GuardedAppRunner(example_app(), LIMITS)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.listening_context)
    await site.start()
    client_context = ssl.create_default_context(cafile=str(cert))
    client_context.check_hostname = False
    yield Server(runner.addresses[0][1], runner, client_context)
    await runner.cleanup()


async def _closed_by_server(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(DEADLINE_SECONDS):
        return await reader.read(-1)


async def test_a_client_that_sends_nothing_after_the_handshake_is_closed(server: Server) -> None:
    reader, writer = await server.connect()
    assert await _closed_by_server(reader) == b""  # closed without an answer, as Go does
    writer.close()


async def test_half_a_request_line_is_closed_even_if_it_keeps_trickling(server: Server) -> None:
    reader, writer = await server.connect()
    writer.write(b"GET /apis/custom")
    closed = asyncio.ensure_future(_closed_by_server(reader))
    with pytest.raises(ConnectionError):
        # A byte at a time, faster than any idle timeout: only a header deadline ends this.
        while not closed.done():
            writer.write(b"x")
            await writer.drain()
            await asyncio.wait({closed}, timeout=0.05)
            if closed.done():
                raise ConnectionError("closed by the server")
    assert closed.result() == b""
    writer.close()


async def test_an_idle_keep_alive_connection_is_closed(server: Server) -> None:
    reader, writer = await server.connect()
    writer.write(b"GET /livez HTTP/1.1\r\nHost: wattscale\r\n\r\n")
    answer = await _closed_by_server(reader)  # answered, then closed once idle
    assert answer.startswith(b"HTTP/1.1 200")
    writer.close()


async def test_headers_up_to_one_megabyte_are_accepted(server: Server) -> None:
    big = "X-Big: " + "a" * 900_000
    many = tuple(f"X-H{n}: {n}" for n in range(1000))  # Go has no count limit; aiohttp's default was 128
    code, _, body = await server.exchange(_request(PODS, headers=(big, *many)))
    assert code == 200, body[:300]
    # A request line over 8,190 bytes: a selector of 1,000 requirements.
    long_path = PODS + "?labelSelector=app%3Dllm," + ",".join(f"label{n}!%3Dx" for n in range(1000))
    code, _, body = await server.exchange(_request(long_path))
    assert code == 200, body[:300]


async def test_headers_over_one_megabyte_get_a_431_status(server: Server) -> None:
    code, headers, body = await server.exchange(_request(headers=("X-Big: " + "a" * 1_100_000,)))
    assert code == 431 and headers["content-type"].startswith("application/json")
    assert _status(body)["code"] == 431
    spread = tuple(f"X-H{n}: " + "b" * 2000 for n in range(600))  # 1.2 MB in fields under the line limit
    code, _, body = await server.exchange(_request(headers=spread))
    assert code == 431 and _status(body)["code"] == 431
    too_many = tuple(f"X-H{n}: 1" for n in range(LIMITS.max_headers + 10))
    code, _, body = await server.exchange(_request(headers=too_many))
    assert code == 431 and _status(body)["reason"] == "RequestHeaderFieldsTooLarge"


async def test_an_unknown_expect_gets_a_417_status(server: Server) -> None:
    for path in ("/apis", "/no/such/path"):
        code, _, body = await server.exchange(_request(path, headers=("Expect: teapot",)))
        assert code == 417, body
        assert _status(body)["reason"] == "ExpectationFailed"


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /apis HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /apis HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n",
        b"GET /apis HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"\x16\x03\x01\x00\x05hello\r\n\r\n",
        b"GET /apis HTTP/2.0\r\nHost: x\r\n\r\n",  # aiohttp answered "HTTP/2.0 200" to this
    ],
)
async def test_malformed_requests_get_a_400_status_and_one_log_line(
    server: Server, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        code, headers, body = await server.exchange(raw)
    assert code == 400 and headers["content-type"].startswith("application/json")
    assert _status(body)["code"] == 400
    refused = [record for record in caplog.records if record.getMessage() == "api.request_failed"]
    assert len(refused) == 1 and getattr(refused[0], "code", None) == 400
    assert not [record for record in caplog.records if record.exc_info], "a client error logged a traceback"


async def test_a_failing_head_is_answered_without_a_body(server: Server) -> None:
    for path in (PODS, "/no/such/path", "/apis"):
        code, _, body = await server.exchange(_request(path, method="HEAD"))
        assert code in (404, 405), (path, code)
        assert body == b"", (path, body)
    # Refused by the parser, before aiohttp knows the method: still no body.
    code, _, body = await server.exchange(_request("/apis", method="HEAD", headers=("Bad Name: 1",)))
    assert (code, body) == (400, b"")


async def test_connections_over_the_limit_are_closed_at_once(server: Server) -> None:
    held = [await server.connect() for _ in range(LIMITS.max_connections + 8)]
    assert len(server.runner.server.connections) <= LIMITS.max_connections  # type: ignore[union-attr]
    for _, writer in held:
        writer.close()

"""The query client against a stand-in HTTP API (the real server is in tests/integration)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from collectors.base import CollectorError
from collectors.prometheus_api import PrometheusClient, parse_query_answer
from collectors.support import TransientCollectorError


def _answer(result: object, result_type: str = "vector") -> bytes:
    return json.dumps({"status": "success", "data": {"resultType": result_type, "result": result}}).encode()


def test_vector_elements_become_series() -> None:
    body = _answer(
        [
            {"metric": {"__name__": "up", "job": "vllm"}, "value": [1700000000.5, "1"]},
            {"metric": {"__name__": "gone"}, "value": [1700000000.5, "NaN"]},
        ]
    )
    (series,) = parse_query_answer(body, "q")
    assert (series.name, dict(series.labels), series.value, series.timestamp_seconds) == (
        "up",
        {"job": "vllm"},
        1.0,
        1700000000.5,
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>", "not JSON"),
        (_answer([], "matrix"), "want an instant vector, got 'matrix'"),
        (_answer([{"metric": {}, "value": [1]}]), "malformed vector element"),
    ],
)
def test_malformed_answers(body: bytes, message: str) -> None:
    with pytest.raises(CollectorError, match=message):
        parse_query_answer(body, "q")


async def test_prometheus_error_json_is_reported(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    async def handler(request: web.Request) -> web.Response:
        if request.query["query"] == "busy":
            return web.json_response({"status": "error", "errorType": "timeout", "error": "slow"}, status=503)
        return web.json_response(
            {"status": "error", "errorType": "bad_data", "error": "parse error"}, status=400
        )

    app = web.Application()
    app.router.add_get("/api/v1/query", handler)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        client = PrometheusClient(session, str(server.make_url("")))
        with pytest.raises(CollectorError, match="bad_data: parse error") as caught:
            await client.query("sum(")
        assert not isinstance(caught.value, TransientCollectorError)
        with pytest.raises(TransientCollectorError, match="timeout: slow"):
            await client.query("busy")

"""The front-proxy CA watch survives dropped connections, and /livez tells when a watch has died.

`FakeConfigMapApi` (a unit-test fake of kube-apiserver's ConfigMap list and watch) drops every
watch: once in the middle of a chunk (aiohttp raises `ClientPayloadError`), once before answering
(`ServerDisconnectedError`). Neither is an `OSError`; each time the next CA must still be followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding
from kubernetes_asyncio import client
from pki import make_ca

from adapter.auth import AuthenticationConfig
from adapter.kube_auth import AUTH_WATCH_TASK, Backoff, ExtensionAuthentication
from adapter.selfmetrics import SelfMetrics

CONFIGMAP_PATH = "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication"
LIST_PATH = "/api/v1/namespaces/kube-system/configmaps"


@dataclass
class FakeConfigMapApi:
    """Serves a new front-proxy CA on every read; kills every watch connection it is sent."""

    cas: list[str] = field(
        default_factory=lambda: [make_ca(f"front-proxy-ca-{n}").cert_pem for n in range(3)]
    )
    reads: int = 0
    watches: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(CONFIGMAP_PATH, self.read)
        app.router.add_get(LIST_PATH, self.watch)
        return app

    def _configmap(self) -> dict[str, Any]:
        ca = self.cas[min(self.reads, len(self.cas) - 1)]
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "extension-apiserver-authentication",
                "resourceVersion": str(self.reads + 1),
            },
            "data": {
                "requestheader-client-ca-file": ca,
                "requestheader-allowed-names": '["front-proxy-client"]',
            },
        }

    async def read(self, request: web.Request) -> web.Response:
        configmap = self._configmap()
        self.reads += 1
        return web.json_response(configmap)

    async def watch(self, request: web.Request) -> web.StreamResponse:
        assert request.query.get("watch", "").lower() == "true"
        self.watches += 1
        transport = request.transport
        assert transport is not None
        if self.watches % 2 == 0:
            transport.close()  # before any answer: ServerDisconnectedError
            return web.Response()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        event = json.dumps({"type": "MODIFIED", "object": self._configmap()})
        await response.write(event[: len(event) // 2].encode())
        transport.close()  # half an event, then the connection is gone: ClientPayloadError
        return response


@pytest.fixture
async def kube_api(aiohttp_server: Any) -> AsyncIterator[tuple[FakeConfigMapApi, client.ApiClient]]:
    fake = FakeConfigMapApi()
    server = await aiohttp_server(fake.app())
    configuration = client.Configuration(host=str(server.make_url("")).rstrip("/"))
    async with client.ApiClient(configuration) as api:
        yield fake, api


async def test_watch_follows_the_ca_after_its_connection_is_killed(
    kube_api: tuple[FakeConfigMapApi, client.ApiClient],
) -> None:
    fake, api = kube_api
    seen: list[AuthenticationConfig] = []
    third_ca = asyncio.Event()

    def on_change(config: AuthenticationConfig) -> None:
        seen.append(config)
        if len(seen) == 3:
            third_ca.set()

    metrics = SelfMetrics()
    extension = ExtensionAuthentication(
        api, on_change, self_metrics=metrics, retry=Backoff(initial_seconds=0.01, max_seconds=0.05)
    )
    follow = asyncio.create_task(extension.follow(await extension.load()))
    try:
        await asyncio.wait_for(third_ca.wait(), timeout=30)
        assert not follow.done()
    finally:
        follow.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follow
    loaded = [config.requestheader_cas[0].public_bytes(Encoding.PEM).decode() for config in seen]
    assert loaded == fake.cas
    assert fake.watches >= 2  # both ways of dying were met: mid-chunk, then before an answer
    restarts = metrics.registry.get_sample_value(
        "wattscale_internal_restarts_total", {"component": AUTH_WATCH_TASK}
    )
    assert restarts is not None and restarts >= 2

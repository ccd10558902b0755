"""An optional CRD that disappears takes its objects' cached answers with it.

`FakeInferenceServiceApi` (a unit-test fake of kube-apiserver serving KServe's InferenceService list and
watch) is deleted mid-watch the way a CRD deletion ends its watches: the stream closes, the next list
answers 404. The object cache and the provider above it are the real ones.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from api_fixtures import NOW, SAMPLE_TIME
from kubernetes_asyncio import client

from adapter.catalogue import INFERENCE_SERVICES
from adapter.errors import MetricNotFoundError
from adapter.kube_cache import KubeObjectCache, default_sources
from adapter.provider import StoreProvider
from adapter.query import parse_custom, split_segments
from adapter.store import MetricStore, ObjectRef, StoredValue
from adapter.supervise import Supervisor

LIST_PATH = "/apis/serving.kserve.io/v1beta1/inferenceservices"
QUERY = "namespaces/llm/inferenceservices.serving.kserve.io/*/watts_per_token"


@dataclass
class FakeInferenceServiceApi:
    installed: bool = True
    removed: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(LIST_PATH, self.list_or_watch)
        return app

    async def list_or_watch(self, request: web.Request) -> web.StreamResponse:
        if not self.installed:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
        if request.query.get("watch", "").lower() != "true":
            item = {"metadata": {"name": "chat", "namespace": "llm", "resourceVersion": "1"}, "spec": {}}
            return web.json_response({"metadata": {"resourceVersion": "1"}, "items": [item]})
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(json.dumps({"type": "BOOKMARK", "object": {"metadata": {}}}).encode() + b"\n")
        await self.removed.wait()  # the CRD is deleted: its watches end, later lists answer 404
        return response

    def remove(self) -> None:
        self.installed = False
        self.removed.set()


@pytest.fixture
async def object_cache(aiohttp_server: Any) -> AsyncIterator[tuple[FakeInferenceServiceApi, KubeObjectCache]]:
    fake = FakeInferenceServiceApi()
    server = await aiohttp_server(fake.app())
    configuration = client.Configuration(host=str(server.make_url("")).rstrip("/"))
    sources = [source for source in default_sources() if source.resource == INFERENCE_SERVICES]
    async with client.ApiClient(configuration) as api:
        cache = KubeObjectCache(api, sources)
        supervisor = Supervisor()
        cache.start(supervisor)
        try:
            yield fake, cache
        finally:
            await supervisor.stop()


async def _until(condition: Any, description: str) -> None:
    # A condition with a deadline: the object cache has no event to wait on.
    async with asyncio.timeout(20):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert condition(), description


async def test_answers_about_a_removed_crds_objects_are_not_served_from_cache(
    object_cache: tuple[FakeInferenceServiceApi, KubeObjectCache],
) -> None:
    fake, cache = object_cache
    store = MetricStore(max_age_seconds=120.0, clock=lambda: NOW)
    store.put_all(
        {
            (ObjectRef(INFERENCE_SERVICES, "llm", "chat"), "watts_per_token"): StoredValue(
                0.5, SAMPLE_TIME, 60.0
            )
        }
    )
    provider = StoreProvider(store, cache, clock=lambda: NOW)
    query = parse_custom("v1beta2", split_segments(QUERY), {})
    await _until(lambda: cache.objects(INFERENCE_SERVICES, "llm"), "the InferenceService is listed")
    assert len(provider.custom_items(query)) == 1

    fake.remove()
    await _until(lambda: not cache.objects(INFERENCE_SERVICES, "llm"), "the removed CRD's objects are gone")
    with pytest.raises(MetricNotFoundError):
        provider.custom_items(query)

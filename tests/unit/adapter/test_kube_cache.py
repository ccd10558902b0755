"""The object cache: lists read as plain JSON, watches kept alive by the supervisor, and only what
changed travels to the server's mirror."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio import client

from adapter.catalogue import PODS
from adapter.kube_cache import KubeObjectCache, MirrorIndex, ResourceSource
from adapter.supervise import Backoff, Supervisor


class FakeListEndpoint:
    """Answers lists with `pods`; a watch stays open and quiet, as a real one does between changes."""

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, str]] = {}
        self.lists = 0

    async def __call__(self, **kwargs: Any) -> Any:
        if kwargs.get("watch"):
            await asyncio.Event().wait()
        self.lists += 1
        items = [
            {"metadata": {"namespace": "llm", "name": name, "labels": labels}, "spec": {"nodeName": "n1"}}
            for name, labels in self.pods.items()
        ]
        return {"items": items, "metadata": {"resourceVersion": str(self.lists)}}


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30.0
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.01)


def names(index: MirrorIndex) -> dict[str, dict[str, str]]:
    return {obj.name: dict(obj.labels) for obj in index.objects(PODS, "llm")}


async def test_a_killed_watch_is_restarted_and_its_relist_reaches_the_mirror_as_a_delta() -> None:
    endpoint = FakeListEndpoint()
    endpoint.pods = {"a": {"app": "x"}, "b": {"app": "x"}}
    restarts: list[str] = []
    supervisor = Supervisor(on_restart=restarts.append, backoff=Backoff(initial_seconds=0.01))
    async with client.ApiClient() as api:
        cache = KubeObjectCache(api, [ResourceSource(PODS, lambda _: endpoint)])
        cache.start(supervisor)
        try:
            await until(cache.synced, "the first list")
            mirror = MirrorIndex()
            first = cache.take_delta()
            assert first is not None and first.full
            mirror.apply(first)
            assert mirror.synced() and names(mirror) == {"a": {"app": "x"}, "b": {"app": "x"}}
            assert cache.take_delta() is None  # nothing changed: nothing to send

            endpoint.pods = {"a": {"app": "x"}, "b": {"app": "y"}, "c": {"app": "x"}}
            attempt = supervisor.attempt("cache:pods")
            assert attempt is not None
            attempt.cancel()
            await until(lambda: endpoint.lists == 2, "the restarted watch's relist")
            assert restarts == ["cache:pods"]
            delta = cache.take_delta()
            assert delta is not None and not delta.full
            assert sorted(obj.name for obj in delta.upserts) == ["b", "c"]  # a is unchanged
            mirror.apply(delta)
            assert names(mirror) == endpoint.pods

            del endpoint.pods["a"]
            attempt = supervisor.attempt("cache:pods")
            assert attempt is not None
            attempt.cancel()
            await until(lambda: endpoint.lists == 3, "the next relist")
            delta = cache.take_delta()
            assert delta is not None and delta.deletes == ((PODS, "llm", "a"),)
            mirror.apply(delta)
            assert names(mirror) == endpoint.pods
        finally:
            await supervisor.stop()


class FakeUndecodedResponse:
    """What the client returns for `_preload_content=False`: status and body, nothing raised."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self._body = body

    async def read(self) -> bytes:
        return self._body

    def release(self) -> None:
        return None


async def test_an_api_that_is_not_installed_counts_as_synced_and_empty() -> None:
    async def absent_crd(**kwargs: Any) -> Any:
        return FakeUndecodedResponse(404, b"404 page not found")

    supervisor = Supervisor()
    async with client.ApiClient() as api:
        cache = KubeObjectCache(
            api, [ResourceSource("inferenceservices.serving.kserve.io", lambda _: absent_crd, True)]
        )
        cache.start(supervisor)
        try:
            await until(cache.synced, "the absent API to count as synced")
            assert cache.objects("inferenceservices.serving.kserve.io", None) == []
        finally:
            await supervisor.stop()

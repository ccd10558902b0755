"""The object cache as a pod directory for target discovery: running pods' IPs and named ports,
read from the same plain-JSON lists and watches, kept in the worker and out of the index's deltas.

`FakePodApi` is a unit-test fake of kube-apiserver's pod list and watch; the cache and the client
are the real ones.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio import client

from adapter.catalogue import PODS
from adapter.kube_cache import KubeObjectCache, default_sources, to_kube_object, to_pod_endpoint
from adapter.supervise import Supervisor
from collectors.base import PodEndpoint

LIST_PATH = "/api/v1/pods"


def pod_json(
    name: str,
    *,
    phase: str = "Running",
    ip: str | None = "10.1.2.3",
    ports: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A pod as kube-apiserver returns it (the parts the cache reads, plus some it must ignore)."""
    status: dict[str, Any] = {"phase": phase, "conditions": [{"type": "Ready", "status": "False"}]}
    if ip is not None:
        status |= {"podIP": ip, "podIPs": [{"ip": ip}]}
    return {
        "metadata": {
            "namespace": "llm",
            "name": name,
            "labels": {"app": "llama"},
            "annotations": annotations or {},
            "resourceVersion": "1",
        },
        "spec": {
            "nodeName": "node-1",
            "containers": [
                {"name": "server", "image": "vllm", "ports": ports if ports is not None else []},
                {"name": "sidecar", "image": "proxy", "ports": [{"name": "proxy", "containerPort": 15001}]},
            ],
        },
        "status": status,
    }


def test_a_running_pod_becomes_an_endpoint_with_its_named_ports_and_scrape_annotations() -> None:
    raw = pod_json(
        "llama-0",
        ports=[
            {"name": "metrics", "containerPort": 8000, "protocol": "TCP"},
            {"containerPort": 9999},  # unnamed: nothing can refer to it by name
        ],
        annotations={
            "prometheus.io/port": "8000",
            "prometheus.io/path": "/stats",
            "kubectl.kubernetes.io/last-applied-configuration": "{" + "x" * 10_000 + "}",
        },
    )
    endpoint = to_pod_endpoint(raw, to_kube_object(PODS, raw))
    assert endpoint == PodEndpoint(
        namespace="llm",
        name="llama-0",
        ip="10.1.2.3",
        node="node-1",
        labels={"app": "llama"},
        annotations={"prometheus.io/port": "8000", "prometheus.io/path": "/stats"},
        ports={"metrics": 8000, "proxy": 15001},
    )


@pytest.mark.parametrize(
    ("phase", "ip"),
    [("Pending", None), ("Running", None), ("Succeeded", "10.1.2.3"), ("Failed", "10.1.2.3")],
)
def test_a_pod_that_is_not_running_with_an_ip_is_no_endpoint(phase: str, ip: str | None) -> None:
    raw = pod_json("llama-0", phase=phase, ip=ip, ports=[{"name": "metrics", "containerPort": 8000}])
    assert to_pod_endpoint(raw, to_kube_object(PODS, raw)) is None


@dataclass
class FakePodApi:
    """Lists `pods`; a watch streams what `send` is given, one JSON event per line."""

    pods: list[dict[str, Any]]
    events: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(LIST_PATH, self.list_or_watch)
        return app

    async def list_or_watch(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch", "").lower() != "true":
            return web.json_response({"metadata": {"resourceVersion": "1"}, "items": self.pods})
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        while True:
            event = await self.events.get()
            await response.write(json.dumps(event).encode() + b"\n")

    def send(self, kind: str, pod: dict[str, Any]) -> None:
        self.events.put_nowait({"type": kind, "object": pod})


@pytest.fixture
async def pod_cache(aiohttp_server: Any) -> AsyncIterator[tuple[FakePodApi, KubeObjectCache]]:
    running = pod_json("llama-0", ip="10.1.2.3", ports=[{"name": "metrics", "containerPort": 8000}])
    pending = pod_json(
        "llama-1", phase="Pending", ip=None, ports=[{"name": "metrics", "containerPort": 8000}]
    )
    fake = FakePodApi([running, pending])
    server = await aiohttp_server(fake.app())
    configuration = client.Configuration(host=str(server.make_url("")).rstrip("/"))
    sources = [source for source in default_sources() if source.resource == PODS]
    async with client.ApiClient(configuration) as api:
        cache = KubeObjectCache(api, sources)
        supervisor = Supervisor()
        cache.start(supervisor)
        try:
            yield fake, cache
        finally:
            await supervisor.stop()


def scrape_points(cache: KubeObjectCache) -> dict[str, tuple[str, int]]:
    targets = cache.pod_targets()
    assert targets is not None
    return {pod.name: (pod.ip, pod.ports["metrics"]) for pod in targets()}


async def until(condition: Callable[[], bool], what: str) -> None:
    # The cache has no event to wait on: a condition with a deadline.
    async with asyncio.timeout(20):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert condition(), what


async def test_watch_events_move_pods_in_and_out_of_the_targets_without_touching_the_index(
    pod_cache: tuple[FakePodApi, KubeObjectCache],
) -> None:
    fake, cache = pod_cache
    await until(cache.synced, "the first list")
    assert scrape_points(cache) == {"llama-0": ("10.1.2.3", 8000)}  # llama-1 is still pending
    first = cache.take_delta()
    assert first is not None and {obj.name for obj in first.upserts} == {"llama-0", "llama-1"}
    version = cache.version()

    # The kubelet starts llama-1: a status-only change, new to discovery but not to the index.
    fake.send(
        "MODIFIED", pod_json("llama-1", ip="10.1.2.4", ports=[{"name": "metrics", "containerPort": 8000}])
    )
    await until(lambda: "llama-1" in scrape_points(cache), "llama-1 to be running")
    assert scrape_points(cache) == {"llama-0": ("10.1.2.3", 8000), "llama-1": ("10.1.2.4", 8000)}
    assert cache.take_delta() is None  # nothing for the server: no delta, no new estimator pass
    assert cache.version() == version

    # llama-0 finishes, then is deleted: it leaves the targets, and its deletion reaches the server.
    fake.send(
        "MODIFIED", pod_json("llama-0", phase="Succeeded", ports=[{"name": "metrics", "containerPort": 8000}])
    )
    await until(lambda: "llama-0" not in scrape_points(cache), "llama-0 to stop being a target")
    fake.send("DELETED", pod_json("llama-0", phase="Succeeded"))
    await until(lambda: cache.version() != version, "the deletion")
    delta = cache.take_delta()
    assert delta is not None and delta.deletes == ((PODS, "llm", "llama-0"),)
    assert scrape_points(cache) == {"llama-1": ("10.1.2.4", 8000)}


async def test_without_a_pod_watch_there_are_no_targets() -> None:
    async with client.ApiClient() as api:
        cache = KubeObjectCache(api, [s for s in default_sources() if s.resource != PODS])
        assert cache.pod_targets() is None

"""What a relist of the object cache costs, and where: parsing in the worker, applying in the server.

    python bench/cache_relist.py --pods 10000

Pods are shaped like real ones (labels, owner reference, one container with resources, env, ports,
probes, status with conditions). The worker reads a list as plain JSON into `KubeObject`s; the server
applies only what changed (`MirrorIndex`). For comparison, the same list through the client's typed
models and back to dicts, as the cache did before.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pickle
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapter.catalogue import PODS
from adapter.kube_cache import IndexDelta, KubeObjectCache, MirrorIndex, ResourceSource
from adapter.supervise import Supervisor


def pod(i: int) -> dict[str, Any]:
    name = f"llm-{i % 10}-7d9f5c6b4-{i:05d}"
    return {
        "metadata": {
            "name": name,
            "namespace": "llm",
            "uid": f"0000-{i:08d}",
            "resourceVersion": str(1000 + i),
            "labels": {"app": f"llm-{i % 10}", "pod-template-hash": "7d9f5c6b4", "tier": "interactive"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"llm-{i % 10}-7d9f5c6b4",
                    "uid": "x",
                    "controller": True,
                }
            ],
        },
        "spec": {
            "nodeName": f"node-{i // 8}",
            "containers": [
                {
                    "name": "vllm",
                    "image": "vllm/vllm-openai:v0.6.3",
                    "args": ["--model", "meta-llama/Llama-3.1-8B-Instruct", "--max-model-len", "8192"],
                    "env": [{"name": f"VAR_{k}", "value": "x" * 20} for k in range(8)],
                    "ports": [{"containerPort": 8000, "name": "http", "protocol": "TCP"}],
                    "resources": {
                        "limits": {"nvidia.com/gpu": "1"},
                        "requests": {"cpu": "4", "memory": "32Gi"},
                    },
                    "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 5},
                }
            ],
        },
        "status": {
            "phase": "Running",
            "podIP": f"10.0.{i // 250}.{i % 250}",
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": "2026-12-04T20:00:00Z"}
                for t in ("Ready", "ContainersReady", "Initialized", "PodScheduled")
            ],
        },
    }


class FakeUndecodedResponse:
    def __init__(self, body: bytes) -> None:
        self.status = 200
        self._body = body

    async def read(self) -> bytes:
        return self._body

    def release(self) -> None:
        return None


async def main_async(args: argparse.Namespace) -> None:
    from kubernetes_asyncio import client

    items = [pod(i) for i in range(args.pods)]
    body = json.dumps(
        {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "9"}, "items": items}
    ).encode()
    lists = 0

    async def endpoint(**kwargs: Any) -> Any:
        nonlocal lists
        if kwargs.get("watch"):
            await asyncio.Event().wait()
        lists += 1
        return FakeUndecodedResponse(body)

    supervisor = Supervisor()
    async with client.ApiClient() as api:
        cache = KubeObjectCache(api, [ResourceSource(PODS, lambda _: endpoint)])
        reflector = cache._reflectors[PODS]
        started = time.process_time()
        await reflector._relist()
        parsed = time.process_time() - started
        full = cache.take_delta()
        assert full is not None
        blob = pickle.dumps(full, protocol=pickle.HIGHEST_PROTOCOL)
        started = time.process_time()
        received: IndexDelta = pickle.loads(blob)
        scopes = MirrorIndex.scopes(received.upserts)
        in_thread = time.process_time() - started
        started = time.process_time()
        mirror = MirrorIndex()
        mirror.apply(received, scopes)
        mirror.objects(PODS, "llm")
        first_sync = time.process_time() - started
        print(f"{args.pods} pods, {len(body) / 1e6:.1f} MB of JSON")
        print(
            f"worker: list parsed into objects: {parsed * 1000:.0f} ms CPU ({parsed / args.pods * 1e6:.0f} us per pod)"
        )
        print(
            f"server, first sync only: {len(blob) / 1e6:.1f} MB delta unpickled and indexed in the receiving thread "
            f"in {in_thread * 1000:.0f} ms CPU, then swapped in on the event loop in {first_sync * 1000:.1f} ms"
        )
        started = time.process_time()
        await reflector._relist()  # a relist after a 410: nothing changed
        relisted = time.process_time() - started
        print(
            f"worker: relist with nothing changed: {relisted * 1000:.0f} ms CPU; delta to the server: {cache.take_delta()}"
        )
        for i in range(0, args.pods, 100):  # one pod in a hundred relabelled
            items[i]["metadata"]["labels"]["tier"] = "batch"
        body = json.dumps({"metadata": {"resourceVersion": "10"}, "items": items}).encode()
        await reflector._relist()
        delta = cache.take_delta()
        assert delta is not None
        blob = pickle.dumps(delta, protocol=pickle.HIGHEST_PROTOCOL)
        started = time.process_time()
        mirror.apply(pickle.loads(blob))
        mirror.objects(PODS, "llm")
        print(
            f"server: a relist where {len(delta.upserts)} pods changed: {(time.process_time() - started) * 1000:.1f} ms CPU"
        )
        if args.typed:
            started = time.process_time()
            typed = api.deserialize(type("R", (), {"data": body})(), "V1PodList")
            raw = api.sanitize_for_serialization(typed)
            before = time.process_time() - started
            assert len(raw["items"]) == args.pods
            print(
                f"before (typed models and back, on the API's loop): {before * 1000:.0f} ms CPU ({before / args.pods * 1e6:.0f} us per pod)"
            )
    await supervisor.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=10000)
    parser.add_argument("--typed", action="store_true", help="also time the typed models (slow)")
    asyncio.run(main_async(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

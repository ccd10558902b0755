"""Stands in for the kubelet on the test nodes, since no container runtime runs here.

The issue allows patching pod status through the status subresource: the API server, controllers, HPA and
adapter all see ordinary Running+Ready pods. It also does the one other kubelet job the tests depend on,
finishing graceful deletions (otherwise scaled-down pods would stay Terminating for ever), and it keeps the
simulated fleet file listing exactly the pods that exist, each with the load the test chose for its app.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.watch

_WATCH_TIMEOUT_SECONDS = 5
POD_IP_ANNOTATION = "kubelet-stand-in.wattscale.io/pod-ip"
"""A pod carrying it is given that IP when marked Running (a real kubelet's CNI would pick one): a
test can point a pod at a server it runs on the host (127.0.0.1). Other pods get no IP."""


@dataclass(frozen=True)
class TestNode:
    name: str
    gpus: int
    labels: Mapping[str, str]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubeletStandIn:
    def __init__(self, api: kubernetes.client.ApiClient, nodes: list[TestNode], fleet_path: Path) -> None:
        self._core = kubernetes.client.CoreV1Api(api)
        self._nodes = {node.name: node for node in nodes}
        self._fleet_path = fleet_path
        self._lock = threading.Lock()
        self._pods: dict[tuple[str, str], dict[str, Any]] = {}
        self._load_by_app: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kubelet-stand-in", daemon=True)
        self.errors: list[str] = []

    def start(self) -> None:
        for node in self._nodes.values():
            self._register(node)
        self._write_fleet()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * _WATCH_TIMEOUT_SECONDS)

    def set_load(self, namespace: str, app: str, load: float) -> None:
        """Every pod labelled app=<app> in `namespace` now runs at `load` (0..1 of peak batch)."""
        with self._lock:
            self._load_by_app[(namespace, app)] = load
            for entry in self._pods.values():
                if entry["namespace"] == namespace and entry["app"] == app:
                    entry["load"] = load
        self._write_fleet()

    def fleet(self) -> dict[str, Any]:
        """The document last written to the fleet file."""
        return dict(json.loads(self._fleet_path.read_text()))

    def _register(self, node: TestNode) -> None:
        body = kubernetes.client.V1Node(
            metadata=kubernetes.client.V1ObjectMeta(name=node.name, labels=dict(node.labels))
        )
        with contextlib.suppress(kubernetes.client.ApiException):
            self._core.create_node(body)
        capacity = {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": str(node.gpus)}
        self._core.patch_node_status(
            node.name,
            {
                "status": {
                    "capacity": capacity,
                    "allocatable": capacity,
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "message": "kubelet stand-in for the cluster tests",
                            "lastHeartbeatTime": _now(),
                            "lastTransitionTime": _now(),
                        }
                    ],
                }
            },
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                # A fresh list+watch each round replays every pod as ADDED, so nothing is missed between rounds.
                for event in kubernetes.watch.Watch().stream(  # type: ignore[no-untyped-call]
                    self._core.list_pod_for_all_namespaces, timeout_seconds=_WATCH_TIMEOUT_SECONDS
                ):
                    self._handle(event["type"], event["object"])
                    if self._stop.is_set():
                        return
            except Exception as exc:  # keep serving the other pods; the tests show the errors if they fail
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def _handle(self, kind: str, pod: kubernetes.client.V1Pod) -> None:
        meta, spec, status = pod.metadata, pod.spec, pod.status
        if meta is None or spec is None or spec.node_name not in self._nodes:
            return
        namespace, name = str(meta.namespace), str(meta.name)
        key = (namespace, name)
        if kind == "DELETED" or meta.deletion_timestamp is not None:
            if kind != "DELETED":
                # What the kubelet does once the containers are gone: finish the graceful deletion.
                with contextlib.suppress(kubernetes.client.ApiException):
                    self._core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
            self._forget(key)
            return
        if status is None or status.phase != "Running":
            self._mark_running(namespace, name, spec, (meta.annotations or {}).get(POD_IP_ANNOTATION))
        app = (meta.labels or {}).get("app", "")
        with self._lock:
            known = key in self._pods
            self._pods[key] = {
                "namespace": namespace,
                "name": name,
                "node": spec.node_name,
                "gpus": 1,
                "app": app,
                "load": self._load_by_app.get((namespace, app), 0.0),
            }
        if not known:
            self._write_fleet()

    def _forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            known = self._pods.pop(key, None) is not None
        if known:
            self._write_fleet()

    def _mark_running(
        self, namespace: str, name: str, spec: kubernetes.client.V1PodSpec, pod_ip: str | None = None
    ) -> None:
        now = _now()
        conditions = [
            {"type": kind, "status": "True", "lastTransitionTime": now}
            for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        containers = [
            {
                "name": container.name,
                "image": container.image,
                "imageID": "",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            }
            for container in spec.containers
        ]
        body = {
            "status": {
                "phase": "Running",
                "startTime": now,
                "conditions": conditions,
                "containerStatuses": containers,
                **({"podIP": pod_ip, "podIPs": [{"ip": pod_ip}]} if pod_ip else {}),
            }
        }
        with contextlib.suppress(kubernetes.client.ApiException):  # deleted meanwhile; the watch tells us
            self._core.patch_namespaced_pod_status(name, namespace, body)

    def _write_fleet(self) -> None:
        with self._lock:
            document = {
                "nodes": [{"name": node.name, "gpus": node.gpus} for node in self._nodes.values()],
                "pods": [
                    {key: entry[key] for key in ("namespace", "name", "node", "gpus", "load")}
                    for entry in sorted(self._pods.values(), key=lambda e: (e["namespace"], e["name"]))
                ],
            }
            # The simulated collector re-reads the file at every poll: replace it whole, never half-written.
            scratch = self._fleet_path.with_suffix(".tmp")
            scratch.write_text(json.dumps(document, indent=1))
            os.replace(scratch, self._fleet_path)

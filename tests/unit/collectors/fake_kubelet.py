"""FakeKubeletPodResources: a real gRPC server on a Unix socket answering `v1.PodResourcesLister/List`
from a list of (namespace, pod, container, resource, device ids) the test sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from collectors.pod_resources import MESSAGES


class FakeKubeletPodResources:
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.pods: list[tuple[str, str, str, str, list[str]]] = []
        self.calls = 0
        self._server: Any = None

    async def _list(self, request: Any, context: Any) -> Any:
        self.calls += 1
        response = MESSAGES["ListPodResourcesResponse"]()
        for namespace, pod, container, resource, device_ids in self.pods:
            entry = response.pod_resources.add(name=pod, namespace=namespace)
            devices = entry.containers.add(name=container).devices.add(resource_name=resource)
            devices.device_ids.extend(device_ids)
        return response

    async def start(self) -> None:
        self._server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "v1.PodResourcesLister",
            {
                "List": grpc.unary_unary_rpc_method_handler(
                    self._list,
                    request_deserializer=MESSAGES["ListPodResourcesRequest"].FromString,
                    response_serializer=MESSAGES["ListPodResourcesResponse"].SerializeToString,
                )
            },
        )
        self._server.add_generic_rpc_handlers((handler,))
        self._server.add_insecure_port(f"unix://{self.socket_path}")
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(None)

"""GPU -> pod mapping through the kubelet's pod-resources gRPC API (`v1.PodResourcesLister/List` on
`/var/lib/kubelet/pod-resources/kubelet.sock`; GA since Kubernetes 1.28).

There is no official Python client, and generating stubs would add a build step, so the few
messages read here are declared at run time from the upstream proto (kubernetes
`staging/src/k8s.io/kubelet/pkg/apis/podresources/v1/api.proto`), field numbers as upstream.
Fields not declared (cpu_ids, memory, topology, dynamic resources) are skipped by the parser.

Device ids from the NVIDIA device plugin are GPU UUIDs (`GPU-...`) by default, `MIG-...` UUIDs for MIG
slices, GPU indices under `DEVICE_ID_STRATEGY=index`, and `<id>::<replica>` under time-slicing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # type: ignore[import-untyped]

from collectors.base import CollectorError

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
LIST_METHOD = "/v1.PodResourcesLister/List"

_MESSAGES: dict[str, list[tuple[str, int, str, str | None]]] = {
    # message -> [(field, number, label, type or message name)]
    "ListPodResourcesRequest": [],
    "ListPodResourcesResponse": [("pod_resources", 1, "repeated", ".v1.PodResources")],
    "PodResources": [
        ("name", 1, "optional", None),
        ("namespace", 2, "optional", None),
        ("containers", 3, "repeated", ".v1.ContainerResources"),
    ],
    "ContainerResources": [("name", 1, "optional", None), ("devices", 2, "repeated", ".v1.ContainerDevices")],
    "ContainerDevices": [("resource_name", 1, "optional", None), ("device_ids", 2, "repeated", None)],
}


def _build_messages() -> dict[str, Any]:
    proto = descriptor_pb2.FileDescriptorProto(
        name="wattscale_podresources_v1.proto", package="v1", syntax="proto3"
    )
    field = descriptor_pb2.FieldDescriptorProto
    for message_name, fields in _MESSAGES.items():
        message = proto.message_type.add(name=message_name)
        for name, number, label, type_name in fields:
            entry = message.field.add(
                name=name,
                number=number,
                label=field.LABEL_REPEATED if label == "repeated" else field.LABEL_OPTIONAL,
                type=field.TYPE_MESSAGE if type_name else field.TYPE_STRING,
            )
            if type_name:
                entry.type_name = type_name
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"v1.{name}")) for name in _MESSAGES
    }


MESSAGES = _build_messages()
ListPodResourcesRequest = MESSAGES["ListPodResourcesRequest"]
ListPodResourcesResponse = MESSAGES["ListPodResourcesResponse"]

PodDevices = list[tuple[str, str, str, str]]
"""(namespace, pod, resource_name, device_id) for every device of every container."""


async def list_pod_devices(socket_path: str = DEFAULT_SOCKET, *, timeout_seconds: float = 5.0) -> PodDevices:
    """One `List` call. Raises `CollectorError` when the kubelet cannot be asked."""
    import grpc  # type: ignore[import-untyped]

    try:
        async with grpc.aio.insecure_channel(f"unix://{socket_path}") as channel:
            call = channel.unary_unary(
                LIST_METHOD,
                request_serializer=ListPodResourcesRequest.SerializeToString,
                response_deserializer=ListPodResourcesResponse.FromString,
            )
            response = await call(ListPodResourcesRequest(), timeout=timeout_seconds)
    except grpc.aio.AioRpcError as exc:
        raise CollectorError(
            f"kubelet pod-resources at {socket_path}: {exc.code().name}: {exc.details()}"
        ) from exc
    found: PodDevices = []
    for pod in response.pod_resources:
        for container in pod.containers:
            for device in container.devices:
                found.extend((pod.namespace, pod.name, device.resource_name, d) for d in device.device_ids)
    return found


def gpu_pods(
    devices: Iterable[tuple[str, str, str, str]],
    gpus: Sequence[tuple[str, int, Sequence[str]]],
    *,
    resource_prefix: str = "nvidia.com/",
) -> dict[str, list[tuple[str, str]]]:
    """GPU UUID -> sorted (namespace, pod) holding it. `gpus` is (uuid, index, MIG UUIDs) per GPU.

    A MIG slice is charged to its parent GPU (power is only measured per board), a time-sliced
    replica `<id>::<n>` to its GPU; ids that match no local GPU are ignored."""
    by_id: dict[str, str] = {}
    for uuid, index, mig_uuids in gpus:
        by_id[uuid] = uuid
        by_id[str(index)] = uuid
        for mig in mig_uuids:
            by_id[mig] = uuid
    holders: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for namespace, pod, resource, device_id in devices:
        if not resource.startswith(resource_prefix):
            continue
        holder = by_id.get(device_id.split("::", 1)[0])
        if holder is not None:
            holders[holder].add((namespace, pod))
    return {uuid: sorted(pods) for uuid, pods in holders.items()}

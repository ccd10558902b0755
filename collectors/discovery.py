"""Exporters found among the cluster's pods instead of static URLs: a pod is a target when its labels
match and it names the metrics port (a container port called `discover_port`, else the
`prometheus.io/port` annotation, with `prometheus.io/path` and `prometheus.io/scheme` when set;
`prometheus.io/scrape: "false"` opts a pod out). Each target carries the pod's namespace, name and
node, which the exporter itself does not know. Targets are worked out at every poll, so a pod that
moves or restarts with a new IP needs no change to the configuration.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from collectors.base import PodEndpoint

PORT_ANNOTATION = "prometheus.io/port"
PATH_ANNOTATION = "prometheus.io/path"
SCHEME_ANNOTATION = "prometheus.io/scheme"
SCRAPE_ANNOTATION = "prometheus.io/scrape"


class DiscoveredTarget(NamedTuple):
    url: str
    labels: dict[str, str]


def _metrics_port(pod: PodEndpoint, port_name: str) -> int | None:
    if port_name in pod.ports:
        return pod.ports[port_name]
    text = pod.annotations.get(PORT_ANNOTATION, "")
    return int(text) if text.isdigit() and 0 < int(text) < 65536 else None


def _url(pod: PodEndpoint, port: int) -> str | None:
    scheme = pod.annotations.get(SCHEME_ANNOTATION, "http")
    if scheme not in ("http", "https"):
        return None
    path = pod.annotations.get(PATH_ANNOTATION, "/metrics")
    host = f"[{pod.ip}]" if ":" in pod.ip else pod.ip
    return f"{scheme}://{host}:{port}{path if path.startswith('/') else '/' + path}"


def pod_scrape_targets(
    pods: Iterable[PodEndpoint], *, match_labels: Mapping[str, str], port_name: str
) -> list[DiscoveredTarget]:
    """The pods among `pods` to scrape, sorted by namespace and name."""
    found: list[DiscoveredTarget] = []
    for pod in sorted(pods, key=lambda p: (p.namespace, p.name)):
        if not pod.ip or pod.annotations.get(SCRAPE_ANNOTATION) == "false":
            continue
        if any(pod.labels.get(key) != value for key, value in match_labels.items()):
            continue
        port = _metrics_port(pod, port_name)
        url = _url(pod, port) if port is not None else None
        if url is None:
            continue
        labels = {"namespace": pod.namespace, "pod": pod.name}
        if pod.node:
            labels["node"] = pod.node
        found.append(DiscoveredTarget(url, labels))
    return found

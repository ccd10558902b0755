"""The agent's DaemonSet runs a command line `wattscale agent` accepts, with the paths it names mounted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from adapter.cli import build_parser

AGENT = Path(__file__).resolve().parents[3] / "apiservice" / "agent"


def _objects() -> dict[str, Any]:
    kustomization = yaml.safe_load((AGENT / "kustomization.yaml").read_text())
    found = {}
    for name in kustomization["resources"]:
        document = yaml.safe_load((AGENT / name).read_text())
        assert document["metadata"]["labels"]["app.kubernetes.io/name"] == "wattscale"
        found[document["kind"]] = document
    return found


def test_daemonset_args_parse_and_their_paths_are_mounted() -> None:
    objects = _objects()
    assert set(objects) == {"ServiceAccount", "DaemonSet", "Service"}
    pod = objects["DaemonSet"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = build_parser().parse_args(container["args"])
    assert args.command == "agent" and not args.allow_power_limit_changes
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert any(args.pod_resources_socket.startswith(m + "/") for m in mounts)
    assert any(args.control_token_file.startswith(m + "/") for m in mounts)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == args.port
    service = objects["Service"]["spec"]
    assert service["clusterIP"] == "None" and service["selector"] == pod.get("labels", service["selector"])
    assert objects["DaemonSet"]["spec"]["selector"]["matchLabels"] == service["selector"]

"""apiservice/monitoring builds with kustomize into the objects a prometheus-operator cluster needs, and
the plain scrape config example is a valid Prometheus configuration."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
MONITORING = ROOT / "apiservice" / "monitoring"


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl, standalone = shutil.which("kubectl"), shutil.which("kustomize")
    assert kubectl or standalone, "neither kubectl nor kustomize is installed"
    command = (
        [kubectl, "kustomize", str(directory)] if kubectl else [str(standalone), "build", str(directory)]
    )
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def test_kustomization_builds_rules_monitors_role_and_dashboard() -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in _kustomize(MONITORING)}
    assert set(objects) == {
        ("PrometheusRule", "wattscale"),
        ("ServiceMonitor", "wattscale"),
        ("PodMonitor", "wattscale-operator"),
        ("ClusterRole", "wattscale-metrics-reader"),
        ("ConfigMap", "wattscale-grafana-dashboard"),
    }
    dashboard = objects[("ConfigMap", "wattscale-grafana-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((MONITORING / "wattscale-dashboard.json").read_text())
    assert json.loads(dashboard["data"]["wattscale-dashboard.json"]) == shipped
    paths = {e["path"] for e in objects[("ServiceMonitor", "wattscale")]["spec"]["endpoints"]}
    granted = set(objects[("ClusterRole", "wattscale-metrics-reader")]["rules"][0]["nonResourceURLs"])
    assert paths == {"/metrics", "/metrics/power"} and paths <= granted


@pytest.mark.prometheus
def test_scrape_config_example_is_valid_for_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: run .ci/setup.d/10-prometheus.sh"
    config = yaml.safe_load((MONITORING / "scrape-config.example.yaml").read_text())
    # The example's paths are those inside a Prometheus pod; point them at files that exist here.
    (tmp_path / "token").write_text("token")
    (tmp_path / "ca.crt").write_text("")
    config["rule_files"] = [str(MONITORING / "wattscale.rules.yaml")]
    for job in config["scrape_configs"]:
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(tmp_path / "token")
        if "tls_config" in job:
            job["tls_config"]["ca_file"] = str(tmp_path / "ca.crt")
        if "kubernetes_sd_configs" in job:
            # Debian's Prometheus 2.42 is built without Kubernetes service discovery ("field
            # kubernetes_sd_configs not found"); the rest of the job (relabelling) is still checked.
            del job["kubernetes_sd_configs"]
            job["static_configs"] = [{"targets": ["127.0.0.1:9465"]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr

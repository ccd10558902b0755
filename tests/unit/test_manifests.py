"""`wattscale manifests` and the kustomize base: what a cluster admin applies must be accepted and work.

The kube-aggregator only routes to us when the APIService is named `<version>.<group>`, points at our
Service's port, and its caBundle verifies the serving certificate for `wattscale.<namespace>.svc`; the
adapter only starts when its RBAC lets it read the auth ConfigMap and review tokens. Each test checks one
of those things on the rendered objects.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification

from adapter.cli import main
from adapter.commands import manifests
from adapter.settings import Settings
from poweroperator import keda

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "llm-power"
IMAGE = "registry.example/wattscale:9.9.9"

Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def serving() -> manifests.ServingCertificate:
    return manifests.generate_serving_certificate(NAMESPACE)


@pytest.fixture(scope="module")
def rendered(serving: manifests.ServingCertificate) -> list[Manifest]:
    return manifests.render(namespace=NAMESPACE, image=IMAGE, serving=serving)


def one(objects: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"want one {kind} {name or ''}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def walk_namespaces(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "namespace" and isinstance(value, str):
                yield value
            else:
                yield from walk_namespaces(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_namespaces(item)


def verify_serving_cert(ca_bundle_b64: str, cert_pem: bytes, host: str) -> None:
    # kustomize wraps base64 lines; Go's decoder (the aggregator's) skips CR and LF, and so does this.
    roots = x509.load_pem_x509_certificates(base64.b64decode(ca_bundle_b64.replace("\n", ""), validate=True))
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(roots))
        .build_server_verifier(x509.DNSName(host))
    )
    verifier.verify(x509.load_pem_x509_certificate(cert_pem), [])


def render_cli(*args: str, capsys: pytest.CaptureFixture[str]) -> list[Manifest]:
    assert main(["manifests", "--image", IMAGE, *args]) == 0
    return [doc for doc in yaml.safe_load_all(capsys.readouterr().out) if doc]


def test_each_base_file_holds_one_labelled_object_and_every_file_is_listed() -> None:
    root = REPO / "adapter" / "manifests"
    for directory in (root, root / "external-metrics"):
        listed = yaml.safe_load((directory / "kustomization.yaml").read_text())["resources"]
        present = sorted(p.name for p in directory.glob("*.yaml") if p.name != "kustomization.yaml")
        assert sorted(listed) == present
        for name in listed:
            docs = [d for d in yaml.safe_load_all((directory / name).read_text()) if d]
            assert len(docs) == 1, f"{name}: one kind per file"
            assert docs[0]["metadata"]["labels"]["app.kubernetes.io/name"] == "wattscale", name


def test_every_object_round_trips_through_its_kubernetes_model() -> None:
    # The client's models know each kind's fields: a misspelt or misplaced field is dropped on the way
    # in, so the round trip differs; a missing required field raises.
    api = kubernetes.client.ApiClient()
    for obj in manifests.render(
        namespace=NAMESPACE,
        image=IMAGE,
        serving=manifests.generate_serving_certificate(NAMESPACE),
        external_metrics=True,
    ):
        model = api.deserialize(json.dumps(obj), f"V1{obj['kind']}", "application/json")
        back = api.sanitize_for_serialization(model)  # type: ignore[no-untyped-call]
        assert back == obj, f"{obj['kind']} {obj['metadata']['name']}"


def test_namespace_is_substituted_everywhere_but_kube_system(rendered: list[Manifest]) -> None:
    assert one(rendered, "Namespace")["metadata"]["name"] == NAMESPACE
    assert rendered[0]["kind"] == "Namespace", "the namespace must exist before the objects in it"
    seen = {ns for obj in rendered for ns in walk_namespaces(obj)}
    assert seen == {NAMESPACE, "kube-system"}
    for kind in ("ServiceAccount", "ConfigMap", "Secret", "Deployment", "Service"):
        assert one(rendered, kind)["metadata"]["namespace"] == NAMESPACE
    reader = one(rendered, "RoleBinding")
    assert reader["metadata"]["namespace"] == "kube-system"
    assert reader["subjects"] == [{"kind": "ServiceAccount", "name": "wattscale", "namespace": NAMESPACE}]


def test_api_services_name_version_group_and_reach_the_service_port(rendered: list[Manifest]) -> None:
    service = one(rendered, "Service")
    api_services = {o["metadata"]["name"]: o["spec"] for o in rendered if o["kind"] == "APIService"}
    assert set(api_services) == {"v1beta2.custom.metrics.k8s.io", "v1beta1.custom.metrics.k8s.io"}
    for name, spec in api_services.items():
        assert name == f"{spec['version']}.{spec['group']}"
        assert spec["service"] == {"name": service["metadata"]["name"], "namespace": NAMESPACE, "port": 443}
        assert 1 <= spec["groupPriorityMinimum"] <= 20000
        assert "insecureSkipTLSVerify" not in spec
    assert api_services["v1beta2.custom.metrics.k8s.io"]["versionPriority"] == 200
    assert api_services["v1beta1.custom.metrics.k8s.io"]["versionPriority"] == 100
    (port,) = service["spec"]["ports"]
    assert port["port"] == 443
    container = one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    target = next(p for p in container["ports"] if p["name"] == port["targetPort"])
    assert target["containerPort"] == 6443
    assert "--secure-port=6443" in container["args"]


def test_ca_bundle_verifies_the_secret_serving_cert_for_the_service_host(
    rendered: list[Manifest], serving: manifests.ServingCertificate
) -> None:
    secret = one(rendered, "Secret", "wattscale-tls")
    assert secret["type"] == "kubernetes.io/tls"
    cert_pem = base64.b64decode(secret["data"]["tls.crt"])
    key = serialization.load_pem_private_key(base64.b64decode(secret["data"]["tls.key"]), password=None)
    assert key.public_key() == x509.load_pem_x509_certificate(cert_pem).public_key()
    for api_service in (o for o in rendered if o["kind"] == "APIService"):
        verify_serving_cert(api_service["spec"]["caBundle"], cert_pem, f"wattscale.{NAMESPACE}.svc")
        with pytest.raises(verification.VerificationError):
            verify_serving_cert(api_service["spec"]["caBundle"], cert_pem, "wattscale.other.svc")


def test_deployment_runs_non_root_read_only_with_https_probes_and_the_tls_secret(
    rendered: list[Manifest],
) -> None:
    deployment = one(rendered, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert one(rendered, "Service")["spec"]["selector"].items() <= labels.items()
    assert pod["serviceAccountName"] == one(rendered, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    assert container["args"][0] == "serve"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "https", "scheme": "HTTPS"}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["serving-cert"]["secret"]["secretName"] == "wattscale-tls"
    args = dict(arg.split("=", 1) for arg in container["args"][1:] if "=" in arg)
    assert args["--tls-cert-file"] == f"{mounts['serving-cert']}/tls.crt"
    assert args["--tls-private-key-file"] == f"{mounts['serving-cert']}/tls.key"
    config_map = one(rendered, "ConfigMap")
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert args["--config"] == f"{mounts['config']}/config.yaml"


def test_shipped_adapter_config_is_accepted_by_serve(rendered: list[Manifest]) -> None:
    config = yaml.safe_load(one(rendered, "ConfigMap")["data"]["config.yaml"])
    settings = Settings.from_mapping(config)
    collectors = {ep.name: ep for ep in metadata.entry_points(group="wattscale.collectors")}
    for entry in settings.collectors:
        collector = collectors[entry.type].load().from_settings(entry.name, entry.raw)
        assert collector.name == entry.name


def test_rbac_grants_what_the_adapter_and_the_hpa_need(rendered: list[Manifest]) -> None:
    account = {"kind": "ServiceAccount", "name": "wattscale", "namespace": NAMESPACE}
    bindings = {(o["kind"], o["roleRef"]["name"]): o for o in rendered if o["kind"].endswith("Binding")}
    assert bindings["ClusterRoleBinding", "system:auth-delegator"]["subjects"] == [account]
    reader = bindings["RoleBinding", "extension-apiserver-authentication-reader"]
    assert reader["roleRef"]["kind"] == "Role"
    assert reader["metadata"]["namespace"] == "kube-system"
    roles = {o["metadata"]["name"]: o for o in rendered if o["kind"] == "ClusterRole"}
    resource_reader = bindings["ClusterRoleBinding", "wattscale-resource-reader"]
    assert resource_reader["subjects"] == [account]
    granted = {
        (group, resource, tuple(rule["verbs"]))
        for rule in roles["wattscale-resource-reader"]["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    watch = ("get", "list", "watch")
    assert granted == {
        ("", "pods", watch),
        ("", "nodes", watch),
        ("", "namespaces", watch),
        ("apps", "deployments", watch),
        ("serving.kserve.io", "inferenceservices", watch),
        ("wattscale.io", "powerbudgets", watch),
    }
    hpa = bindings["ClusterRoleBinding", "wattscale-custom-metrics-server-resources"]
    assert hpa["metadata"]["name"] == "wattscale-hpa-controller-custom-metrics"
    assert hpa["subjects"] == [
        {"kind": "ServiceAccount", "name": "horizontal-pod-autoscaler", "namespace": "kube-system"}
    ]
    assert roles["wattscale-custom-metrics-server-resources"]["rules"] == [
        {"apiGroups": ["custom.metrics.k8s.io"], "resources": ["*"], "verbs": ["get", "list", "watch"]}
    ]


def test_external_metrics_are_off_by_default_and_added_with_the_flag(
    rendered: list[Manifest], serving: manifests.ServingCertificate
) -> None:
    def args(objects: list[Manifest]) -> list[str]:
        return list(one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"])

    assert not [o for o in rendered if "external.metrics.k8s.io" in json.dumps(o)]
    assert "--enable-external-metrics" not in args(rendered)
    with_external = manifests.render(namespace=NAMESPACE, image=IMAGE, serving=serving, external_metrics=True)
    external = one(with_external, "APIService", "v1beta1.external.metrics.k8s.io")
    assert external["spec"]["group"] == "external.metrics.k8s.io"
    assert external["spec"]["service"]["namespace"] == NAMESPACE
    assert external["spec"]["caBundle"] == base64.b64encode(serving.ca_bundle_pem).decode()
    assert args(with_external) == [*args(rendered), "--enable-external-metrics"]
    assert one(with_external, "ClusterRoleBinding", "wattscale-hpa-controller-external-metrics")


def test_cli_output_dir_applies_with_kustomize_and_re_renders_with_the_same_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "deploy"
    assert main(["manifests", "--namespace", NAMESPACE, "--image", IMAGE, "--output", str(out)]) == 0
    listed = yaml.safe_load((out / "kustomization.yaml").read_text())["resources"]
    objects = [yaml.safe_load((out / name).read_text()) for name in listed]
    assert [o["kind"] for o in objects].count("APIService") == 2
    assert by_identity(kustomize_build(out)) == by_identity(objects)  # `kubectl apply -k DIR` sees them all
    assert oct((out / "tls.key").stat().st_mode & 0o777) == "0o600"
    assert oct((out / "secret-wattscale-tls.yaml").stat().st_mode & 0o777) == "0o600"
    first_bundle = one(objects, "APIService", "v1beta2.custom.metrics.k8s.io")["spec"]["caBundle"]

    again = render_cli(
        "--namespace", NAMESPACE, "--image", "other/wattscale:2", "--cert-dir", str(out), capsys=capsys
    )
    assert one(again, "APIService", "v1beta2.custom.metrics.k8s.io")["spec"]["caBundle"] == first_bundle
    assert one(again, "Secret")["data"] == one(objects, "Secret")["data"]
    assert (
        one(again, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"] == "other/wattscale:2"
    )


def test_ca_bundle_file_sets_the_bundle_and_leaves_the_secret_to_its_owner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], serving: manifests.ServingCertificate
) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(serving.ca_bundle_pem)
    objects = render_cli("--namespace", NAMESPACE, "--ca-bundle-file", str(bundle), capsys=capsys)
    assert not [o for o in objects if o["kind"] == "Secret"]
    for api_service in (o for o in objects if o["kind"] == "APIService"):
        assert base64.b64decode(api_service["spec"]["caBundle"]) == serving.ca_bundle_pem


def test_cert_dir_for_another_namespace_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = manifests.generate_serving_certificate("elsewhere")
    assert other.cert_pem is not None and other.key_pem is not None
    (tmp_path / "tls.crt").write_bytes(other.cert_pem)
    (tmp_path / "tls.key").write_bytes(other.key_pem)
    (tmp_path / "ca.crt").write_bytes(other.ca_bundle_pem)
    assert main(["manifests", "--namespace", NAMESPACE, "--image", IMAGE, "--cert-dir", str(tmp_path)]) == 2
    assert f"does not verify for wattscale.{NAMESPACE}.svc" in capsys.readouterr().err


def test_cert_dir_with_a_foreign_key_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine, theirs = (manifests.generate_serving_certificate(NAMESPACE) for _ in range(2))
    assert mine.cert_pem is not None and theirs.key_pem is not None
    (tmp_path / "tls.crt").write_bytes(mine.cert_pem)
    (tmp_path / "tls.key").write_bytes(theirs.key_pem)
    (tmp_path / "ca.crt").write_bytes(mine.ca_bundle_pem)
    assert main(["manifests", "--namespace", NAMESPACE, "--image", IMAGE, "--cert-dir", str(tmp_path)]) == 2
    assert "is not the key of" in capsys.readouterr().err


@pytest.mark.parametrize("namespace", ["Upper", "has_underscore", "-lead", "x" * 64, ""])
def test_bad_namespace_is_refused_before_anything_is_written(
    namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never"
    assert main(["manifests", f"--namespace={namespace}", "--image", IMAGE, "--output", str(out)]) == 2
    assert "DNS-1123 label" in capsys.readouterr().err
    assert not out.exists()


def kustomize_build(directory: Path) -> list[Manifest]:
    # kubectl embeds kustomize; .ci/setup.d/40-image.sh builds a standalone kustomize where kubectl is absent.
    kubectl, standalone = shutil.which("kubectl"), shutil.which("kustomize")
    command = (
        [kubectl, "kustomize", str(directory)] if kubectl else [str(standalone), "build", str(directory)]
    )
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_identity(objects: list[Manifest]) -> dict[tuple[str, str], Manifest]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def test_apiservice_kustomize_base_builds_the_objects_the_renderer_starts_from(tmp_path: Path) -> None:
    # apiservice/ adds the PowerBudget CRD, the node agent and the operator to the adapter's base.
    crd = yaml.safe_load((REPO / "apiservice" / "powerbudget-crd.yaml").read_text())
    agent_and_operator = [
        *kustomize_build(REPO / "apiservice" / "agent"),
        *kustomize_build(REPO / "apiservice" / "operator"),
    ]
    expected = by_identity([*manifests.base_objects(), crd, *agent_and_operator])
    assert by_identity(kustomize_build(REPO / "apiservice")) == expected
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base = Path(os.path.relpath(REPO / "apiservice", overlay))  # kustomize refuses absolute paths
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {"resources": [str(base)], "components": [str(base / "components" / "external-metrics")]}
        )
    )
    with_external = by_identity([*manifests.base_objects(external_metrics=True), crd, *agent_and_operator])
    assert by_identity(kustomize_build(overlay)) == with_external


def test_overlay_with_its_own_certificate_gets_a_matching_ca_bundle(tmp_path: Path) -> None:
    serving = manifests.generate_serving_certificate("wattscale")
    assert serving.cert_pem is not None and serving.key_pem is not None
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    for name, data in (
        ("tls.crt", serving.cert_pem),
        ("tls.key", serving.key_pem),
        ("ca.crt", serving.ca_bundle_pem),
    ):
        (overlay / name).write_bytes(data)
    base = Path(os.path.relpath(REPO / "apiservice", overlay))
    kustomization = {
        "resources": [str(base)],
        "components": [str(base / "components" / "serving-cert")],
        "images": [
            {"name": "ghcr.io/wattscale/wattscale", "newName": "registry.example/wattscale", "newTag": "2"}
        ],
        "secretGenerator": [
            {
                "name": "wattscale-tls",
                "namespace": "wattscale",
                "type": "kubernetes.io/tls",
                "files": ["tls.crt", "tls.key", "ca.crt"],
                "options": {"disableNameSuffixHash": True},
            }
        ],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    objects = kustomize_build(overlay)
    api_services = [o for o in objects if o["kind"] == "APIService"]
    assert len(api_services) == 2
    for api_service in api_services:
        verify_serving_cert(api_service["spec"]["caBundle"], serving.cert_pem, "wattscale.wattscale.svc")
    deployment = one(objects, "Deployment", "wattscale")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/wattscale:2"
    assert one(objects, "Secret", "wattscale-tls")["metadata"]["namespace"] == "wattscale"


def test_operator_objects_round_trip_and_run_as_the_operator_expects() -> None:
    api = kubernetes.client.ApiClient()
    objects = kustomize_build(REPO / "apiservice" / "operator")
    for obj in objects:
        model = api.deserialize(json.dumps(obj), f"V1{obj['kind']}", "application/json")
        assert api.sanitize_for_serialization(model) == obj, f"{obj['kind']} {obj['metadata']['name']}"  # type: ignore[no-untyped-call]
    deployment = one(objects, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "operator"
    assert {e["name"] for e in container["env"]} == {"POD_NAME", "POD_NAMESPACE"}  # Lease identity
    assert deployment["spec"]["replicas"] == 2
    rules = one(objects, "ClusterRole", "wattscale-operator")["rules"]
    assert {"apiGroups": ["wattscale.io"], "resources": ["powerbudgets/status"], "verbs": ["patch"]} in rules
    # The operator may grant exactly the two roles its KEDA objects need, and KEDA may mint only the
    # reader account's tokens with them.
    bind = [r for r in rules if r["verbs"] == ["bind"]]
    assert bind == [
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["clusterroles"],
            "verbs": ["bind"],
            "resourceNames": [keda.READER_CLUSTER_ROLE, keda.TOKEN_CLUSTER_ROLE],
        }
    ]
    token_rules = one(objects, "ClusterRole", keda.TOKEN_CLUSTER_ROLE)["rules"]
    assert token_rules == [
        {
            "apiGroups": [""],
            "resources": ["serviceaccounts/token"],
            "verbs": ["create"],
            "resourceNames": [keda.READER_ACCOUNT],
        }
    ]
    assert one(objects, "ClusterRole", keda.READER_CLUSTER_ROLE)["rules"][0]["apiGroups"] == [
        "custom.metrics.k8s.io"
    ]
    lease_rules = one(objects, "Role")["rules"]
    assert lease_rules == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}
    ]

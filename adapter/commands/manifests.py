"""`wattscale manifests`: the kustomize base in `adapter/manifests/`, rendered for one namespace and image.

The YAML files under `adapter/manifests/` are the only copy of the deployment objects: the repository's
`apiservice/` kustomization builds on that directory, and this command reads the same files as package
data, so an installed wattscale renders exactly what `kubectl apply -k apiservice/` would, plus what
kustomize cannot do alone: the serving certificate, its Secret and the APIServices' caBundle, made
consistent with each other (the aggregator dials `wattscale.<namespace>.svc` and verifies the serving
certificate against caBundle).

Certificates, by flag:
    (none)              a new CA and a serving certificate signed by it; Secret + caBundle = that CA
    --cert-dir D        D/tls.crt, D/tls.key (and D/ca.crt, else tls.crt itself as caBundle); checked
                        to match each other and to cover wattscale.<namespace>.svc
    --ca-bundle-file F  caBundle only: the Secret wattscale-tls is managed elsewhere (cert-manager ...)
"""

from __future__ import annotations

import argparse
import base64
import copy
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from adapter.errors import ConfigError

HELP = (
    "Render the Kubernetes manifests (RBAC, Deployment, Service, APIServices, TLS) for a namespace and image."
)

BASE_NAMESPACE = "wattscale"
"""The namespace written in the base files; every `namespace: wattscale` is replaced on rendering."""
SERVICE_NAME = "wattscale"
TLS_SECRET_NAME = "wattscale-tls"
CONTAINER_NAME = "wattscale"
EXTERNAL_METRICS_COMPONENT = "external-metrics"

# A namespace name is a DNS-1123 label (the Service host name is built from it).
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

Manifest = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ServingCertificate:
    """What the APIServices trust and, unless the Secret is managed elsewhere, what the adapter serves."""

    ca_bundle_pem: bytes
    cert_pem: bytes | None = None
    """None when only a CA bundle was given: then no Secret is rendered."""
    key_pem: bytes | None = None


def check_namespace(namespace: str) -> None:
    if not _DNS_LABEL.match(namespace):
        raise ConfigError([f"--namespace: want a DNS-1123 label (a-z, 0-9, '-'), got {namespace!r}"])


def service_host(namespace: str) -> str:
    """The name kube-aggregator puts in TLS SNI and checks the serving certificate against."""
    return f"{SERVICE_NAME}.{namespace}.svc"


def generate_serving_certificate(namespace: str, *, days: int = 365) -> ServingCertificate:
    """A fresh CA and a serving certificate it signs, for the Service in `namespace`.

    A separate CA, rather than one self-signed leaf, because every verifier (Go's, OpenSSL's,
    cryptography's) accepts a CA:TRUE root with a CA:FALSE leaf, while a self-signed leaf used as its
    own trust anchor is accepted by some and refused by others.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    # Clocks in a cluster drift; a certificate valid from a few minutes ago avoids "not yet valid".
    not_before = now - datetime.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"wattscale-ca@{namespace}")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    host = service_host(namespace)
    dns_names = [host, f"{host}.cluster.local", f"{SERVICE_NAME}.{namespace}", SERVICE_NAME]
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in dns_names]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return ServingCertificate(
        ca_bundle_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


def load_ca_bundle(path: Path) -> ServingCertificate:
    """caBundle only; the serving Secret is someone else's (cert-manager, a platform team)."""
    from cryptography import x509

    try:
        pem = path.read_bytes()
        x509.load_pem_x509_certificates(pem)
    except OSError as exc:
        raise ConfigError([f"--ca-bundle-file: {path}: {exc.strerror}"]) from exc
    except ValueError as exc:
        raise ConfigError([f"--ca-bundle-file: {path}: not PEM certificates ({exc})"]) from exc
    return ServingCertificate(ca_bundle_pem=pem)


def load_cert_dir(path: Path, namespace: str) -> ServingCertificate:
    """tls.crt, tls.key and optional ca.crt from `path`, refused unless the aggregator would accept them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509 import verification

    files = {name: path / name for name in ("tls.crt", "tls.key", "ca.crt")}
    problems = [
        f"--cert-dir: {files[name]} is missing"
        for name in ("tls.crt", "tls.key")
        if not files[name].is_file()
    ]
    if problems:
        raise ConfigError(problems)
    cert_pem, key_pem = files["tls.crt"].read_bytes(), files["tls.key"].read_bytes()
    ca_pem = files["ca.crt"].read_bytes() if files["ca.crt"].is_file() else cert_pem
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
        roots = x509.load_pem_x509_certificates(ca_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as exc:
        raise ConfigError([f"--cert-dir: {path}: unreadable certificate or key ({exc})"]) from exc
    leaf = chain[0]
    if leaf.public_key() != key.public_key():
        problems.append(f"--cert-dir: {files['tls.key']} is not the key of {files['tls.crt']}")
    host = service_host(namespace)
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(roots))
        .build_server_verifier(x509.DNSName(host))
    )
    try:
        verifier.verify(leaf, chain[1:])
    except verification.VerificationError as exc:
        bundle = "ca.crt" if files["ca.crt"].is_file() else "tls.crt (no ca.crt given)"
        problems.append(f"--cert-dir: tls.crt does not verify for {host} against {bundle}: {exc}")
    if problems:
        raise ConfigError(problems)
    return ServingCertificate(ca_bundle_pem=ca_pem, cert_pem=cert_pem, key_pem=key_pem)


def _manifest_root() -> Traversable:
    return resources.files("adapter") / "manifests"


def _kustomization_documents(directory: Traversable) -> tuple[list[Manifest], list[Mapping[str, Any]]]:
    """The objects a kustomization lists, in its order, and its JSON6902 patches."""
    import yaml

    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    objects: list[Manifest] = []
    for name in kustomization.get("resources", []):
        objects += [doc for doc in yaml.safe_load_all((directory / name).read_text()) if doc]
    return objects, list(kustomization.get("patches", []))


def _apply_json_patch(target: Manifest, operations: Sequence[Mapping[str, Any]]) -> None:
    """The subset of RFC 6902 the components use: `add` and `replace` on JSON-pointer paths."""
    for operation in operations:
        op, pointer = operation["op"], operation["path"]
        if op not in ("add", "replace"):
            raise ValueError(f"unsupported patch op {op!r} in the manifests package data")
        *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in pointer.split("/")[1:]]
        node: Any = target
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        value = copy.deepcopy(operation["value"])
        if isinstance(node, list):
            if last == "-":
                node.append(value)
            elif op == "add":
                node.insert(int(last), value)
            else:
                node[int(last)] = value
        else:
            node[last] = value


def base_objects(*, external_metrics: bool = False) -> list[Manifest]:
    """The base as kustomize would build it (before namespace, image and certificate are set)."""
    import yaml

    root = _manifest_root()
    objects, _ = _kustomization_documents(root)
    if external_metrics:
        component = root / EXTERNAL_METRICS_COMPONENT
        extra, patches = _kustomization_documents(component)
        objects += extra
        for patch in patches:
            selector = patch["target"]
            for obj in objects:
                if obj["kind"] == selector["kind"] and obj["metadata"]["name"] == selector["name"]:
                    _apply_json_patch(obj, yaml.safe_load(patch["patch"]))
    return objects


def _replace_namespace(node: Any, namespace: str) -> None:
    """Every `namespace: wattscale` (metadata, RBAC subjects, APIService service), whatever the kind."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "namespace" and value == BASE_NAMESPACE:
                node[key] = namespace
            else:
                _replace_namespace(value, namespace)
    elif isinstance(node, list):
        for item in node:
            _replace_namespace(item, namespace)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def render(
    *, namespace: str, image: str, serving: ServingCertificate, external_metrics: bool = False
) -> list[Manifest]:
    """The objects to apply, in an order `kubectl apply` accepts (Namespace first, APIServices last)."""
    check_namespace(namespace)
    if not image or any(ch.isspace() for ch in image):
        raise ConfigError(
            [f"--image: want an image reference such as registry/wattscale:0.1.0, got {image!r}"]
        )
    objects = base_objects(external_metrics=external_metrics)
    for obj in objects:
        _replace_namespace(obj, namespace)
        if obj["kind"] == "Namespace":
            obj["metadata"]["name"] = namespace
        elif obj["kind"] == "Deployment":
            for container in obj["spec"]["template"]["spec"]["containers"]:
                if container["name"] == CONTAINER_NAME:
                    container["image"] = image
        elif obj["kind"] == "APIService":
            obj["spec"]["caBundle"] = _b64(serving.ca_bundle_pem)
            obj["spec"].pop("insecureSkipTLSVerify", None)
    if serving.cert_pem is not None and serving.key_pem is not None:
        secret: Manifest = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": TLS_SECRET_NAME,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/name": "wattscale", "app.kubernetes.io/component": "adapter"},
            },
            "type": "kubernetes.io/tls",
            "data": {
                "tls.crt": _b64(serving.cert_pem),
                "tls.key": _b64(serving.key_pem),
                "ca.crt": _b64(serving.ca_bundle_pem),
            },
        }
        # Before the Deployment, so its pods find the Secret when they start.
        at = next(i for i, obj in enumerate(objects) if obj["kind"] == "Deployment")
        objects.insert(at, secret)
    return objects


def file_name(obj: Manifest) -> str:
    """`deployment-wattscale.yaml`, `apiservice-v1beta2.custom.metrics.k8s.io.yaml`: one object per file."""
    name = re.sub(r"[^A-Za-z0-9.-]+", "-", obj["metadata"]["name"])
    return f"{obj['kind'].lower()}-{name}.yaml"


def _documents(objects: Sequence[Manifest]) -> Iterator[str]:
    import yaml

    for obj in objects:
        yield yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)


def write_directory(objects: Sequence[Manifest], output: Path, serving: ServingCertificate) -> list[Path]:
    """One file per object plus a kustomization.yaml listing them, for `kubectl apply -k DIR`.

    A generated pair is also written as tls.crt/tls.key/ca.crt, so a later render with `--cert-dir DIR`
    (a new image, say) keeps the certificate the cluster already trusts.
    """
    import yaml

    output.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    names: list[str] = []
    for obj, text in zip(objects, _documents(objects), strict=True):
        path = output / file_name(obj)
        if obj["kind"] == "Secret":
            path.touch(mode=0o600)
        path.write_text(text)
        names.append(path.name)
        written.append(path)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": names,
    }
    (output / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    written.append(output / "kustomization.yaml")
    if serving.cert_pem is not None and serving.key_pem is not None:
        for name, data in (("tls.crt", serving.cert_pem), ("ca.crt", serving.ca_bundle_pem)):
            (output / name).write_bytes(data)
        key_path = output / "tls.key"
        key_path.touch(mode=0o600)
        key_path.write_bytes(serving.key_pem)
        written += [output / "tls.crt", output / "ca.crt", key_path]
    return written


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--namespace", default=BASE_NAMESPACE, help="namespace to deploy into (default: %(default)s)"
    )
    parser.add_argument(
        "--image", required=True, help="container image of wattscale, e.g. registry/wattscale:0.1.0"
    )
    certs = parser.add_mutually_exclusive_group()
    certs.add_argument(
        "--ca-bundle-file",
        type=Path,
        metavar="FILE",
        help="PEM CA that signed a serving certificate you manage; no Secret is rendered",
    )
    certs.add_argument(
        "--cert-dir",
        type=Path,
        metavar="DIR",
        help="use DIR/tls.crt, DIR/tls.key (and DIR/ca.crt) instead of generating a certificate",
    )
    parser.add_argument(
        "--external-metrics",
        action="store_true",
        help="also register v1beta1.external.metrics.k8s.io (leave off where KEDA is installed)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        metavar="DIR",
        help="write one file per object and a kustomization.yaml to DIR instead of YAML on stdout",
    )


def run(args: argparse.Namespace) -> int:
    try:
        check_namespace(args.namespace)
        if args.cert_dir is not None:
            serving = load_cert_dir(args.cert_dir, args.namespace)
        elif args.ca_bundle_file is not None:
            serving = load_ca_bundle(args.ca_bundle_file)
        else:
            serving = generate_serving_certificate(args.namespace)
        objects = render(
            namespace=args.namespace,
            image=args.image,
            serving=serving,
            external_metrics=args.external_metrics,
        )
    except ConfigError as exc:
        print(f"wattscale manifests: {exc}", file=sys.stderr)
        return 2
    if args.output is None:
        sys.stdout.write("---\n".join(_documents(objects)))
        return 0
    written = write_directory(objects, args.output, serving)
    print(
        f"wrote {len(written)} files to {args.output}; apply with: kubectl apply -k {args.output}",
        file=sys.stderr,
    )
    return 0

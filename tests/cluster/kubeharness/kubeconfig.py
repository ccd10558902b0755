"""Kubeconfig files for the identities the tests use (certificate or bearer token)."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from kubeharness.pki import KeyPair


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_pem: bytes,
    user: str,
    cert: KeyPair | None = None,
    token: str | None = None,
) -> Path:
    credentials: dict[str, str] = {}
    if cert is not None:
        credentials["client-certificate-data"] = _b64(cert.cert_pem)
        credentials["client-key-data"] = _b64(cert.key_pem)
    if token is not None:
        credentials["token"] = token
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "test", "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)}}
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": user, "context": {"cluster": "test", "user": user}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(document))
    return path

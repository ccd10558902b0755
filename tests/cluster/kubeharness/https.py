"""Plain HTTPS requests with explicit trust and identity, for talking to the adapter straight (not through
kube-apiserver), the way KEDA or a misconfigured client would."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def https_get(
    url: str,
    *,
    ca_path: Path,
    client_cert: tuple[Path, Path] | None = None,
    bearer_token: str | None = None,
    headers: dict[str, str] | None = None,
    timeout_seconds: float = 10.0,
) -> Response:
    """GET `url`, verifying the server against `ca_path`. HTTP errors come back as a Response; TLS and
    connection failures raise (ssl.SSLError, ConnectionError, urllib.error.URLError)."""
    context = ssl.create_default_context(cafile=str(ca_path))
    if client_cert is not None:
        context.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
    request = urllib.request.Request(url, headers=dict(headers or {}))
    if bearer_token is not None:
        request.add_header("Authorization", f"Bearer {bearer_token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=timeout_seconds) as answer:
            return Response(status=answer.status, body=answer.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Response(status=exc.code, body=exc.read())

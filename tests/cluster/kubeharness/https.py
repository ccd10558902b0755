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

from kubeharness.processes import ManagedProcess, wait_until


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


def http_ok(url: str) -> bool:
    """Whether a plain-HTTP probe endpoint on loopback (a controller's /readyz, say) answers 200."""
    with urllib.request.urlopen(url, timeout=5) as answer:
        return bool(answer.status == 200)


def http_get_text(url: str) -> str:
    """The body of a plain-HTTP GET on loopback (a controller's /metrics, say); an HTTP error raises."""
    with urllib.request.urlopen(url, timeout=5) as answer:
        return str(answer.read().decode())


def wait_for_probe(process: ManagedProcess, url: str, *, timeout_seconds: float) -> None:
    """Wait until `process` answers 200 on its probe `url`; fail at once if it exits."""

    def ready() -> bool:
        process.check_running()
        return http_ok(url)

    wait_until(
        ready, timeout_seconds=timeout_seconds, description=f"{process.name} {url}", on_timeout=process.tail
    )

"""TLS serving: a self-signed pair when none is given, and client CAs that can change at run time.

Python's `ssl` cannot change the CAs of a live `SSLContext`, so the listening context's SNI callback
hands every new connection the newest context. Client certificates are requested, not required
(CERT_OPTIONAL): bearer tokens and health probes come without one.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)

CERT_CHECK_SECONDS = 1.0
"""How often a handshake looks at the serving certificate's files (a stat, not a read)."""


def generate_self_signed(
    cert_dir: Path, hosts: list[str], *, common_name: str = "wattscale", days: int = 365
) -> tuple[Path, Path]:
    """Write `apiserver.crt` and `apiserver.key` for `hosts` (DNS names or IPs) into `cert_dir`."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = cert_dir / "apiserver.crt", cert_dir / "apiserver.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class ServingTls:
    """The server's TLS contexts; `update_client_cas` takes effect for the next connection, and so does
    a serving certificate rewritten on disk (cert-manager or a kubelet-synced Secret renewing it), as
    the Go server's dynamic serving certificate does, without a restart."""

    def __init__(
        self,
        cert_path: Path,
        key_path: Path,
        *,
        request_client_certificates: bool,
        client_ca_pem: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cert_path = cert_path
        self._key_path = key_path
        self._request_client_certificates = request_client_certificates
        self._client_ca_pem = client_ca_pem
        self._clock = clock
        self._files = self._stat_files()
        self._next_check = clock() + CERT_CHECK_SECONDS
        self._current = self._build(client_ca_pem)
        # OpenSSL keeps the verify mode of the context a connection started with (SSL_set_SSL_CTX
        # swaps the certificate store, not the mode), so the listening context fixes the mode.
        self.listening_context = self._build(client_ca_pem)
        self.listening_context.sni_callback = self._pick_context

    def _stat_files(self) -> tuple[tuple[int, int, int], ...]:
        try:
            stats = [path.stat() for path in (self._cert_path, self._key_path)]
        except OSError:
            return ()
        return tuple((stat.st_ino, stat.st_mtime_ns, stat.st_size) for stat in stats)

    def _reload_if_rewritten(self) -> None:
        now = self._clock()
        if now < self._next_check:
            return
        self._next_check = now + CERT_CHECK_SECONDS
        files = self._stat_files()
        if not files or files == self._files:
            return
        try:
            current = self._build(self._client_ca_pem)
        except (OSError, ssl.SSLError) as exc:  # half-written, or a key that does not match yet
            log.warning("tls.serving_cert_reload_failed", extra={"error": repr(exc)})
            return
        self._files, self._current = files, current
        log.info("tls.serving_cert_reloaded", extra={"cert": str(self._cert_path)})

    def _build(self, client_ca_pem: str) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._cert_path, self._key_path)
        if client_ca_pem.strip():
            context.load_verify_locations(cadata=client_ca_pem)
        context.verify_mode = ssl.CERT_OPTIONAL if self._request_client_certificates else ssl.CERT_NONE
        return context

    def _pick_context(
        self, connection: ssl.SSLObject | ssl.SSLSocket, _server_name: str | None, _context: ssl.SSLContext
    ) -> None:
        self._reload_if_rewritten()
        connection.context = self._current

    def update_client_cas(self, client_ca_pem: str) -> None:
        self._client_ca_pem = client_ca_pem
        self._current = self._build(client_ca_pem)


def peer_certificate(ssl_object: ssl.SSLObject | None) -> x509.Certificate | None:
    """The client's certificate, already verified by the handshake against the trusted CAs."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der) if der else None


def default_cert_dir() -> Path:
    return Path(
        os.environ.get("WATTSCALE_CERT_DIR") or Path(tempfile.gettempdir()) / "wattscale-serving-certs"
    )

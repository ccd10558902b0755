"""Certificates for the test control plane, made with `cryptography`.

The cluster needs several independent trust roots, the same split kubeadm makes: the cluster CA (serving
cert of kube-apiserver, client certs of admin and controller manager), the front-proxy CA (only the
aggregator's proxy client cert; reusing the cluster CA would let any client cert pass as the front proxy),
the adapter's own CA (its serving cert, published as the APIService caBundle) and, for the negative test, a
foreign CA that nobody trusts.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=2)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its key, written to `<dir>/<name>.crt` and `<dir>/<name>.key`."""

    cert_pem: bytes
    key_pem: bytes
    cert_path: Path
    key_path: Path


def new_signing_key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """A bare key pair (service-account token signing): returns (private key path, public key path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    private_path = folder / f"{name}.key"
    public_path = folder / f"{name}.pub"
    private_path.write_bytes(_key_pem(key))
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private_path, public_path


class CertificateAuthority:
    """A self-signed CA that issues leaf certificates into one folder."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"wattscale-test-{name}")])
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = self._cert.public_bytes(serialization.Encoding.PEM)
        self.cert_path = folder / f"{name}-ca.crt"
        self.cert_path.write_bytes(self.cert_pem)

    def issue(
        self,
        name: str,
        *,
        common_name: str,
        organizations: tuple[str, ...] = (),
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
        server: bool = False,
        also_client: bool = False,
        expired: bool = False,
    ) -> KeyPair:
        """Issue a leaf: a client cert (CN = user, O = groups, as kube-apiserver reads them) unless `server`;
        `also_client` makes a server cert usable as a client cert too (mutual TLS between two peers sharing one
        pair, as KEDA's operator and metrics server do); `expired`: valid only until yesterday."""
        key = ec.generate_private_key(ec.SECP256R1())
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        now = datetime.datetime.now(datetime.UTC) - (
            datetime.timedelta(days=2) if expired else datetime.timedelta()
        )
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        if not server or also_client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + (datetime.timedelta(days=1) if expired else _VALIDITY))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        pair = KeyPair(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            key_pem=_key_pem(key),
            cert_path=self.folder / f"{name}.crt",
            key_path=self.folder / f"{name}.key",
        )
        pair.cert_path.write_bytes(pair.cert_pem)
        pair.key_path.write_bytes(pair.key_pem)
        return pair

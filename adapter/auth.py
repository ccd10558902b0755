"""Who is calling, and may they: the generic Go apiserver's delegated authentication and authorization.

Authentication, in the order of `authenticatorfactory/delegating.go`:
  1. front proxy: a client certificate issued by the `requestheader-client-ca-file` CA whose CN is in
     `requestheader-allowed-names` (empty = any), user and groups from the `X-Remote-*` headers;
  2. a client certificate issued by the `client-ca-file` CA: CN = user, O = groups;
  3. a bearer token, checked with a TokenReview (cached for `cache_ttl_seconds`);
  otherwise 401 (anonymous access is off: "no identity" is an error, not `system:anonymous`).
Authorization: `system:masters` and health paths skip it; anything else is a SubjectAccessReview,
allowed and denied answers both cached for `cache_ttl_seconds` (the Go defaults are 10 s).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar
from urllib.parse import unquote

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from adapter.errors import ForbiddenError, UnauthorizedError
from adapter.query import ResourceAttributes

log = logging.getLogger(__name__)

MASTERS_GROUP = "system:masters"
AUTHENTICATED_GROUP = "system:authenticated"


@dataclass(frozen=True, slots=True)
class UserInfo:
    name: str
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    uid: str = ""


@dataclass(frozen=True, slots=True)
class NonResourceAttributes:
    path: str
    verb: str = "get"

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "verb": self.verb}


Attributes = ResourceAttributes | NonResourceAttributes


def _certificates(pem: str | None) -> tuple[x509.Certificate, ...]:
    if not pem or not pem.strip():
        return ()
    return tuple(x509.load_pem_x509_certificates(pem.encode()))


def _json_strings(raw: str | None, default: Sequence[str]) -> tuple[str, ...]:
    if raw is None or raw == "":
        return tuple(default)
    value = json.loads(raw)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"want a JSON array of strings, got {raw!r}")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class AuthenticationConfig:
    """The contents of `kube-system/extension-apiserver-authentication`, parsed once per change."""

    client_cas: tuple[x509.Certificate, ...] = ()
    requestheader_cas: tuple[x509.Certificate, ...] = ()
    allowed_names: tuple[str, ...] = ()
    username_headers: tuple[str, ...] = ("X-Remote-User",)
    group_headers: tuple[str, ...] = ("X-Remote-Group",)
    extra_header_prefixes: tuple[str, ...] = ("X-Remote-Extra-",)
    uid_headers: tuple[str, ...] = ()

    @classmethod
    def from_configmap(cls, data: Mapping[str, str]) -> AuthenticationConfig:
        return cls(
            client_cas=_certificates(data.get("client-ca-file")),
            requestheader_cas=_certificates(data.get("requestheader-client-ca-file")),
            allowed_names=_json_strings(data.get("requestheader-allowed-names"), ()),
            username_headers=_json_strings(data.get("requestheader-username-headers"), ("X-Remote-User",)),
            group_headers=_json_strings(data.get("requestheader-group-headers"), ("X-Remote-Group",)),
            extra_header_prefixes=_json_strings(
                data.get("requestheader-extra-headers-prefix"), ("X-Remote-Extra-",)
            ),
            uid_headers=_json_strings(data.get("requestheader-uid-headers"), ()),
        )

    def ca_pem(self) -> str:
        """Both pools as one PEM bundle: what the TLS layer accepts client certificates from."""
        return "".join(
            ca.public_bytes(Encoding.PEM).decode() for ca in (*self.requestheader_cas, *self.client_cas)
        )


@functools.lru_cache(maxsize=1024)
def issued_by_any(certificate: x509.Certificate, cas: tuple[x509.Certificate, ...]) -> bool:
    """Whether one of `cas` signed `certificate`. Cached: the aggregator presents the same
    certificate on every request, and a signature check costs more than the rest of a request."""
    for ca in cas:
        try:
            certificate.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def _common_name(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _organisations(certificate: x509.Certificate) -> tuple[str, ...]:
    return tuple(
        str(attribute.value)
        for attribute in certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    )


class TokenReviewer(Protocol):
    async def review(self, token: str) -> UserInfo | None:
        """The user the token belongs to, or None when the API server says it is not valid."""
        ...


class AccessReviewer(Protocol):
    async def review(self, user: UserInfo, attributes: Attributes) -> tuple[bool, str]:
        """(allowed, reason) from a SubjectAccessReview."""
        ...


K = TypeVar("K")
V = TypeVar("V")


class _TtlCache(Generic[K, V]):
    def __init__(self, ttl_seconds: float, clock: Callable[[], float], max_entries: int = 4096) -> None:
        self._ttl_seconds = ttl_seconds
        self._clock = clock
        self._max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> tuple[bool, V | None]:
        entry = self._entries.get(key)
        if entry is None or entry[0] < self._clock():
            return False, None
        return True, entry[1]

    def put(self, key: K, value: V) -> None:
        if len(self._entries) >= self._max_entries:
            now = self._clock()
            self._entries = {k: v for k, v in self._entries.items() if v[0] >= now}
            if len(self._entries) >= self._max_entries:
                self._entries.clear()
        self._entries[key] = (self._clock() + self._ttl_seconds, value)


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a request brought: its verified client certificate (if any), headers and bearer token."""

    certificate: x509.Certificate | None
    headers: Mapping[str, Sequence[str]]
    """Lower-cased header name -> every value, in order."""
    bearer_token: str | None


class Authenticator:
    def __init__(
        self,
        config: Callable[[], AuthenticationConfig],
        token_reviewer: TokenReviewer | None,
        *,
        cache_ttl_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._token_reviewer = token_reviewer
        self._token_cache: _TtlCache[str, UserInfo | None] = _TtlCache(cache_ttl_seconds, clock)

    async def authenticate(self, credentials: Credentials) -> UserInfo:
        config = self._config()
        problems: list[str] = []
        certificate = credentials.certificate
        if certificate is not None and issued_by_any(certificate, config.requestheader_cas):
            user = self._from_request_headers(config, certificate, credentials.headers, problems)
            if user is not None:
                return user
        if certificate is not None and issued_by_any(certificate, config.client_cas):
            name = _common_name(certificate)
            if name:
                return UserInfo(name, (*_organisations(certificate), AUTHENTICATED_GROUP))
            problems.append("client certificate has no common name")
        elif certificate is not None and not issued_by_any(certificate, config.requestheader_cas):
            problems.append("client certificate is not signed by a trusted CA")
        if credentials.bearer_token:
            user = await self._review_token(credentials.bearer_token)
            if user is not None:
                return user
            problems.append("bearer token was not accepted by the TokenReview")
        if not problems:
            problems.append("no client certificate or bearer token")
        raise UnauthorizedError("Unauthorized: " + "; ".join(problems))

    def _from_request_headers(
        self,
        config: AuthenticationConfig,
        certificate: x509.Certificate,
        headers: Mapping[str, Sequence[str]],
        problems: list[str],
    ) -> UserInfo | None:
        name = next(
            (
                value
                for header in config.username_headers
                for value in headers.get(header.lower(), ())
                if value
            ),
            "",
        )
        if not name:
            return None  # this authenticator does not apply: the Go server moves on to the next one
        common_name = _common_name(certificate)
        if config.allowed_names and common_name not in config.allowed_names:
            problems.append(
                f"front-proxy client certificate CN {common_name!r} is not in requestheader-allowed-names"
            )
            return None
        groups = [value for header in config.group_headers for value in headers.get(header.lower(), ())]
        extra: dict[str, list[str]] = {}
        for prefix in config.extra_header_prefixes:
            lowered = prefix.lower()
            for header, values in headers.items():
                if header.startswith(lowered) and len(header) > len(lowered):
                    extra.setdefault(unquote(header[len(lowered) :]), []).extend(values)
        uid = next(
            (value for header in config.uid_headers for value in headers.get(header.lower(), ()) if value), ""
        )
        if AUTHENTICATED_GROUP not in groups:
            groups.append(AUTHENTICATED_GROUP)
        return UserInfo(name, tuple(groups), {key: tuple(values) for key, values in extra.items()}, uid)

    async def _review_token(self, token: str) -> UserInfo | None:
        if self._token_reviewer is None:
            return None
        key = hashlib.sha256(token.encode()).hexdigest()
        hit, cached = self._token_cache.get(key)
        if hit:
            return cached
        user = await self._token_reviewer.review(token)
        if user is not None and AUTHENTICATED_GROUP not in user.groups:
            user = UserInfo(user.name, (*user.groups, AUTHENTICATED_GROUP), user.extra, user.uid)
        self._token_cache.put(key, user)
        return user


def _forbidden_message(user: UserInfo, attributes: Attributes, reason: str) -> str:
    if isinstance(attributes, NonResourceAttributes):
        message = f'forbidden: User "{user.name}" cannot {attributes.verb} path "{attributes.path}"'
    else:
        resource = attributes.resource + (f"/{attributes.subresource}" if attributes.subresource else "")
        target = (
            f'{attributes.resource}.{attributes.group} "{attributes.name}"'
            if attributes.name
            else (f"{attributes.resource}.{attributes.group}")
        )
        message = (
            f'{target} is forbidden: User "{user.name}" cannot {attributes.verb} resource "{resource}" '
            f'in API group "{attributes.group}"'
        )
        message += (
            f' in the namespace "{attributes.namespace}"' if attributes.namespace else " at the cluster scope"
        )
    return f"{message}: {reason}" if reason else message


class Authorizer:
    def __init__(
        self,
        reviewer: AccessReviewer,
        *,
        cache_ttl_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reviewer = reviewer
        self._cache: _TtlCache[tuple[object, ...], tuple[bool, str]] = _TtlCache(cache_ttl_seconds, clock)

    async def authorize(self, user: UserInfo, attributes: Attributes) -> None:
        """Returns when allowed; raises `ForbiddenError` with the Go server's message otherwise."""
        if MASTERS_GROUP in user.groups:
            return
        key = (user.name, user.uid, user.groups, tuple(sorted(user.extra.items())), attributes)
        hit, cached = self._cache.get(key)
        if not hit or cached is None:
            cached = await self._reviewer.review(user, attributes)
            self._cache.put(key, cached)
        allowed, reason = cached
        if not allowed:
            raise ForbiddenError(_forbidden_message(user, attributes, reason))


class AllowAllAuthenticator:
    """`wattscale demo` and `--authentication-mode=off`: every caller is an anonymous admin."""

    async def authenticate(self, credentials: Credentials) -> UserInfo:
        return UserInfo("system:anonymous", (MASTERS_GROUP,))


class RequestAuthenticator(Protocol):
    async def authenticate(self, credentials: Credentials) -> UserInfo: ...

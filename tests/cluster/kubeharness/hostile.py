"""Generated hostile input against a running `wattscale serve`, and the checks every answer must pass.

Shared by the cluster test (a few hundred requests) and `bench/fuzz_api.py` (10,000 or more). Each
request is drawn from a seeded generator: paths (valid metric paths, random segments, percent-encoded
junk), selectors, methods, headers (big, many, bogus credentials, unknown `Expect`), bodies, raw
malformed HTTP over TLS sockets, under a variety of identities; slow clients hold connections
(nothing sent after the handshake, or half a request line) while each batch runs, and `/livez` is
probed between batches. The rules:

- no 5xx except 503 ServiceUnavailable (a stale value or not ready yet);
- every error is a `Status` whose `code` is the HTTP code (HEAD answers have no body);
- a request with no identity gets 401 everywhere but the health paths;
- `/livez` answers 200 between every two batches, with the slow clients still connected.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import string
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from yarl import URL

HEALTH_PATHS = ("/healthz", "/livez", "/readyz", "/livez/ping", "/readyz/ping", "/healthz/ping")
METRICS = (
    "watts_per_token",
    "gpu_power_watts",
    "power_watts",
    "node_power_watts",
    "rack_power_headroom_watts",
    "replicas_within_budget",
    "generation_tokens_per_second",
    "rack_power_latest_watts",
)
RESOURCES = (
    "pods",
    "nodes",
    "namespaces",
    "deployments.apps",
    "deployments",
    "inferenceservices.serving.kserve.io",
    "powerbudgets.wattscale.io",
    "services",
    "pods.metrics.k8s.io",
)
SELECTORS = (
    "app=phi",
    "app in (phi,llama)",
    "!app",
    "tier notin (batch)",
    "app=",
    "=x",
    "app==phi,,",
    "app in (",
    "a" * 70 + "=b",
    "app=phi,tier!=batch,x,!y",
    "kubernetes.io/hostname=node-1",
    "a/b/c=d",
    "app=" + "v" * 64,
)
FIXED_PATHS = (
    "/",
    "/apis",
    "/apis/custom.metrics.k8s.io",
    "/apis/custom.metrics.k8s.io/v1beta2",
    "/apis/custom.metrics.k8s.io/v1beta1",
    "/apis/custom.metrics.k8s.io/v1",
    "/apis/external.metrics.k8s.io/v1beta1",
    "/openapi/v2",
    "/openapi/v3",
    "/openapi/v3/apis/custom.metrics.k8s.io/v1beta2",
    "/openapi/v3/apis/custom.metrics.k8s.io/v1beta2?hash=00",
    "/openapi/v3/apis/nothing/v9",
    "/version",
    "/metrics",
    *HEALTH_PATHS,
)
METHODS = ("GET",) * 12 + ("HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND")
RAW_ANSWER_SECONDS = 40.0
URL_SAFE = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@"


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    ca_path: Path
    proxy_cert: tuple[Path, Path]
    """The aggregator's front-proxy client certificate: with it, X-Remote-* headers name the user."""
    namespace: str = "llm"
    names: tuple[str, ...] = ("phi",)


@dataclass
class Report:
    requests: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    closed_without_answer: int = 0
    slow_clients_held: int = 0
    probes: int = 0
    probe_failures: list[str] = field(default_factory=list)
    slowest_probe_seconds: float = 0.0

    def violation(self, text: str) -> None:
        self.violations.append(text)

    def summary(self) -> str:
        lines = [
            f"requests: {self.requests}",
            "codes: " + ", ".join(f"{code} x{count}" for code, count in sorted(self.codes.items())),
            f"closed without an answer (header timeout or not HTTP): {self.closed_without_answer}",
            f"slow clients held during batches: {self.slow_clients_held}",
            f"/livez probes: {self.probes}, failed: {len(self.probe_failures)}, "
            f"slowest {self.slowest_probe_seconds * 1000:.0f} ms",
            f"violations: {len(self.violations)}",
            *(f"  {text}" for text in self.violations[:20]),
            *(f"  probe: {text}" for text in self.probe_failures[:5]),
        ]
        return "\n".join(lines)


@dataclass(frozen=True)
class Identity:
    name: str
    certificate: bool
    headers: tuple[tuple[str, str], ...]

    @property
    def anonymous(self) -> bool:
        return not self.certificate or not any(name == "X-Remote-User" for name, _ in self.headers)


def _identities(rng: random.Random) -> Identity:
    roll = rng.random()
    if roll < 0.5:
        return Identity(
            "admin", True, (("X-Remote-User", "fuzz-admin"), ("X-Remote-Group", "system:masters"))
        )
    if roll < 0.7:
        return Identity("hpa", True, (("X-Remote-User", "system:serviceaccount:kube-system:fuzz-hpa"),))
    if roll < 0.8:
        return Identity("proxy-without-user", True, (("X-Remote-Group", "system:masters"),))
    if roll < 0.9:
        token = "".join(rng.choices(string.ascii_letters + string.digits + ".-_", k=rng.randint(1, 300)))
        return Identity("bogus-token", False, (("Authorization", f"Bearer {token}"),))
    return Identity("nobody", False, (("X-Remote-User", "admin"), ("X-Remote-Group", "system:masters")))


def _token(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.3:
        return "".join(rng.choices(URL_SAFE, k=rng.randint(0, 30)))
    if roll < 0.5:
        return "".join(f"%{rng.randrange(256):02X}" for _ in range(rng.randint(1, 6)))
    if roll < 0.6:
        return rng.choice(("..", ".", "%2F", "%2A", "*", "%00", "%25", "~", "%E2%82%AC", "%FF%FE"))
    if roll < 0.65:
        return "x" * rng.randint(300, 5000)
    return rng.choice(("llm", "phi", "node-1", "rack-a", "kube-system", "default", "a.b", "A_B"))


def _query(rng: random.Random) -> str:
    params = []
    for _ in range(rng.choice((0, 0, 1, 1, 2, 3))):
        name = rng.choice(("labelSelector", "metricLabelSelector", "pretty", "watch", "x", "labelSelector"))
        value = rng.choice(SELECTORS) if "Selector" in name else rng.choice(("true", "false", "1", "", "%00"))
        encoded = "".join(
            ch if ch in URL_SAFE.replace("&", "").replace("=", "") else f"%{ord(ch):02X}" for ch in value
        )
        params.append(f"{name}={encoded}")
    return ("?" + "&".join(params)) if params else ""


def random_path(rng: random.Random, target: Target) -> str:
    roll = rng.random()
    version = rng.choice(("v1beta2", "v1beta1", "v1beta2", "v2", "%76%31beta2"))
    name = rng.choice((*target.names, "*", "%2A", _token(rng)))
    metric = rng.choice((*METRICS, _token(rng)))
    resource = rng.choice((*RESOURCES, _token(rng)))
    namespace = rng.choice((target.namespace, "default", _token(rng)))
    base = f"/apis/custom.metrics.k8s.io/{version}"
    if roll < 0.35:
        path = f"{base}/namespaces/{namespace}/{resource}/{name}/{metric}"
    elif roll < 0.5:
        path = f"{base}/{resource}/{name}/{metric}"
    elif roll < 0.6:
        path = f"{base}/namespaces/{namespace}/metrics/{metric}"
    elif roll < 0.65:
        path = f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}"
    elif roll < 0.8:
        return rng.choice(FIXED_PATHS)
    else:
        path = "/" + "/".join(_token(rng) for _ in range(rng.randint(0, 9)))
    return path + _query(rng)


def _headers(rng: random.Random, identity: Identity) -> list[tuple[str, str]]:
    headers = list(identity.headers)
    for _ in range(rng.choice((0, 0, 1, 2, 5))):
        roll = rng.random()
        if roll < 0.25:
            headers.append(
                (
                    "Accept",
                    rng.choice(
                        (
                            "application/json",
                            "application/vnd.kubernetes.protobuf",
                            "*/*",
                            "text/html",
                            "application/json;as=Table;v=v1;g=meta.k8s.io",
                            "x",
                        )
                    ),
                )
            )
        elif roll < 0.35:
            headers.append(("Expect", rng.choice(("100-continue", "teapot", "", "100-CONTINUE"))))
        elif roll < 0.45:
            headers.append(("X-Big", "b" * rng.choice((10_000, 100_000, 600_000))))
        elif roll < 0.55:
            headers.extend((f"X-Many-{n}", str(n)) for n in range(rng.choice((100, 500, 2000))))
        elif roll < 0.65:
            headers.append(("X-Remote-Extra-" + _token(rng)[:40].replace("%", "x") + "a", _token(rng)[:200]))
        elif roll < 0.75:
            headers.append(
                (
                    "Content-Type",
                    rng.choice(("application/json", "text/plain", "multipart/form-data; boundary=x")),
                )
            )
        else:
            headers.append(
                (
                    "X-" + "".join(rng.choices(string.ascii_letters, k=8)),
                    "".join(rng.choices(URL_SAFE, k=rng.randint(0, 200))),
                )
            )
    return headers


def _client_context(target: Target, certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(target.ca_path))
    if certificate:
        context.load_cert_chain(str(target.proxy_cert[0]), str(target.proxy_cert[1]))
    return context


def check_answer(
    report: Report,
    what: str,
    method: str,
    code: int,
    content_type: str,
    body: bytes,
    identity: Identity | None,
    path: str,
) -> None:
    report.codes[str(code)] += 1
    if code >= 500:
        stale = code == 503 and b"ServiceUnavailable" in body
        if not stale:
            report.violation(f"{what}: {code} {body[:200]!r}")
            return
    # Refused before authentication, as Go's server does (a HEAD's refusal has no body to tell).
    refused_unread = (
        code in (417, 431) or b"malformed HTTP request" in body or (method == "HEAD" and code == 400)
    )
    unauthenticated = identity is not None and identity.anonymous and path.split("?")[0] not in HEALTH_PATHS
    if unauthenticated and code != 401 and not refused_unread:
        report.violation(f"{what}: no identity, answered {code} instead of 401: {body[:200]!r}")
    if code < 400:
        return
    if method == "HEAD":
        if body:
            report.violation(f"{what}: HEAD answered {code} with a body {body[:100]!r}")
        return
    if not content_type.startswith("application/json"):
        report.violation(f"{what}: error {code} as {content_type!r}: {body[:200]!r}")
        return
    try:
        document = json.loads(body)
    except ValueError:
        report.violation(f"{what}: error {code} body is not JSON: {body[:200]!r}")
        return
    if document.get("kind") != "Status" or document.get("code") != code:
        report.violation(f"{what}: error {code} is not a matching Status: {body[:200]!r}")


async def _http_request(
    rng: random.Random, target: Target, sessions: dict[bool, aiohttp.ClientSession], report: Report
) -> None:
    identity = _identities(rng)
    method = rng.choice(METHODS)
    path = random_path(rng, target)
    headers = _headers(rng, identity)
    body = rng.randbytes(rng.choice((0, 10, 4000, 70_000))) if method not in ("GET", "HEAD") else None
    url = URL(f"https://{target.host}:{target.port}{path}", encoded=True)
    what = f"{method} {path[:150]} as {identity.name}"
    try:
        async with sessions[identity.certificate].request(
            method,
            url,
            headers=headers,
            data=body,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=60),
        ) as answer:
            payload = await answer.read()
            check_answer(
                report,
                what,
                method,
                answer.status,
                answer.headers.get("Content-Type", ""),
                payload,
                identity,
                path,
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        report.violation(f"{what}: {type(exc).__name__}: {exc}")


def _raw_request(rng: random.Random, target: Target) -> tuple[str, bytes]:
    path = random_path(rng, target).encode()
    line = b"GET " + path + b" HTTP/1.1\r\n"
    headers = b"Host: wattscale\r\nX-Remote-User: fuzz-admin\r\nX-Remote-Group: system:masters\r\n"
    roll = rng.random()
    if roll < 0.15:
        return "random bytes", rng.randbytes(rng.randint(1, 3000)) + b"\r\n\r\n"
    if roll < 0.3:
        raw = bytearray(line + headers + b"Connection: close\r\n\r\n")
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw) - 4)] = rng.randrange(256)
        return "flipped bytes", bytes(raw)
    if roll < 0.4:
        method = rng.choice((b"G\x00T", b"GET GET", b"", b"get", b"\xff\xfe", b"CONNECT"))
        version = rng.choice(
            (b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9.9", b"HTTP/1", b"", b"http/1.1")
        )
        return (
            "request line",
            method + b" " + path + b" " + version + b"\r\n" + headers + b"Connection: close\r\n\r\n",
        )
    if roll < 0.55:
        bad = rng.choice(
            (
                b"No-Colon-Here\r\n",
                b"Bad Name: 1\r\n",
                b" folded: continuation\r\n",
                b"X-Nul: a\x00b\r\n",
                b"Content-Length: 5\r\nContent-Length: 6\r\n",
                b"Content-Length: -1\r\n",
                b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                b"Transfer-Encoding: gzip, chunked, identity\r\n",
                b"Host: a\r\nHost: b\r\n",
                b"X-Long: " + b"l" * 1_200_000 + b"\r\n",
            )
        )
        return "bad header", line + headers + bad + b"Connection: close\r\n\r\n"
    if roll < 0.65:
        body = b"zz\r\n" + rng.randbytes(20) + b"\r\n0\r\n\r\n"
        return (
            "chunked garbage",
            b"POST "
            + path
            + b" HTTP/1.1\r\n"
            + headers
            + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            + body,
        )
    if roll < 0.75:
        return "long request line", b"GET /" + b"a" * rng.choice(
            (9000, 200_000, 1_100_000)
        ) + b" HTTP/1.1\r\n" + headers + b"Connection: close\r\n\r\n"
    if roll < 0.85:
        head = rng.choice((b"HEAD", b"GET"))
        return (
            "pipelined",
            head
            + b" "
            + path
            + b" HTTP/1.1\r\n"
            + headers
            + b"\r\n"
            + line
            + headers
            + b"Connection: close\r\n\r\n",
        )
    return "http/1.0", b"GET " + path + b" HTTP/1.0\r\n" + headers + b"\r\n"


def _complete(answer: bytes, *, head_request: bool) -> bool:
    """Whether `answer` holds one whole response (headers, and the body its Content-Length gives)."""
    head, found, body = answer.partition(b"\r\n\r\n")
    if not found:
        return False
    if head_request:
        return True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(body) >= int(value.strip())
    return False


async def _raw_exchange(rng: random.Random, target: Target, context: ssl.SSLContext, report: Report) -> None:
    kind, raw = _raw_request(rng, target)
    method = raw.split(b" ", 1)[0]
    what = f"raw {kind}: {raw[:80]!r}"
    try:
        reader, writer = await asyncio.open_connection(target.host, target.port, ssl=context)
    except (OSError, ssl.SSLError) as exc:
        report.violation(f"{what}: connect failed: {exc!r}")
        return
    answer = b""
    try:
        writer.write(raw)
        await writer.drain()
        # Until the server closes, or for longer than its read-header timeout (32 s) when a flipped
        # byte made the request keep-alive (it is answered, then held open until idle).
        async with asyncio.timeout(RAW_ANSWER_SECONDS):
            while not _complete(answer, head_request=raw.startswith(b"HEAD ")):
                chunk = await reader.read(65536)
                if not chunk:
                    break
                answer += chunk
    except (ConnectionError, ssl.SSLError):
        pass  # the server closed while we still wrote: a refusal
    except TimeoutError:
        if not answer:
            report.violation(f"{what}: no answer and not closed within {RAW_ANSWER_SECONDS} s")
            return
    finally:
        writer.close()
    if not answer:
        report.closed_without_answer += 1
        report.codes["closed"] += 1
        return
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1."):
        report.violation(f"{what}: answer is not HTTP: {answer[:100]!r}")
        return
    code = int(lines[0].split()[1])
    content_type = ""
    length = None
    for header in lines[1:]:
        name, _, value = header.partition(b":")
        if name.strip().lower() == b"content-type":
            content_type = value.strip().decode("latin-1")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if method == b"HEAD":  # no body: whatever follows is the next pipelined answer
        first_body = b"" if body.startswith(b"HTTP/1.") else body
    else:
        first_body = body if length is None else body[:length]
    check_answer(
        report, what, "HEAD" if method == b"HEAD" else "GET", code, content_type, first_body, None, ""
    )


async def _slow_client(
    target: Target, context: ssl.SSLContext, half_line: bool, release: asyncio.Event
) -> bool:
    try:
        _, writer = await asyncio.open_connection(target.host, target.port, ssl=context)
    except (OSError, ssl.SSLError):
        return False
    if half_line:
        writer.write(b"GET /apis/custom.metrics.k8s.io/v1beta2/namesp")
    await release.wait()
    writer.close()
    return True


async def probe_livez(target: Target, report: Report) -> None:
    context = _client_context(target, certificate=False)
    started = time.perf_counter()
    report.probes += 1
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            async with session.get(
                f"https://{target.host}:{target.port}/livez", timeout=aiohttp.ClientTimeout(total=10)
            ) as answer:
                if answer.status != 200:
                    report.probe_failures.append(f"/livez answered {answer.status}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        report.probe_failures.append(f"/livez: {type(exc).__name__}: {exc}")
    report.slowest_probe_seconds = max(report.slowest_probe_seconds, time.perf_counter() - started)


async def _one(
    seed: int,
    target: Target,
    sessions: dict[bool, aiohttp.ClientSession],
    raw_context: ssl.SSLContext,
    limit: asyncio.Semaphore,
    report: Report,
) -> None:
    rng = random.Random(seed)
    async with limit:
        if rng.random() < 0.2:
            await _raw_exchange(rng, target, raw_context, report)
        else:
            await _http_request(rng, target, sessions, report)


async def run(
    target: Target,
    *,
    requests: int,
    seed: int = 1,
    batch: int = 250,
    concurrency: int = 24,
    slow_clients: int = 20,
) -> Report:
    rng = random.Random(seed)
    report = Report()
    limit = asyncio.Semaphore(concurrency)
    raw_context = _client_context(target, certificate=True)
    sessions = {
        certificate: aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=_client_context(target, certificate), limit=concurrency),
            max_line_size=1 << 21,
            max_field_size=1 << 21,
        )
        for certificate in (True, False)
    }
    try:
        await probe_livez(target, report)
        while report.requests < requests:
            size = min(batch, requests - report.requests)
            release = asyncio.Event()
            held = [
                asyncio.create_task(_slow_client(target, raw_context, n % 2 == 1, release))
                for n in range(slow_clients)
            ]
            seeds = [rng.getrandbits(64) for _ in range(size)]
            await asyncio.gather(
                *(
                    _one(seed_for_request, target, sessions, raw_context, limit, report)
                    for seed_for_request in seeds
                )
            )
            report.requests += size
            await probe_livez(target, report)  # with the slow clients still connected
            release.set()
            report.slow_clients_held += sum(await asyncio.gather(*held))
    finally:
        for session in sessions.values():
            await session.close()
    return report

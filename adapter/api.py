"""The aggregated API server: routes, middlewares and thin handlers.

A handler parses the request into a query, authorizes it, makes one provider call and renders the
result. Every error leaves as a `metav1.Status`: our domain errors with their own code, aiohttp's
(unknown route, wrong method) with theirs, and anything unexpected as a logged 500 with no traceback.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from adapter import __version__, wire
from adapter.auth import Authorizer, Credentials, NonResourceAttributes, RequestAuthenticator, UserInfo
from adapter.connections import REFUSED_LOG, status_response
from adapter.errors import NotReadyError, WattscaleError
from adapter.exposition import POWER_METRICS_PATH, PowerExposition
from adapter.logs import RateLimitedLog
from adapter.objects import ObjectIndex
from adapter.openapi import Document, OpenApiDocuments
from adapter.page import add_page
from adapter.provider import StoreProvider
from adapter.query import (
    RouteNotFoundError,
    custom_attributes,
    external_attributes,
    parse_custom,
    parse_external,
    split_segments,
)
from adapter.selfmetrics import SelfMetrics
from adapter.store import MetricStore
from adapter.tls import peer_certificate

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HEALTH_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/healthz/ping", "/livez/ping", "/readyz/ping"})


@dataclass(frozen=True, slots=True)
class ApiSettings:
    enable_external_metrics: bool = False
    extra_routes: tuple[web.RouteDef, ...] = ()
    """Routes of one command only (the demo's load knob), behind the same middlewares."""


STORE = web.AppKey("store", MetricStore)
INDEX = web.AppKey("index", ObjectIndex)
PROVIDER = web.AppKey("provider", StoreProvider)
AUTHENTICATOR = web.AppKey("authenticator", RequestAuthenticator)
AUTHORIZER = web.AppKey("authorizer", Authorizer)
"""Absent when authorization is off (the demo)."""
SELF_METRICS = web.AppKey("self_metrics", SelfMetrics)
SETTINGS = web.AppKey("api_settings", ApiSettings)
LivenessCheck = Callable[[], Sequence[str]]
LIVENESS: web.AppKey[LivenessCheck] = web.AppKey("liveness")
"""Internal tasks and processes that stopped and are not coming back: /livez fails with them."""
OPENAPI = web.AppKey("openapi", OpenApiDocuments)
POWER_EXPOSITION = web.AppKey("power_exposition", PowerExposition)
USER = web.RequestKey("user", UserInfo)


def json_response(body: Mapping[str, Any] | str, status: int = 200, *, pretty: bool = False) -> web.Response:
    if pretty:
        text = json.dumps(json.loads(body) if isinstance(body, str) else body, indent=2)
    else:
        text = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
    return web.Response(text=text, status=status, content_type="application/json")


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def status_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    self_metrics = request.app[SELF_METRICS]
    started = time.perf_counter()
    try:
        response = await handler(request)
    except WattscaleError as exc:
        if exc.status_code >= 500 and not isinstance(exc, NotReadyError):
            log.warning("api.unavailable", extra={"path": request.path, "error": str(exc)})
        response = status_response(exc.status_code, str(exc), exc.reason)
    except web.HTTPException as exc:
        message = "the server could not find the requested resource" if exc.status == 404 else exc.reason
        response = status_response(exc.status, message)
        if exc.status == 405:
            response.headers["Allow"] = "GET"
    except Exception:  # our bug: log it with its traceback, never send one
        log.exception("api.unhandled", extra={"path": request.path})
        response = status_response(500, "Internal error occurred: the adapter failed to answer this request")
    route = _route_name(request)
    if response.status >= 400 and request.path not in HEALTH_PATHS:
        # One line per refused request, so "why did the HPA get a 404" has an answer in the log,
        # rate-limited so no client can flood it. Never headers: they carry tokens.
        request.app[REFUSED_LOG].info(path=request.path, code=response.status)
    self_metrics.requests.labels(route, str(response.status)).inc()
    self_metrics.request_duration.labels(route).observe(time.perf_counter() - started)
    return response


def credentials_of(request: web.Request) -> Credentials:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    headers: CIMultiDictProxy[str] = request.headers
    grouped: dict[str, list[str]] = {}
    for name, value in headers.items():
        grouped.setdefault(name.lower(), []).append(value)
    token = None
    authorization = headers.get("Authorization", "")
    scheme, _, rest = authorization.partition(" ")
    if scheme.lower() == "bearer" and rest.strip():
        token = rest.strip()
    return Credentials(peer_certificate(ssl_object), grouped, token)


def _is_resource_path(path: str) -> bool:
    """Paths whose handler authorizes with resource attributes, as Go's RequestInfo would classify them."""
    parts = [part for part in path.split("/") if part]
    return len(parts) > 3 and parts[0] == "apis"


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in HEALTH_PATHS:
        return await handler(request)
    user = await request.app[AUTHENTICATOR].authenticate(credentials_of(request))
    request[USER] = user
    if not _is_resource_path(request.path):
        await authorize(request, NonResourceAttributes(request.path, request.method.lower()))
    return await handler(request)


async def authorize(request: web.Request, attributes: Any) -> None:
    authorizer = request.app.get(AUTHORIZER)
    if authorizer is not None:
        await authorizer.authorize(request[USER], attributes)


def _pretty(request: web.Request) -> bool:
    return request.query.get("pretty", "").lower() == "true"


def _unhealthy(problems: list[str]) -> web.Response:
    return web.Response(text="not ok: " + "; ".join(problems), status=503)


async def ping(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def livez(request: web.Request) -> web.Response:
    problems = list(request.app[LIVENESS]())
    return _unhealthy(problems) if problems else web.Response(text="ok")


async def readyz(request: web.Request) -> web.Response:
    store, index = request.app[STORE], request.app[INDEX]
    problems = list(request.app[LIVENESS]())
    if not index.synced():
        problems.append("object caches not synced")
    if not store.ready:
        problems.append("no metrics estimated yet")
    return _unhealthy(problems) if problems else web.Response(text="ok")


async def version(request: web.Request) -> web.Response:
    major, minor, *_ = __version__.split(".")
    return json_response(
        {"major": major, "minor": minor, "gitVersion": f"v{__version__}", "platform": "python"},
        pretty=_pretty(request),
    )


async def self_metrics(request: web.Request) -> web.Response:
    # The app's own registry, then the process-wide one: collectors record their per-source metrics
    # there (wattscale_collector_source_*), along with the process and Python runtime metrics.
    body = generate_latest(request.app[SELF_METRICS].registry) + generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def power_metrics(request: web.Request) -> web.Response:
    body = await request.app[POWER_EXPOSITION].body()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _groups(app: web.Application) -> list[tuple[str, tuple[str, ...]]]:
    groups: list[tuple[str, tuple[str, ...]]] = [(wire.CUSTOM_GROUP, wire.CUSTOM_VERSIONS)]
    if app[SETTINGS].enable_external_metrics:
        groups.append((wire.EXTERNAL_GROUP, wire.EXTERNAL_VERSIONS))
    return groups


async def api_groups(request: web.Request) -> web.Response:
    return json_response(wire.api_group_list(_groups(request.app)), pretty=_pretty(request))


async def api_group(request: web.Request) -> web.Response:
    group = request.match_info["group"]
    for name, versions in _groups(request.app):
        if name == group:
            return json_response(wire.api_group(name, versions), pretty=_pretty(request))
    raise RouteNotFoundError()


def _group_version(request: web.Request) -> tuple[str, str]:
    group, version = request.match_info["group"], request.match_info["version"]
    if any(name == group and version in versions for name, versions in _groups(request.app)):
        return group, version
    raise RouteNotFoundError()


async def group_version(request: web.Request) -> web.Response:
    group, version = _group_version(request)
    tail = request.match_info["tail"]
    provider = request.app[PROVIDER]
    if not split_segments(tail):
        resources = (
            provider.list_custom_metrics() if group == wire.CUSTOM_GROUP else provider.list_external_metrics()
        )
        return json_response(wire.api_resource_list(f"{group}/{version}", resources), pretty=_pretty(request))
    # Segments of the raw path after /apis/{group}/{version}, decoded one by one (see adapter.query).
    segments = split_segments("/".join(request.raw_path.split("?", 1)[0].split("/")[4:]))
    if group == wire.CUSTOM_GROUP:
        query = parse_custom(version, segments, request.query)
        await authorize(request, custom_attributes(group, query))
        if _pretty(request):
            return json_response(wire.metric_value_list(version, provider.custom_items(query)), pretty=True)
        return web.Response(
            body=provider.custom_list(query), content_type="application/json", charset="utf-8"
        )
    external = parse_external(segments, request.query)
    await authorize(request, external_attributes(group, version, external))
    values = request.app[PROVIDER].external_values(external)
    return json_response(wire.external_metric_value_list(external.metric, values), pretty=_pretty(request))


def _document_response(request: web.Request, document: Document, cache_control: str) -> web.Response:
    headers = {"ETag": document.etag, "Cache-Control": cache_control}
    if document.etag in request.headers.getall("If-None-Match", []):
        return web.Response(status=304, headers=headers)
    return web.Response(body=document.body, content_type="application/json", headers=headers)


async def openapi_v2(request: web.Request) -> web.Response:
    return _document_response(request, request.app[OPENAPI].v2, "no-cache, private")


async def openapi_v3_discovery(request: web.Request) -> web.Response:
    return _document_response(request, request.app[OPENAPI].v3_discovery, "no-cache, private")


async def openapi_v3(request: web.Request) -> web.Response:
    key = request.match_info["group_version"]
    document = request.app[OPENAPI].v3.get(key)
    if document is None:
        raise RouteNotFoundError()
    wanted = request.query.get("hash")
    current = document.etag.strip('"')
    if wanted is None:
        return _document_response(request, document, "no-cache, private")
    if wanted != current:  # an old link: send the client to the document of now, as handler3 does
        return web.Response(status=301, headers={"Location": f"/openapi/v3/{key}?hash={current}"})
    return _document_response(request, document, "public, immutable")


def create_app(
    *,
    store: MetricStore,
    index: ObjectIndex,
    authenticator: RequestAuthenticator,
    authorizer: Authorizer | None,
    self_metrics_registry: SelfMetrics,
    settings: ApiSettings = ApiSettings(),
    clock: Callable[[], float] = time.time,
    liveness: LivenessCheck = lambda: (),
) -> web.Application:
    app = web.Application(middlewares=[status_errors, authenticate], client_max_size=64 * 1024)
    app[STORE] = store
    app[INDEX] = index
    app[AUTHENTICATOR] = authenticator
    if authorizer is not None:
        app[AUTHORIZER] = authorizer
    app[SELF_METRICS] = self_metrics_registry
    app[SETTINGS] = settings
    app[LIVENESS] = liveness
    app[REFUSED_LOG] = RateLimitedLog(log, "api.request_failed")
    app[OPENAPI] = OpenApiDocuments.build(_groups(app))
    app[PROVIDER] = StoreProvider(
        store, index, clock=clock, observe_age=self_metrics_registry.metric_freshness.observe
    )
    get = app.router.add_get
    for path in ("/healthz", "/livez"):
        get(path, livez, allow_head=False)
    for path in ("/healthz/ping", "/livez/ping", "/readyz/ping"):
        get(path, ping, allow_head=False)
    get("/readyz", readyz, allow_head=False)
    get("/version", version, allow_head=False)
    get("/metrics", self_metrics, allow_head=False)
    get("/openapi/v2", openapi_v2, allow_head=False)
    get("/openapi/v3", openapi_v3_discovery, allow_head=False)
    get("/openapi/v3/{group_version:.+}", openapi_v3, allow_head=False)
    app[POWER_EXPOSITION] = PowerExposition(store, clock=clock)
    get(POWER_METRICS_PATH, power_metrics, allow_head=False)
    add_page(app, store, clock)
    app.router.add_routes(settings.extra_routes)
    get("/apis", api_groups, allow_head=False)
    get("/apis/{group}", api_group, allow_head=False)
    get("/apis/{group}/{version}{tail:(/.*)?}", group_version, allow_head=False)
    return app

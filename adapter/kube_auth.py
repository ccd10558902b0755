"""The API-server side of delegated auth: TokenReview, SubjectAccessReview, and the
`kube-system/extension-apiserver-authentication` ConfigMap, followed as it changes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client, watch

from adapter.auth import Attributes, AuthenticationConfig, NonResourceAttributes, UserInfo
from adapter.selfmetrics import SelfMetrics

log = logging.getLogger(__name__)

AUTH_CONFIGMAP_NAMESPACE = "kube-system"
AUTH_CONFIGMAP_NAME = "extension-apiserver-authentication"
AUTH_WATCH_TASK = "auth-configmap"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retry delays: doubling from `initial_seconds` up to `max_seconds`."""

    initial_seconds: float = 1.0
    max_seconds: float = 60.0


class KubeTokenReviewer:
    def __init__(self, api: client.ApiClient, self_metrics: SelfMetrics) -> None:
        self._api = client.AuthenticationV1Api(api)
        self._metrics = self_metrics

    async def review(self, token: str) -> UserInfo | None:
        self._metrics.auth_cache.labels("TokenReview").inc()
        body = client.V1TokenReview(
            api_version="authentication.k8s.io/v1",
            kind="TokenReview",
            spec=client.V1TokenReviewSpec(token=token),
        )
        result = await self._api.create_token_review(body)
        status = result.status
        if status is None or not status.authenticated or status.user is None:
            return None
        user = status.user
        extra = {key: tuple(values) for key, values in (user.extra or {}).items()}
        return UserInfo(user.username or "", tuple(user.groups or ()), extra, user.uid or "")


class KubeAccessReviewer:
    def __init__(self, api: client.ApiClient, self_metrics: SelfMetrics) -> None:
        self._api = client.AuthorizationV1Api(api)
        self._metrics = self_metrics

    async def review(self, user: UserInfo, attributes: Attributes) -> tuple[bool, str]:
        self._metrics.auth_cache.labels("SubjectAccessReview").inc()
        spec: dict[str, Any] = {
            "user": user.name,
            "groups": list(user.groups),
            "extra": {key: list(values) for key, values in user.extra.items()} or None,
            "uid": user.uid or None,
        }
        if isinstance(attributes, NonResourceAttributes):
            spec["non_resource_attributes"] = client.V1NonResourceAttributes(**attributes.to_json())
        else:
            resource: dict[str, Any] = dict(attributes.to_json())
            spec["resource_attributes"] = client.V1ResourceAttributes(**resource)
        body = client.V1SubjectAccessReview(
            api_version="authorization.k8s.io/v1",
            kind="SubjectAccessReview",
            spec=client.V1SubjectAccessReviewSpec(**spec),
        )
        result = await self._api.create_subject_access_review(body)
        status = result.status
        return bool(status and status.allowed), (status.reason or "") if status else ""


class ExtensionAuthentication:
    """The current `AuthenticationConfig`, kept in step with the ConfigMap; `on_change` hears of each new one."""

    def __init__(
        self,
        api: client.ApiClient,
        on_change: Callable[[AuthenticationConfig], None],
        *,
        self_metrics: SelfMetrics | None = None,
        retry: Backoff | None = None,
    ) -> None:
        self._core = client.CoreV1Api(api)
        self._on_change = on_change
        self._metrics = self_metrics
        self._retry = retry or Backoff()
        self.current = AuthenticationConfig()

    def _update(self, data: dict[str, str] | None) -> None:
        try:
            config = AuthenticationConfig.from_configmap(data or {})
        except ValueError as exc:
            log.error("auth.configmap_invalid", extra={"error": str(exc)})
            return
        if config != self.current:
            self.current = config
            self._on_change(config)
            log.info(
                "auth.configmap_loaded",
                extra={
                    "client_cas": len(config.client_cas),
                    "requestheader_cas": len(config.requestheader_cas),
                    "allowed_names": list(config.allowed_names),
                },
            )

    async def load(self) -> str:
        configmap = await self._core.read_namespaced_config_map(AUTH_CONFIGMAP_NAME, AUTH_CONFIGMAP_NAMESPACE)
        self._update(configmap.data)
        return str(configmap.metadata.resource_version or "")

    async def follow(self, resource_version: str) -> None:
        """Follow the ConfigMap until cancelled. Any failure (an API error, a dropped connection, a
        truncated chunk: aiohttp's are not OSErrors) is logged, counted, and retried with backoff;
        returning would leave CA rotation unfollowed while the server looked healthy."""
        delay = self._retry.initial_seconds
        while True:
            try:
                if not resource_version:
                    resource_version = await self.load()
                    delay = self._retry.initial_seconds  # the API server answers again
                resource_version = await self._watch(resource_version)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("auth.configmap_watch_failed", extra={"error": repr(exc), "retry_seconds": delay})
                if self._metrics is not None:
                    self._metrics.internal_restarts.labels(AUTH_WATCH_TASK).inc()
                resource_version = ""
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry.max_seconds)

    async def _watch(self, resource_version: str) -> str:
        """One watch from `resource_version`; the version to resume from, "" to list again."""
        async with watch.Watch() as stream:
            async for event in stream.stream(
                self._core.list_namespaced_config_map,
                AUTH_CONFIGMAP_NAMESPACE,
                field_selector=f"metadata.name={AUTH_CONFIGMAP_NAME}",
                resource_version=resource_version,
                timeout_seconds=300,
            ):
                if event["type"] == "ERROR":
                    return ""
                configmap = event["object"]
                resource_version = configmap.metadata.resource_version or resource_version
                if event["type"] in ("ADDED", "MODIFIED"):
                    self._update(configmap.data)
        return resource_version

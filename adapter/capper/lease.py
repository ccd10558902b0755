"""Leader election through a coordination.k8s.io/v1 Lease, so several capper replicas never act twice.

The holder renews every `renew_seconds`; another replica takes over only after `lease_seconds` without a
renewal. Updates carry the resourceVersion read just before, so two replicas racing for an expired lease
cannot both win: the API server answers the loser with 409 Conflict.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger(__name__)


def _seconds(stamp: Any) -> float | None:
    if stamp is None:
        return None
    if isinstance(stamp, datetime):
        return stamp.timestamp()
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


class LeaseElector:
    def __init__(
        self,
        api: client.CoordinationV1Api,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_seconds: int = 15,
        renew_seconds: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self._clock = clock
        self.is_leader = False
        self.holder: str | None = None
        self._renewed_seconds = -float("inf")

    def _spec(self, now: float, transitions: int, acquire: bool, acquired_at: Any) -> client.V1LeaseSpec:
        stamp = datetime.fromtimestamp(now, UTC)
        return client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=self.lease_seconds,
            acquire_time=stamp if acquire else acquired_at,
            renew_time=stamp,
            lease_transitions=transitions + (1 if acquire else 0),
        )

    async def try_acquire_or_renew(self) -> bool:
        """One election round; returns whether this replica leads now. A leader renewed less than
        `renew_seconds` ago is not re-written: the loop runs every second, the lease needs far less."""
        now = self._clock()
        if self.is_leader and now - self._renewed_seconds < self.renew_seconds:
            return True
        try:
            lease = await self._api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                return self._lost(f"read: HTTP {exc.status}")
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=self._spec(now, -1, True, None),
            )
            try:
                await self._api.create_namespaced_lease(self.namespace, body)
            except ApiException as create_exc:
                return self._lost(f"create: HTTP {create_exc.status}")
            return self._won(now)
        spec = lease.spec or client.V1LeaseSpec()
        holder = spec.holder_identity
        renewed = _seconds(spec.renew_time) or 0.0
        duration = spec.lease_duration_seconds or self.lease_seconds
        if holder and holder != self.identity and now < renewed + duration:
            self.holder = holder
            return self._lost(None)
        acquire = holder != self.identity
        lease.spec = self._spec(now, spec.lease_transitions or 0, acquire, spec.acquire_time)
        try:
            await self._api.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as exc:
            return self._lost(f"update: HTTP {exc.status}")
        return self._won(now)

    async def release(self) -> None:
        """Give the lease up on shutdown, so the next replica need not wait for it to expire."""
        if not self.is_leader:
            return
        try:
            lease = await self._api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec and lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = ""
                lease.spec.lease_duration_seconds = 1
                await self._api.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as exc:
            log.warning("capper.lease.release_failed", extra={"status": exc.status})
        self.is_leader = False

    def _won(self, now: float) -> bool:
        self._renewed_seconds = now
        if not self.is_leader:
            log.info("capper.lease.acquired", extra={"lease": self.name, "identity": self.identity})
        self.is_leader = True
        self.holder = self.identity
        return True

    def _lost(self, error: str | None) -> bool:
        if self.is_leader:
            log.warning("capper.lease.lost", extra={"lease": self.name, "error": error})
        elif error:
            log.debug("capper.lease.error", extra={"lease": self.name, "error": error})
        self.is_leader = False
        return False

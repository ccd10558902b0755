"""Leader election through a coordination.k8s.io/v1 Lease, so several operator replicas never act twice.

The holder renews every `renew_seconds`. The others never compare the holder's `renewTime` with their
own wall clock (clocks on two nodes differ; a skew would decide leadership): as client-go's
leaderelection does, each replica remembers the last lease record it saw and *when it saw it change*
on its own monotonic clock, and takes over only after `leaseDurationSeconds` without a change. Updates
carry the resourceVersion read just before, so two replicas racing for an expired lease cannot both
win: the API server answers the loser with 409 Conflict. An API server that cannot be reached costs
this replica the lead (it cannot prove it still holds the lease), never the process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger(__name__)

_API_ERRORS = (ApiException, aiohttp.ClientError, TimeoutError, OSError)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status}"
    return f"{type(exc).__name__}: {exc}"


def _record(spec: client.V1LeaseSpec) -> tuple[Any, ...]:
    """What identifies one write of the lease; any change means its holder is alive."""
    return (
        spec.holder_identity,
        spec.lease_duration_seconds,
        str(spec.acquire_time),
        str(spec.renew_time),
        spec.lease_transitions,
    )


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
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self._clock = clock
        """Monotonic: all timing decisions."""
        self._wall_clock = wall_clock
        """Only for the timestamps written into the Lease, which people read."""
        self.is_leader = False
        self.holder: str | None = None
        self._renewed_seconds = -float("inf")
        self._observed: tuple[Any, ...] | None = None
        self._observed_seconds = -float("inf")
        self._last_error: str | None = None

    def _spec(self, transitions: int, acquire: bool, acquired_at: Any) -> client.V1LeaseSpec:
        stamp = datetime.fromtimestamp(self._wall_clock(), UTC)
        return client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=self.lease_seconds,
            acquire_time=stamp if acquire else acquired_at,
            renew_time=stamp,
            lease_transitions=transitions + (1 if acquire else 0),
        )

    def _observe(self, spec: client.V1LeaseSpec, now: float) -> None:
        record = _record(spec)
        if record != self._observed:
            self._observed, self._observed_seconds = record, now

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
                return self._lost(f"read: {_describe(exc)}")
            return await self._create(now)
        except _API_ERRORS as exc:
            return self._lost(f"read: {_describe(exc)}")
        spec = lease.spec or client.V1LeaseSpec()
        self._observe(spec, now)
        holder = spec.holder_identity
        duration = spec.lease_duration_seconds or self.lease_seconds
        if holder and holder != self.identity and now < self._observed_seconds + duration:
            self.holder = holder
            return self._lost(None)
        acquire = holder != self.identity
        lease.spec = self._spec(spec.lease_transitions or 0, acquire, spec.acquire_time)
        try:
            written = await self._api.replace_namespaced_lease(self.name, self.namespace, lease)
        except _API_ERRORS as exc:
            return self._lost(f"update: {_describe(exc)}")
        return self._won(written, now)

    async def _create(self, now: float) -> bool:
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=self._spec(-1, True, None),
        )
        try:
            written = await self._api.create_namespaced_lease(self.namespace, body)
        except _API_ERRORS as exc:
            return self._lost(f"create: {_describe(exc)}")
        return self._won(written, now)

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
        except _API_ERRORS as exc:
            log.warning("operator.lease.release_failed", extra={"lease": self.name, "error": _describe(exc)})
        self.is_leader = False

    def _won(self, written: client.V1Lease, now: float) -> bool:
        self._renewed_seconds = now
        self._last_error = None
        if written is not None and written.spec is not None:
            self._observe(written.spec, now)
        if not self.is_leader:
            log.info("operator.lease.acquired", extra={"lease": self.name, "identity": self.identity})
        self.is_leader = True
        self.holder = self.identity
        return True

    def _lost(self, error: str | None) -> bool:
        if self.is_leader:
            log.warning("operator.lease.lost", extra={"lease": self.name, "error": error})
        elif error and error != self._last_error:  # once per distinct failure, not once a second
            log.warning("operator.lease.error", extra={"lease": self.name, "error": error})
        self._last_error = error
        self.is_leader = False
        return False

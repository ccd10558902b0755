"""Rack PDUs over Redfish (DMTF `PowerDistribution`, `/redfish/v1/PowerEquipment/RackPDUs/{id}`).

Per PDU: inlet power (`Metrics.PowerWatts.Reading`, W; else the sum of the Mains circuits), inlet
energy (`Metrics.EnergykWh.Reading`, kWh -> J; the counter can be reset by `ResetMetrics`, so it is
reset-proofed here), capacity (`PowerCapacityVA`), and per circuit (Mains, Branches) power, rated
current and breaker state; outlets on request. The rack total is PDU inlet power: outlet sums miss
the PDU's own losses.

A Mains circuit without a `PowerWatts` total is summed from its line-to-neutral readings (a wye
feed), else from its line-to-line ones (a delta feed); never both, which would count twice.

Auth: a Redfish session (`POST /redfish/v1/SessionService/Sessions`, then `X-Auth-Token`; logged in
again once when the token expires, deleted on close), HTTP basic, or none.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import aiohttp
from prometheus_client import CollectorRegistry

from collectors.base import CollectorError, Sample
from collectors.support import (
    HttpPolledCollector,
    MonotonicSums,
    PollSettings,
    Secret,
    build_settings,
    mapped_http_errors,
    read_bounded,
)

JOULES_PER_KILOWATT_HOUR = 3.6e6
_URL = re.compile(r"^https?://[^/\s]+$")
_MAX_RESPONSE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class RedfishPduSettings(PollSettings):
    url: str
    """Scheme, host and port of the PDU's Redfish service, e.g. https://pdu-a3.example."""
    rack: str
    pdu_ids: tuple[str, ...] = ()
    """RackPDU ids under the service; empty = every member of the RackPDUs collection."""
    auth: Literal["session", "basic", "none"] = "session"
    username: str | None = None
    password: Secret | None = None
    tls_ca_file: str | None = None
    tls_insecure_skip_verify: bool = False
    include_outlets: bool = False
    interval_seconds: float = 15.0

    def problems(self) -> list[str]:
        found = PollSettings.problems(self)
        if not _URL.match(self.url.rstrip("/")):
            found.append(f"url: want http(s)://host[:port], got {self.url!r}")
        if not self.rack:
            found.append("rack: must not be empty")
        if self.auth not in ("session", "basic", "none"):
            found.append(f"auth: want session, basic or none, got {self.auth!r}")
        if self.auth != "none" and (not self.username or self.password is None):
            found.append(f"username, password: required with auth {self.auth!r}")
        if self.tls_ca_file is not None and not Path(self.tls_ca_file).is_file():
            found.append(f"tls_ca_file: no such file {self.tls_ca_file!r}")
        return found


def _reading(document: Mapping[str, Any], key: str) -> float | None:
    """`document[key].Reading` as a number; None when absent, null or not a number."""
    excerpt = document.get(key)
    if not isinstance(excerpt, Mapping):
        return None
    value = excerpt.get("Reading")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def circuit_power_watts(circuit: Mapping[str, Any]) -> float | None:
    total = _reading(circuit, "PowerWatts")
    if total is not None:
        return total
    lines = circuit.get("PolyPhasePowerWatts")
    if not isinstance(lines, Mapping):
        return None
    for suffix in ("ToNeutral", ""):
        readings = [
            _reading(lines, key)
            for key in lines
            if key.endswith(suffix) and (suffix or not key.endswith("ToNeutral"))
        ]
        values = [r for r in readings if r is not None]
        if values:
            return sum(values)
    return None


class RedfishPduCollector(HttpPolledCollector):
    settings: RedfishPduSettings

    def __init__(
        self,
        name: str,
        settings: RedfishPduSettings,
        *,
        session: aiohttp.ClientSession | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            name,
            settings,
            session=session,
            registry=registry,
            clock=clock,
        )
        self._base = settings.url.rstrip("/")
        self._token: str | None = None
        self._session_location: str | None = None
        self._energy = MonotonicSums()

    @classmethod
    def from_settings(cls, name: str, raw: Mapping[str, object]) -> Self:
        return cls(name, build_settings(RedfishPduSettings, name, raw))

    async def _login(self) -> None:
        settings = self.settings
        assert settings.username is not None and settings.password is not None
        url = f"{self._base}/redfish/v1/SessionService/Sessions"
        body = {"UserName": settings.username, "Password": settings.password.reveal()}
        with mapped_http_errors(f"{self.name}: login"):
            async with self._get_session().post(url, json=body) as response:
                if response.status in (400, 401, 403):
                    raise CollectorError(
                        f"{self.name}: login refused (HTTP {response.status}); check username and password"
                    )
                response.raise_for_status()
                token = response.headers.get("X-Auth-Token")
                location = response.headers.get("Location")
        if not token:
            raise CollectorError(f"{self.name}: login answered without an X-Auth-Token header")
        self._token = token
        self._session_location = location

    async def _get(self, path: str) -> dict[str, Any]:
        """GET a Redfish resource by its `@odata.id` path, logging in (again) when needed."""
        settings = self.settings
        for attempt in range(2):
            headers = {"Accept": "application/json", "OData-Version": "4.0"}
            if settings.auth == "session":
                if self._token is None:
                    await self._login()
                assert self._token is not None
                headers["X-Auth-Token"] = self._token
            elif settings.auth == "basic":
                assert settings.username is not None and settings.password is not None
                headers["Authorization"] = aiohttp.encode_basic_auth(
                    settings.username, settings.password.reveal()
                )
            what = f"{self.name}: GET {path}"
            with mapped_http_errors(what):
                async with self._get_session().get(f"{self._base}{path}", headers=headers) as response:
                    if response.status == 401 and settings.auth == "session" and attempt == 0:
                        self._token = None  # the session expired or was deleted: log in once more
                        continue
                    if response.status in (401, 403):
                        raise CollectorError(f"{what}: HTTP {response.status}; check the credentials")
                    response.raise_for_status()
                    body = await read_bounded(response, _MAX_RESPONSE_BYTES, what)
            try:
                document = json.loads(body)
            except ValueError as exc:
                raise CollectorError(f"{what}: answer is not JSON") from exc
            if not isinstance(document, dict):
                raise CollectorError(f"{what}: answer is not a JSON object")
            return document
        raise CollectorError(f"{self.name}: GET {path}: refused after logging in again")

    async def _member_links(self, path: str) -> list[str]:
        collection = await self._get(path)
        members = collection.get("Members")
        if not isinstance(members, list):
            raise CollectorError(f"{self.name}: {path} has no Members list")
        links = []
        for member in members:
            link = member.get("@odata.id") if isinstance(member, Mapping) else None
            if not isinstance(link, str):
                raise CollectorError(f"{self.name}: {path} has a member without @odata.id")
            links.append(link)
        return links

    async def _members(self, path: str) -> list[dict[str, Any]]:
        return [await self._get(link) for link in await self._member_links(path)]

    @staticmethod
    def _link(document: Mapping[str, Any], key: str) -> str | None:
        link = document.get(key)
        target = link.get("@odata.id") if isinstance(link, Mapping) else None
        return target if isinstance(target, str) else None

    async def _pdu_ids(self) -> tuple[str, ...]:
        if self.settings.pdu_ids:
            return self.settings.pdu_ids
        links = await self._member_links("/redfish/v1/PowerEquipment/RackPDUs")
        return tuple(link.rstrip("/").rsplit("/", 1)[-1] for link in links)

    async def _poll(self) -> list[Sample]:
        samples: list[Sample] = []
        energy: list[tuple[str, object, float]] = []
        now = self._clock()
        for pdu_id in await self._pdu_ids():
            samples.extend(await self._poll_pdu(pdu_id, now, energy))
        rack = self.settings.rack
        for pdu_id, joules in self._energy.update(energy).items():
            samples.append(
                Sample(
                    metric="pdu_energy_joules_total",
                    value=joules,
                    timestamp_seconds=now,
                    labels={"rack": rack, "pdu": pdu_id},
                )
            )
        return samples

    async def _poll_pdu(
        self, pdu_id: str, now: float, energy: list[tuple[str, object, float]]
    ) -> list[Sample]:
        rack = self.settings.rack
        pdu = await self._get(f"/redfish/v1/PowerEquipment/RackPDUs/{pdu_id}")
        labels = {"rack": rack, "pdu": pdu_id}
        samples: list[Sample] = []

        def add(metric: str, value: float, **extra: str) -> None:
            samples.append(
                Sample(metric=metric, value=value, timestamp_seconds=now, labels={**labels, **extra})
            )

        mains_watts: list[float] = []
        for kind in ("Mains", "Branches"):
            link = self._link(pdu, kind)
            if link is None:
                continue
            for circuit in await self._members(link):
                circuit_id = str(circuit.get("Id", ""))
                circuit_type = "mains" if kind == "Mains" else "branch"
                watts = circuit_power_watts(circuit)
                if watts is not None:
                    add("pdu_circuit_power_watts", watts, circuit=circuit_id, circuit_type=circuit_type)
                    if kind == "Mains":
                        mains_watts.append(watts)
                rated = circuit.get("RatedCurrentAmps")
                if isinstance(rated, int | float) and not isinstance(rated, bool):
                    add(
                        "pdu_circuit_rated_current_amps",
                        float(rated),
                        circuit=circuit_id,
                        circuit_type=circuit_type,
                    )
                state = circuit.get("BreakerState")
                if isinstance(state, str):
                    tripped = 1.0 if state != "Normal" else 0.0
                    add("pdu_circuit_breaker_tripped", tripped, circuit=circuit_id, circuit_type=circuit_type)

        metrics_link = self._link(pdu, "Metrics")
        metrics = await self._get(metrics_link) if metrics_link else {}
        power = _reading(metrics, "PowerWatts")
        if power is None and mains_watts:
            power = sum(mains_watts)
        if power is None:
            raise CollectorError(f"{self.name}: PDU {pdu_id} reports no power (Metrics.PowerWatts, Mains)")
        add("pdu_power_watts", power)
        kilowatt_hours = _reading(metrics, "EnergykWh")
        if kilowatt_hours is not None:
            energy.append((pdu_id, pdu_id, kilowatt_hours * JOULES_PER_KILOWATT_HOUR))
        capacity = pdu.get("PowerCapacityVA")
        if isinstance(capacity, int | float) and not isinstance(capacity, bool):
            add("pdu_power_capacity_volt_amperes", float(capacity))

        outlets_link = self._link(pdu, "Outlets")
        if self.settings.include_outlets and outlets_link:
            for outlet in await self._members(outlets_link):
                watts = _reading(outlet, "PowerWatts")
                if watts is not None:
                    add("pdu_outlet_power_watts", watts, outlet=str(outlet.get("Id", "")))
        return samples

    async def aclose(self) -> None:
        session, token, location = self._session, self._token, self._session_location
        if session is not None and not session.closed and token is not None and location:
            url = location if location.startswith("http") else f"{self._base}{location}"
            try:
                async with session.delete(url, headers={"X-Auth-Token": token}):
                    pass
            except (aiohttp.ClientError, OSError):
                pass  # the PDU expires idle sessions itself
        self._token = None
        await super().aclose()

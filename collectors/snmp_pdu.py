"""Rack PDUs over SNMP (pysnmp 7, asyncio; v2c or v3): APC rPDU2, Raritan PDU2, ServerTech Sentry4,
Eaton ePDU. The rack total is the PDU's inlet power (device, inlet or input cord), summed over the
units it has; outlet sums miss the PDU's own losses and are only read on request.

Scaling differs by vendor (OIDs from the vendors' MIBs):

    vendor   inlet power                         unit             energy                 unit
    apc      rPDU2DeviceStatusPower  .26.4.3.1.5  hundredths kW    rPDU2DeviceStatusEnergy tenths kWh
    raritan  measurementsInletSensorValue        scaled by inletSensorDecimalDigits (per sensor)
             sensor activePower(5)                W                activeEnergy(8)         Wh
    sentry4  st4InputCordActivePower             W                st4InputCordEnergy      tenths kWh
    eaton    inputTotalWatts (else inputWatts)   W                inputTotalWh            Wh

A negative reading (APC's -1 on switched PDUs without metering, Eaton's "unavailable") means the PDU
does not measure it: it is left out, never read as a number. Energy counters are user-resettable
on APC and Eaton and are reset-proofed here.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Self

from prometheus_client import CollectorRegistry

from collectors.base import CollectorError, Sample
from collectors.config_fields import setting
from collectors.support import (
    MonotonicSums,
    PolledCollector,
    PollSettings,
    Secret,
    TransientCollectorError,
    build_settings,
)

Oid = tuple[int, ...]
JOULES_PER_WATT_HOUR = 3600.0


def _oid(text: str) -> Oid:
    return tuple(int(part) for part in text.strip(".").split("."))


APC = "1.3.6.1.4.1.318.1.1.26"
RARITAN = "1.3.6.1.4.1.13742.6"
SENTRY4 = "1.3.6.1.4.1.1718.4.1"
EATON = "1.3.6.1.4.1.534.6.6.7"

# vendor -> column name -> OID of the table column
COLUMNS: dict[str, dict[str, Oid]] = {
    "apc": {
        "power": _oid(f"{APC}.4.3.1.5"),
        "energy": _oid(f"{APC}.4.3.1.9"),
        "rated_current": _oid(f"{APC}.4.2.1.9"),
        "outlet_power": _oid(f"{APC}.9.4.3.1.7"),
    },
    "raritan": {
        "inlet_value": _oid(f"{RARITAN}.5.2.3.1.4"),
        "inlet_digits": _oid(f"{RARITAN}.3.3.4.1.7"),
        "outlet_value": _oid(f"{RARITAN}.5.4.3.1.4"),
        "outlet_digits": _oid(f"{RARITAN}.3.5.4.1.7"),
    },
    "sentry4": {
        "power": _oid(f"{SENTRY4}.3.3.1.3"),
        "energy": _oid(f"{SENTRY4}.3.3.1.10"),
        "capacity": _oid(f"{SENTRY4}.3.2.1.12"),
        "outlet_power": _oid(f"{SENTRY4}.8.3.1.7"),
    },
    "eaton": {
        "power": _oid(f"{EATON}.3.5.1.4"),
        "energy": _oid(f"{EATON}.3.5.1.5"),
        "input_power": _oid(f"{EATON}.3.4.1.4"),
        "outlet_power": _oid(f"{EATON}.6.5.1.3"),
    },
}
_OUTLET_COLUMNS = {"outlet_power", "outlet_value", "outlet_digits"}
RARITAN_ACTIVE_POWER = 5
RARITAN_ACTIVE_ENERGY = 8

_AUTH = {
    "none": "usmNoAuthProtocol",
    "md5": "usmHMACMD5AuthProtocol",
    "sha": "usmHMACSHAAuthProtocol",
    "sha256": "usmHMAC192SHA256AuthProtocol",
    "sha512": "usmHMAC384SHA512AuthProtocol",
}
_PRIV = {
    "none": "usmNoPrivProtocol",
    "des": "usmDESPrivProtocol",
    "aes128": "usmAesCfb128Protocol",
    "aes256": "usmAesCfb256Protocol",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class SnmpPduSettings(PollSettings):
    host: str
    port: int = setting(161, minimum=1, maximum=65535)
    vendor: Literal["apc", "raritan", "sentry4", "eaton"]
    rack: str
    pdu: str = ""
    """The `pdu` label; defaults to host:port."""
    version: Literal["2c", "3"] = "2c"
    community: Secret | None = None
    username: str | None = None
    auth_protocol: Literal["none", "md5", "sha", "sha256", "sha512"] = "sha"
    auth_key: Secret | None = None
    priv_protocol: Literal["none", "des", "aes128", "aes256"] = "aes128"
    priv_key: Secret | None = None
    context_name: str = ""
    include_outlets: bool = False
    max_repetitions: int = setting(25, minimum=1, maximum=200)

    def problems(self) -> list[str]:
        found = PollSettings.problems(self)
        if not self.host:
            found.append("host: must not be empty")
        if not self.rack:
            found.append("rack: must not be empty")
        if self.version == "2c" and self.community is None:
            found.append("community: required with version 2c")
        if self.version == "3":
            if not self.username:
                found.append("username: required with version 3")
            if self.auth_protocol != "none" and (self.auth_key is None or len(self.auth_key.reveal()) < 8):
                found.append("auth_key: required with an auth_protocol, at least 8 characters")
            if self.priv_protocol != "none" and (self.priv_key is None or len(self.priv_key.reveal()) < 8):
                found.append("priv_key: required with a priv_protocol, at least 8 characters")
            if self.priv_protocol != "none" and self.auth_protocol == "none":
                found.append("priv_protocol: privacy needs an auth_protocol too")
        return found


Table = dict[Oid, int]
"""Row index -> integer value, for one column."""


def _readings(table: Table) -> dict[Oid, int]:
    """Only the readings the PDU supports: negative means unsupported or unavailable."""
    return {index: value for index, value in table.items() if value >= 0}


@dataclass(frozen=True, slots=True)
class PduReading:
    inlet_watts: dict[str, float]
    """Per inlet / device / input cord, keyed by its index as text."""
    energy_joules: dict[str, float]
    outlet_watts: dict[str, float]
    capacity_volt_amperes: float | None = None
    rated_current_amps: float | None = None


def _key(index: Oid) -> str:
    return ".".join(map(str, index))


def interpret(vendor: str, tables: Mapping[str, Table]) -> PduReading:
    """Turn the raw column tables of one vendor into watts and joules (see the module docstring)."""
    t = {name: _readings(table) for name, table in tables.items()}
    outlets: dict[str, float] = {}
    if vendor == "apc":
        inlets = {_key(i): v * 10.0 for i, v in t["power"].items()}
        energy = {_key(i): v * 0.1 * 1000.0 * JOULES_PER_WATT_HOUR for i, v in t["energy"].items()}
        outlets = {_key(i): float(v) for i, v in t.get("outlet_power", {}).items()}
        rated = max(t["rated_current"].values(), default=None)
        return PduReading(
            inlets, energy, outlets, rated_current_amps=float(rated) if rated is not None else None
        )
    if vendor == "raritan":
        values, digits = tables["inlet_value"], tables["inlet_digits"]

        def scaled(index: Oid, value: int, digit_table: Table) -> float:
            return float(value) / float(10 ** digit_table.get(index, 0))

        inlets, energy = {}, {}
        for index, value in values.items():
            *inlet, sensor = index
            if sensor == RARITAN_ACTIVE_POWER:
                inlets[_key(tuple(inlet))] = scaled(index, value, digits)
            elif sensor == RARITAN_ACTIVE_ENERGY:
                energy[_key(tuple(inlet))] = scaled(index, value, digits) * JOULES_PER_WATT_HOUR
        for index, value in tables.get("outlet_value", {}).items():
            *outlet, sensor = index
            if sensor == RARITAN_ACTIVE_POWER:
                outlets[_key(tuple(outlet))] = scaled(index, value, tables.get("outlet_digits", {}))
        return PduReading(inlets, energy, outlets)
    if vendor == "sentry4":
        inlets = {_key(i): float(v) for i, v in t["power"].items()}
        energy = {_key(i): v * 0.1 * 1000.0 * JOULES_PER_WATT_HOUR for i, v in t["energy"].items()}
        outlets = {_key(i): float(v) for i, v in t.get("outlet_power", {}).items()}
        capacity = sum(t["capacity"].values()) if t["capacity"] else None
        return PduReading(
            inlets, energy, outlets, capacity_volt_amperes=float(capacity) if capacity else None
        )
    if vendor == "eaton":
        inlets = {_key(i): float(v) for i, v in t["power"].items()}
        if not inlets:
            # No input total: add the per-phase readings of each input (strapping.input.phase).
            per_input: dict[str, float] = defaultdict(float)
            for index, value in t["input_power"].items():
                per_input[_key(index[:2])] += value
            inlets = dict(per_input)
        energy = {_key(i): v * JOULES_PER_WATT_HOUR for i, v in t["energy"].items()}
        outlets = {_key(i): float(v) for i, v in t.get("outlet_power", {}).items()}
        return PduReading(inlets, energy, outlets)
    raise ValueError(f"unknown vendor {vendor!r}")


class SnmpPduCollector(PolledCollector):
    settings: SnmpPduSettings

    def __init__(
        self,
        name: str,
        settings: SnmpPduSettings,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name, settings, registry=registry, clock=clock)
        self._pdu = settings.pdu or f"{settings.host}:{settings.port}"
        self._engine: Any = None
        self._energy = MonotonicSums()

    @classmethod
    def from_settings(cls, name: str, raw: Mapping[str, object]) -> Self:
        return cls(name, build_settings(SnmpPduSettings, name, raw))

    def _auth(self) -> Any:
        from pysnmp.hlapi.v3arch import asyncio as hlapi

        settings = self.settings
        if settings.version == "2c":
            assert settings.community is not None
            return hlapi.CommunityData(settings.community.reveal(), mpModel=1)
        return hlapi.UsmUserData(
            settings.username,
            authKey=settings.auth_key.reveal() if settings.auth_key else None,
            privKey=settings.priv_key.reveal() if settings.priv_key else None,
            authProtocol=getattr(hlapi, _AUTH[settings.auth_protocol]),
            privProtocol=getattr(hlapi, _PRIV[settings.priv_protocol]),
        )

    async def _walk(self, column: Oid) -> Table:
        from pysnmp.hlapi.v3arch import asyncio as hlapi

        settings = self.settings
        if self._engine is None:
            self._engine = hlapi.SnmpEngine()
        # pysnmp's own retries stay off: the poll loop retries with backoff and one deadline.
        target = await hlapi.UdpTransportTarget.create(
            (settings.host, settings.port), timeout=settings.timeout_seconds, retries=0
        )
        table: Table = {}
        walk = hlapi.bulk_walk_cmd(
            self._engine,
            self._auth(),
            target,
            hlapi.ContextData(contextName=settings.context_name),
            0,
            settings.max_repetitions,
            hlapi.ObjectType(hlapi.ObjectIdentity(".".join(map(str, column)))),
            lexicographicMode=False,
            lookupMib=False,
        )
        async for error_indication, error_status, _error_index, var_binds in walk:
            if error_indication:
                raise TransientCollectorError(f"{self.name}: SNMP {settings.host}: {error_indication}")
            if error_status:
                raise CollectorError(f"{self.name}: SNMP {settings.host}: {error_status.prettyPrint()}")
            for var_bind in var_binds:
                oid, value = tuple(var_bind[0]), var_bind[1]
                if oid[: len(column)] != column:
                    continue
                try:
                    table[oid[len(column) :]] = int(value)
                except (TypeError, ValueError):
                    continue  # NoSuchInstance / EndOfMibView and the like: no reading
        return table

    async def _poll(self) -> list[Sample]:
        settings = self.settings
        columns = COLUMNS[settings.vendor]
        tables: dict[str, Table] = {}
        for name, column in columns.items():
            if name in _OUTLET_COLUMNS and not settings.include_outlets:
                continue
            tables[name] = await self._walk(column)
        reading = interpret(settings.vendor, tables)
        now = self._clock()
        labels = {"rack": settings.rack, "pdu": self._pdu}
        if not reading.inlet_watts:
            raise CollectorError(
                f"{self.name}: {settings.vendor} PDU at {settings.host} reports no inlet power "
                "(unsupported on this model, or wrong vendor)"
            )
        samples: list[Sample] = []

        def add(metric: str, value: float | None, **extra: str) -> None:
            if value is not None:
                samples.append(
                    Sample(metric=metric, value=value, timestamp_seconds=now, labels={**labels, **extra})
                )

        add("pdu_power_watts", sum(reading.inlet_watts.values()))
        for inlet, watts in sorted(reading.inlet_watts.items()):
            add("pdu_inlet_power_watts", watts, inlet=inlet)
        if reading.energy_joules:
            energy = [(self._pdu, inlet, joules) for inlet, joules in reading.energy_joules.items()]
            for total in self._energy.update(energy).values():
                add("pdu_energy_joules_total", total)
        add("pdu_power_capacity_volt_amperes", reading.capacity_volt_amperes)
        add("pdu_rated_current_amps", reading.rated_current_amps)
        for outlet, watts in sorted(reading.outlet_watts.items()):
            add("pdu_outlet_power_watts", watts, outlet=outlet)
        return samples

    async def aclose(self) -> None:
        if self._engine is not None:
            self._engine.close_dispatcher()
            self._engine = None

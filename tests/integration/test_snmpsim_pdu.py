"""SNMP PDU collector against a REAL snmpsim agent on loopback serving the project's recordings
(tests/fixtures/snmp/*.snmprec, written from the vendors' MIB OIDs); values change during the tests
by rewriting a recording, which snmpsim re-indexes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from integration_peers import V3, SnmpSimulator, free_udp_port, run_collect_once, wait_for
from prometheus_client import CollectorRegistry

from collectors.base import CollectorError, Sample
from collectors.snmp_pdu import SnmpPduCollector, SnmpPduSettings
from collectors.support import TransientCollectorError, build_settings

pytestmark = pytest.mark.snmp


@pytest.fixture
async def agent() -> AsyncIterator[SnmpSimulator]:
    simulator = SnmpSimulator()
    try:
        await simulator.start()
        yield simulator
    finally:
        await simulator.stop()


def _collector(agent: SnmpSimulator, vendor: str, **raw: object) -> SnmpPduCollector:
    settings = build_settings(
        SnmpPduSettings,
        f"pdu-{vendor}",
        {"host": "127.0.0.1", "port": agent.port, "vendor": vendor, "rack": "rack-a", "pdu": vendor, **raw},
    )
    return SnmpPduCollector(f"pdu-{vendor}", settings, registry=CollectorRegistry())


def _values(samples: list[Sample] | tuple[Sample, ...], metric: str) -> dict[str, float]:
    return {s.labels.get("inlet", s.labels.get("outlet", "")): s.value for s in samples if s.metric == metric}


async def _read(agent: SnmpSimulator, vendor: str, **raw: object) -> list[Sample]:
    collector = _collector(agent, vendor, **raw)
    try:
        return list(await collector.collect())
    finally:
        await collector.aclose()


@pytest.mark.parametrize(
    ("vendor", "recording", "watts", "joules"),
    [
        ("apc", "apc-rpdu2", 1170.0, 70.6 * 3.6e6),  # hundredths of kW, tenths of kWh
        ("raritan", "raritan-pdu2", 1665.3, 74057676 * 3600.0),  # 16653 with 1 decimal digit; Wh
        ("sentry4", "sentry4", 1701.0 + 1265.0, (123456 + 98765) * 0.1 * 3.6e6),  # two units' cords
        ("eaton", "eaton-epdu", 1584.0, 2500000 * 3600.0),  # input total, not the phase reading
    ],
)
async def test_each_vendor_reads_inlet_power_and_energy(
    agent: SnmpSimulator, vendor: str, recording: str, watts: float, joules: float
) -> None:
    samples = await _read(agent, vendor, community=recording, include_outlets=True)
    assert _values(samples, "pdu_power_watts") == {"": pytest.approx(watts)}
    assert _values(samples, "pdu_energy_joules_total") == {"": pytest.approx(joules)}
    assert all(dict(s.labels)["rack"] == "rack-a" and s.labels["pdu"] == vendor for s in samples)


async def test_vendor_specific_details(agent: SnmpSimulator) -> None:
    raritan = await _read(agent, "raritan", community="raritan-pdu2", include_outlets=True)
    # Only activePower sensors of outlets, scaled by their own decimal digits; rmsCurrent is not power.
    assert _values(raritan, "pdu_outlet_power_watts") == {"1.1": 143.0, "1.2": 207.0, "1.3": 169.0}
    sentry = await _read(agent, "sentry4", community="sentry4")
    assert _values(sentry, "pdu_inlet_power_watts") == {"1.1": 1701.0, "2.1": 1265.0}
    assert _values(sentry, "pdu_power_capacity_volt_amperes") == {"": 2 * 10807.0}
    eaton = await _read(agent, "eaton", community="eaton-epdu", include_outlets=True)
    assert "0.3" not in _values(eaton, "pdu_outlet_power_watts")  # -1: outlet not metered


async def test_values_change_and_energy_resets_are_carried(agent: SnmpSimulator) -> None:
    collector = _collector(agent, "apc", community="apc-rpdu2")
    power_oid = "1.3.6.1.4.1.318.1.1.26.4.3.1.5.1"
    energy_oid = "1.3.6.1.4.1.318.1.1.26.4.3.1.9.1"
    readings: list[tuple[float, float]] = []

    async def reads(watts: float) -> bool:
        samples = await collector.collect()
        power = _values(samples, "pdu_power_watts")[""]
        readings.append((power, _values(samples, "pdu_energy_joules_total")[""]))
        return power == watts

    try:
        await collector.collect()
        agent.set_value("apc-rpdu2", power_oid, 243)
        agent.set_value("apc-rpdu2", energy_oid, 710)
        await wait_for(lambda: reads(2430.0), timeout_seconds=30, what="the new APC reading")
        assert readings[-1][1] == pytest.approx(71.0 * 3.6e6)
        # The energy counter is reset on the PDU: what we report keeps growing from where it was.
        agent.set_value("apc-rpdu2", power_oid, 250)
        agent.set_value("apc-rpdu2", energy_oid, 3)
        await wait_for(lambda: reads(2500.0), timeout_seconds=30, what="the reading after the reset")
        assert readings[-1][1] == pytest.approx((71.0 + 0.3) * 3.6e6)
    finally:
        await collector.aclose()


async def test_snmp_v3_with_auth_and_privacy(agent: SnmpSimulator) -> None:
    samples = await _read(agent, "sentry4", version="3", context_name="sentry4", **V3)
    assert _values(samples, "pdu_power_watts") == {"": 2966.0}
    wrong = {**V3, "auth_key": "not-the-key"}
    with pytest.raises(TransientCollectorError):
        await _read(agent, "sentry4", version="3", context_name="sentry4", retries=0, **wrong)


async def test_unsupported_readings_and_unreachable_agents(agent: SnmpSimulator) -> None:
    with pytest.raises(CollectorError, match="reports no inlet power") as caught:
        await _read(agent, "apc", community="apc-switched-unmetered")  # -1 everywhere
    assert not isinstance(caught.value, TransientCollectorError)
    with pytest.raises(CollectorError, match="reports no inlet power"):
        await _read(agent, "raritan", community="apc-rpdu2")  # the wrong vendor's OIDs
    silent = _collector(
        agent,
        "apc",
        community="apc-rpdu2",
        port=free_udp_port(),
        retries=1,
        timeout_seconds=0.3,
        interval_seconds=1.0,
    )
    try:
        with pytest.raises(TransientCollectorError):
            await silent.collect()
    finally:
        await silent.aclose()


async def test_wattscale_collect_reads_every_vendor(agent: SnmpSimulator, tmp_path: Path) -> None:
    recordings = {"apc": "apc-rpdu2", "raritan": "raritan-pdu2", "sentry4": "sentry4", "eaton": "eaton-epdu"}
    config = {
        "collectors": [
            {
                "name": f"pdu-{vendor}",
                "type": "snmp_pdu",
                "host": "127.0.0.1",
                "port": agent.port,
                "vendor": vendor,
                "community": recording,
                "rack": "rack-a",
                "pdu": vendor,
            }
            for vendor, recording in recordings.items()
        ]
    }
    status, lines, stderr = await run_collect_once(config, tmp_path)
    assert status == 0, stderr
    power = {line["labels"]["pdu"]: line["value"] for line in lines if line["metric"] == "pdu_power_watts"}
    assert power == {"apc": 1170.0, "raritan": 1665.3, "sentry4": 2966.0, "eaton": 1584.0}
    assert "community" not in stderr and "apc-rpdu2" not in stderr  # no secrets in logs

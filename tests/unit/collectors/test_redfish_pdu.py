from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry
from redfish_mockup import PASSWORD, USERNAME, RedfishMockup

from adapter.tls import generate_self_signed
from collectors.base import Collector, CollectorConfigError, CollectorError, Sample
from collectors.redfish_pdu import RedfishPduCollector, RedfishPduSettings, circuit_power_watts
from collectors.support import TransientCollectorError, build_settings

PDU = "/redfish/v1/PowerEquipment/RackPDUs/1"
Serve = Callable[[RedfishMockup], Awaitable[str]]


@pytest.fixture
def serve(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Serve:
    async def start(mockup: RedfishMockup) -> str:
        server = await aiohttp_server(mockup.app())
        return str(server.make_url("")).rstrip("/")

    return start


def _collector(registry: CollectorRegistry, url: str, **raw: object) -> RedfishPduCollector:
    settings = build_settings(
        RedfishPduSettings,
        "pdu",
        {
            "url": url,
            "rack": "rack-a",
            "username": USERNAME,
            "password": PASSWORD,
            "backoff_seconds": 0.0,
            **raw,
        },
    )
    return RedfishPduCollector("pdu", settings, registry=registry)


def _values(samples: list[Sample] | tuple[Sample, ...], metric: str) -> dict[str, float]:
    return {
        "/".join(v for k, v in s.labels.items() if k not in ("rack",)): s.value
        for s in samples
        if s.metric == metric
    }


async def test_reads_the_dmtf_mockup_and_follows_changes(serve: Serve, registry: CollectorRegistry) -> None:
    mockup = RedfishMockup()
    collector: Collector = _collector(registry, await serve(mockup), include_outlets=True)
    try:
        samples = list(await collector.collect())
        assert _values(samples, "pdu_power_watts") == {"1": 6438.0}
        assert _values(samples, "pdu_energy_joules_total") == {"1": 56438 * 3.6e6}
        assert _values(samples, "pdu_power_capacity_volt_amperes") == {"1": 20000.0}
        assert _values(samples, "pdu_circuit_rated_current_amps")["1/AC1/mains"] == 40.0
        assert _values(samples, "pdu_circuit_power_watts")["1/A/branch"] == 937.4
        # Mains AC1 has no total: its three line-to-neutral readings (a wye feed) add up.
        assert _values(samples, "pdu_circuit_power_watts")["1/AC1/mains"] == pytest.approx(
            198.4 + 231.5 + 58.1
        )
        assert _values(samples, "pdu_outlet_power_watts")["1/A1"] == 197.4
        assert "1/A4" not in _values(samples, "pdu_outlet_power_watts")  # the mockup gives A4 no reading
        assert len(_values(samples, "pdu_outlet_power_watts")) == 9
        assert all(s.labels["rack"] == "rack-a" for s in samples)

        metrics = mockup.document(f"{PDU}/Metrics")
        metrics["PowerWatts"]["Reading"] = 7012.5
        metrics["EnergykWh"]["Reading"] = 56440
        mockup.document(f"{PDU}/Branches/B")["BreakerState"] = "Tripped"
        samples = list(await collector.collect())
        assert _values(samples, "pdu_power_watts") == {"1": 7012.5}
        assert _values(samples, "pdu_energy_joules_total") == {"1": 56440 * 3.6e6}
        assert _values(samples, "pdu_circuit_breaker_tripped")["1/B/branch"] == 1.0

        # Someone runs ResetMetrics: the PDU's counter restarts, ours keeps counting.
        metrics["EnergykWh"]["Reading"] = 1
        samples = list(await collector.collect())
        assert _values(samples, "pdu_energy_joules_total") == {"1": (56440 + 1) * 3.6e6}
        assert mockup.logins == 1  # one session for every poll
    finally:
        await collector.aclose()
    assert mockup.deleted_sessions == ["1"]


async def test_an_expired_session_is_renewed_once(serve: Serve, registry: CollectorRegistry) -> None:
    mockup = RedfishMockup()
    collector = _collector(registry, await serve(mockup))
    try:
        await collector.collect()
        mockup.tokens.clear()  # the PDU dropped the session
        assert _values(list(await collector.collect()), "pdu_power_watts") == {"1": 6438.0}
        assert mockup.logins == 2
    finally:
        await collector.aclose()


async def test_basic_auth_and_wrong_credentials(serve: Serve, registry: CollectorRegistry) -> None:
    mockup = RedfishMockup(auth="basic")
    url = await serve(mockup)
    collector = _collector(registry, url, auth="basic", pdu_ids=["1"])
    wrong = _collector(registry, url, auth="basic", password="guess")
    try:
        assert _values(list(await collector.collect()), "pdu_power_watts") == {"1": 6438.0}
        with pytest.raises(CollectorError, match="HTTP 401; check the credentials") as caught:
            await wrong.collect()
        assert not isinstance(caught.value, TransientCollectorError)
    finally:
        await collector.aclose()
        await wrong.aclose()


async def test_malformed_answers_and_timeouts(serve: Serve, registry: CollectorRegistry) -> None:
    mockup = RedfishMockup(auth="none")
    collector = _collector(
        registry, await serve(mockup), auth="none", timeout_seconds=0.2, interval_seconds=1.0
    )
    try:
        mockup.broken_paths.add(f"{PDU}/Metrics")
        with pytest.raises(CollectorError, match="Metrics: answer is not JSON"):
            await collector.collect()
        mockup.broken_paths.clear()
        mockup.document(f"{PDU}/Metrics")["PowerWatts"]["Reading"] = None  # sensor disabled
        # No total: the Mains circuit's lines stand in for it.
        assert _values(list(await collector.collect()), "pdu_power_watts") == {"1": pytest.approx(488.0)}
        mockup.delay_seconds = 5.0
        with pytest.raises(TransientCollectorError, match="no answer within"):
            await collector.collect()
        labels = {"collector": "pdu", "reason": "transient"}
        assert registry.get_sample_value("wattscale_collector_source_errors_total", labels) == 1.0
    finally:
        mockup.delay_seconds = 0.0
        await collector.aclose()


def test_settings_problems_are_listed_together() -> None:
    with pytest.raises(CollectorConfigError) as caught:
        RedfishPduCollector.from_settings("pdu", {"url": "pdu-a3", "rack": "", "auth": "kerberos"})
    assert caught.value.problems == [
        "auth: want one of session, basic, none, got 'kerberos'",
        "url: want http(s)://host[:port], got 'pdu-a3'",
        "rack: must not be empty",
        "username, password: required with auth 'session'",
    ]


def test_delta_feed_lines_are_summed_when_there_is_no_neutral() -> None:
    lines = {
        "Line1ToLine2": {"Reading": 100.0},
        "Line2ToLine3": {"Reading": 110.0},
        "Line3ToLine1": {"Reading": 90.0},
    }
    assert circuit_power_watts({"PolyPhasePowerWatts": lines}) == 300.0
    assert circuit_power_watts({"PowerWatts": {"Reading": 42}, "PolyPhasePowerWatts": lines}) == 42.0


async def test_tls_with_the_pdus_ca_or_without_verification(
    aiohttp_server: Callable[..., Awaitable[TestServer]], registry: CollectorRegistry, tmp_path: Path
) -> None:
    cert_file, key_file = generate_self_signed(tmp_path, ["127.0.0.1"], common_name="pdu.test")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    server = await aiohttp_server(RedfishMockup().app(), ssl=context)
    url = str(server.make_url("")).rstrip("/")
    assert url.startswith("https://")
    untrusted = _collector(registry, url)
    trusted = _collector(registry, url, tls_ca_file=str(cert_file))
    unverified = _collector(registry, url, tls_insecure_skip_verify=True)
    try:
        with pytest.raises(CollectorError, match=r"certificate verify failed.*set tls_ca_file") as caught:
            await untrusted.collect()
        assert not isinstance(caught.value, TransientCollectorError)
        for collector in (trusted, unverified):
            assert _values(list(await collector.collect()), "pdu_power_watts") == {"1": 6438.0}
    finally:
        for collector in (untrusted, trusted, unverified):
            await collector.aclose()


async def test_a_malformed_pdu_collection_is_reported_and_counted(
    serve: Serve, registry: CollectorRegistry
) -> None:
    mockup = RedfishMockup(auth="none")
    collector = _collector(registry, await serve(mockup), auth="none")
    try:
        mockup.document("/redfish/v1/PowerEquipment/RackPDUs")["Members"].append({"Name": "no link"})
        with pytest.raises(CollectorError, match=r"RackPDUs has a member without @odata\.id"):
            await collector.collect()
        labels = {"collector": "pdu", "reason": "invalid_answer"}
        assert registry.get_sample_value("wattscale_collector_source_errors_total", labels) == 1.0
    finally:
        await collector.aclose()

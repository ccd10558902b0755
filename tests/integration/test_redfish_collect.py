"""`wattscale collect --config F --once` against a Redfish service serving the DMTF PDU mockup."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pandas as pd
from aiohttp.test_utils import TestServer
from integration_peers import load_unit_helper, run_collect_once
from prometheus_client import CollectorRegistry

from collectors.redfish_pdu import RedfishPduCollector, RedfishPduSettings
from collectors.support import build_settings
from estimators.fleet import estimate_fleet

mockup_module = load_unit_helper("redfish_mockup")


async def test_collect_reads_the_pdu_through_a_session(
    aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path
) -> None:
    mockup = mockup_module.RedfishMockup()
    server = await aiohttp_server(mockup.app())
    url = str(server.make_url("")).rstrip("/")
    mockup.document("/redfish/v1/PowerEquipment/RackPDUs/1/Metrics")["PowerWatts"]["Reading"] = 5120.5
    config = {
        "collectors": [
            {
                "name": "pdu-a",
                "type": "redfish_pdu",
                "url": url,
                "rack": "rack-a",
                "username": mockup_module.USERNAME,
                "password": mockup_module.PASSWORD,
            }
        ]
    }
    status, lines, stderr = await run_collect_once(config, tmp_path)
    assert status == 0, stderr
    (power,) = [line for line in lines if line["metric"] == "pdu_power_watts"]
    assert (power["value"], power["labels"]) == (5120.5, {"rack": "rack-a", "pdu": "1"})
    assert mockup.logins == 1 and mockup.deleted_sessions == ["1"]  # the session is closed on exit

    config["collectors"][0]["password"] = "wrong"
    status, _, stderr = await run_collect_once(config, tmp_path)
    assert status == 1
    assert "login refused" in stderr and "wrong" not in stderr


async def test_rack_power_is_the_pdu_inlet_power(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    mockup = mockup_module.RedfishMockup(auth="none")
    server = await aiohttp_server(mockup.app())
    settings = build_settings(
        RedfishPduSettings,
        "pdu-a",
        {"url": str(server.make_url("")).rstrip("/"), "rack": "rack-a", "auth": "none"},
    )
    collector = RedfishPduCollector("pdu-a", settings, registry=CollectorRegistry())
    try:
        samples = list(await collector.collect())
    finally:
        await collector.aclose()
    frame = pd.DataFrame(
        [
            {"metric": s.metric, "value": s.value, "timestamp_seconds": s.timestamp_seconds, **s.labels}
            for s in samples
        ]
    )
    now = max(s.timestamp_seconds for s in samples)
    racks = pd.DataFrame([{"rack": "rack-a", "cap_watts": 8000.0, "margin_ratio": 0.1}])
    estimate = estimate_fleet(frame, node_racks={}, racks=racks, window_seconds=60.0, now_seconds=now)
    rack = estimate.racks.set_index("rack").loc["rack-a"]
    # Metrics.PowerWatts of the mockup, not the sum of its outlets or branches.
    assert rack["rack_power_watts"] == 6438.0
    assert not rack["estimated"]
    assert rack["headroom_watts"] == 8000.0 - rack["margin_watts"] - 6438.0

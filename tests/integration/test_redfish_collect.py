"""`wattscale collect --config F --once` against a Redfish service serving the DMTF PDU mockup."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp.test_utils import TestServer
from integration_peers import load_unit_helper, run_collect_once

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

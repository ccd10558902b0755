"""The live page in real headless Chromium (Debian `chromium`), driven over the DevTools protocol: it
renders the API's numbers, follows a new store snapshot without a reload, and a screenshot is written."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from api_fixtures import SAMPLE_TIME, example_app

from adapter.api import STORE
from adapter.catalogue import POWER_BUDGETS
from adapter.store import ObjectRef, StoredValue

pytestmark = pytest.mark.browser

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1280,900",
)
# Every figure and workload cell the page shows, with the exact value it carries in data-value.
READ_PAGE = """JSON.stringify({
  generation: (document.getElementById("status") || { dataset: {} }).dataset.generation || null,
  racks: Object.fromEntries([...document.querySelectorAll("[data-rack]")].map((card) => [card.dataset.rack,
    Object.fromEntries([...card.querySelectorAll("[data-value]")].map((e) => [e.dataset.field, Number(e.dataset.value)]))])),
  workloads: Object.fromEntries([...document.querySelectorAll("[data-workload]")].map((row) => [row.dataset.workload,
    Object.fromEntries([...row.querySelectorAll("[data-value]")].map((e) => [e.dataset.field, Number(e.dataset.value)]))])),
})"""


class Browser:
    def __init__(self, process: asyncio.subprocess.Process, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.process = process
        self.socket = socket
        self._ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        await self.socket.send_json({"id": message_id, "method": method, "params": params})
        async with asyncio.timeout(30):
            while True:
                answer: dict[str, Any] = json.loads((await self.socket.receive()).data)
                if answer.get("id") == message_id:
                    assert "error" not in answer, answer
                    return answer["result"]  # type: ignore[no-any-return]

    async def read_page(self) -> dict[str, Any]:
        result = await self.send("Runtime.evaluate", expression=READ_PAGE, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return json.loads(result["result"]["value"])  # type: ignore[no-any-return]

    async def wait_for(self, condition: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while True:
            page = await self.read_page()
            if condition(page):
                return page
            assert time.monotonic() < deadline, f"timed out waiting for the page to show {what}: {page}"
            await asyncio.sleep(0.1)  # polling interval of a condition with a deadline


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Callable[[str], Awaitable[Browser]]]:
    binary = shutil.which("chromium")
    assert binary, "chromium is not installed: run .ci/setup.d/15-monitoring.sh"
    started: list[Browser] = []
    session = aiohttp.ClientSession()

    async def open_page(url: str) -> Browser:
        profile = tmp_path / f"profile-{len(started)}"
        process = await asyncio.create_subprocess_exec(
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            url,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        async with asyncio.timeout(60):
            while not (port_file.exists() and port_file.read_text().strip()):
                assert process.returncode is None, "chromium exited"
                await asyncio.sleep(0.1)  # chromium writes the file once its DevTools server listens
        port = port_file.read_text().split()[0]
        async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t["type"] == "page")
        socket = await session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024)
        browser = Browser(process, socket)
        started.append(browser)
        return browser

    yield open_page
    for browser in started:
        await browser.socket.close()
        browser.process.terminate()
        await browser.process.wait()
    await session.close()


async def _api_value(session: aiohttp.ClientSession, url: str) -> float | None:
    async with session.get(url) as response:
        if response.status != 200:
            return None
        items = (await response.json())["items"]
    from kubernetes.utils import parse_quantity

    return float(parse_quantity(items[0]["value"])) if items else None  # type: ignore[no-untyped-call]


async def test_page_shows_the_apis_numbers_and_follows_a_new_snapshot(
    aiohttp_server: ServerFactory, browser: Callable[[str], Awaitable[Browser]]
) -> None:
    app = example_app()
    server = await aiohttp_server(app)
    api = str(server.make_url("/apis/custom.metrics.k8s.io/v1beta2"))
    page = await browser(str(server.make_url("/ui/")))
    shown = await page.wait_for(lambda p: p["generation"] is not None, "its first data")

    async with aiohttp.ClientSession() as session:
        headroom = await _api_value(session, f"{api}/powerbudgets.wattscale.io/r12/rack_power_headroom_watts")
        llm_power = await _api_value(session, f"{api}/namespaces/inference/deployments.apps/llm/power_watts")
        chat = await _api_value(
            session, f"{api}/namespaces/inference/inferenceservices.serving.kserve.io/chat/watts_per_token"
        )
    assert shown["racks"] == {"r12": {"headroom_watts": headroom}}
    assert shown["workloads"] == {
        "inference/Deployment/llm": {"power_watts": llm_power},
        "inference/InferenceService/chat": {"watts_per_token": chat},
    }

    # A new pipeline pass: the rack now has power and a cap. The open page shows them without a reload.
    store = app[STORE]
    values = dict(store.snapshot().values)
    rack = ObjectRef(POWER_BUDGETS, "", "r12")
    values[(rack, "rack_power_watts")] = StoredValue(16000.0, SAMPLE_TIME, 60.0, {"estimated": "false"})
    values[(rack, "rack_power_cap_watts")] = StoredValue(17000.0, SAMPLE_TIME, 60.0)
    values[(rack, "rack_power_headroom_watts")] = StoredValue(150.0, SAMPLE_TIME, 60.0)
    store.put_all(values)
    updated = await page.wait_for(lambda p: p["generation"] == str(store.generation), "the new snapshot")
    assert updated["racks"]["r12"] == {"power_watts": 16000.0, "cap_watts": 17000.0, "headroom_watts": 150.0}


async def test_screenshot_of_the_page_is_written(aiohttp_server: ServerFactory, tmp_path: Path) -> None:
    binary = shutil.which("chromium")
    assert binary, "chromium is not installed: run .ci/setup.d/15-monitoring.sh"
    server = await aiohttp_server(example_app())
    shot = tmp_path / "page.png"
    process = await asyncio.create_subprocess_exec(
        binary,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=3000",
        f"--screenshot={shot}",
        str(server.make_url("/ui/")),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(90):
        assert await process.wait() == 0
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (1280, 900)

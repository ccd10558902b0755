"""`wattscale top`: the API's values as a sorted table with units, against the API app over a fixed store
(exact numbers) and against a running `wattscale demo` (the command as a user runs it)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from api_fixtures import example_app

from adapter.commands.top import VIEWS, direct_fetch, headroom_bar, read_view, render_table

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


async def test_pods_table_has_the_apis_fresh_values_and_dashes_for_missing_ones(
    aiohttp_server: ServerFactory,
) -> None:
    server = await aiohttp_server(example_app())
    async with direct_fetch(str(server.make_url("/")), verify=True) as fetch:
        rows = await read_view(fetch, VIEWS["pods"], "inference")
    # Values of api_fixtures.example_store; chat-5c8b-klmno's GPU power is stale, so left out.
    assert rows == {
        "llm-7d9f-abcde": {"watts_per_token": 1.5, "gpu_power_watts": 398.0},
        "llm-7d9f-fghij": {"watts_per_token": 0.25, "gpu_power_watts": 148.0},
        "chat-5c8b-klmno": {"watts_per_token": 2.0},
    }
    table = render_table(VIEWS["pods"], rows).splitlines()
    assert table[0].split() == ["POD", "POWER(W)", "GPU(W)", "J/TOKEN", "TOKENS/S"]
    # No pod has power_watts here (the sort column), so they are in name order.
    assert table[1].split() == ["chat-5c8b-klmno", "-", "-", "2.000", "-"]
    assert table[2].split() == ["llm-7d9f-abcde", "-", "398", "1.500", "-"]
    assert table[3].split() == ["llm-7d9f-fghij", "-", "148", "0.250", "-"]


async def test_a_refused_request_is_an_error_with_the_status_message(aiohttp_server: ServerFactory) -> None:
    from adapter.commands.top import TopError, View

    server = await aiohttp_server(example_app())
    bogus = View("X", "pods", True, VIEWS["pods"].columns[:1], "power_watts")
    async with direct_fetch(str(server.make_url("/")), verify=True) as fetch:
        with pytest.raises(TopError, match=r"^400: "):
            await read_view(fetch, bogus, "Not_A_Namespace")


def test_headroom_bar_shows_the_share_of_the_cap_in_use() -> None:
    assert headroom_bar(8500, 17000) == "[##########----------]  50%"
    assert headroom_bar(18700, 17000) == "[####################] 110% OVER CAP"
    assert headroom_bar(None, 17000) == "-"


def _top(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adapter.cli", "top", *args], capture_output=True, text=True, timeout=60
    )


def test_top_against_the_demo(demo_url: str) -> None:
    racks = _top("racks", "--server", demo_url, "-k")
    assert racks.returncode == 0, racks.stderr
    lines = racks.stdout.splitlines()
    assert lines[0].split() == ["RACK", "POWER(W)", "CAP(W)", "HEADROOM(W)", "OVERDRAW(W)", "CAP", "USED"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"rack-a", "rack-b"}
    assert all(row[2] == "17,000" for row in rows.values())
    pods = _top("pods", "-n", "llm", "--server", demo_url, "-k")
    assert pods.returncode == 0, pods.stderr
    power = [float(line.split()[1].replace(",", "")) for line in pods.stdout.splitlines()[1:]]
    assert len(power) == 15 and power == sorted(power, reverse=True)


def test_unverified_self_signed_server_is_refused_with_a_message(demo_url: str) -> None:
    result = _top("nodes", "--server", demo_url)
    assert result.returncode == 1
    assert "certificate verify failed" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def demo_url() -> Any:
    import signal
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with subprocess.Popen(
        [sys.executable, "-m", "adapter.cli", "demo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as demo:
        assert demo.stdout is not None
        for line in demo.stdout:  # printed once it is listening
            if line.startswith("Stop with Ctrl-C"):
                break
        yield f"https://127.0.0.1:{port}"
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=30)


def test_watch_redraws_until_interrupted(demo_url: str) -> None:
    import signal

    from adapter.commands.top import CLEAR_SCREEN

    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "adapter.cli",
            "top",
            "nodes",
            "--server",
            demo_url,
            "-k",
            "--watch",
            "--interval",
            "0.2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as watch:
        assert watch.stdout is not None
        frames = 0
        for line in watch.stdout:  # each frame starts by clearing the screen, then the header
            if line.startswith(CLEAR_SCREEN):
                assert line.removeprefix(CLEAR_SCREEN).split() == ["NODE", "POWER(W)", "GPU(W)"]
                frames += 1
                if frames == 2:
                    break
        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=30) == 0

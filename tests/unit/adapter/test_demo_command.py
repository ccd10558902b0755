"""`wattscale demo` starts, prints curl commands, and those commands return metrics as printed."""

from __future__ import annotations

import json
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest


def _children(pid: int) -> list[int]:
    from pathlib import Path

    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    from pathlib import Path

    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def demo() -> Iterator[subprocess.Popen[str]]:
    port = free_port()
    with subprocess.Popen(
        [sys.executable, "-m", "adapter.cli", "demo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        yield process
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=20)


def test_printed_curl_commands_return_metrics(demo: subprocess.Popen[str]) -> None:
    assert demo.stdout is not None
    printed: list[str] = []
    for line in demo.stdout:  # the demo prints its commands once it is listening
        printed.append(line.rstrip())
        if line.startswith("Stop with Ctrl-C"):
            break
    commands = [line.strip() for line in printed if line.strip().startswith("curl ")]
    assert len(commands) == 3, printed
    kinds = []
    for command in commands:
        result = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=30, check=True)
        document = json.loads(result.stdout)
        assert document["kind"] == "MetricValueList", document
        assert document["items"], document
        for item in document["items"]:
            assert float(item["value"].rstrip("m")) > 0
        kinds.append(document["items"][0]["describedObject"]["kind"])
    assert kinds == ["Pod", "Deployment", "Node"]
    children = _children(demo.pid)
    assert children, "collectors and estimation run in a worker process"
    demo.send_signal(signal.SIGTERM)  # how Kubernetes stops a pod
    assert demo.wait(timeout=30) == 0
    # The worker is stopped before the server exits; multiprocessing's resource tracker ends by
    # itself once it reads its pipe's end, a moment after.
    deadline = time.monotonic() + 10.0
    while [pid for pid in children if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in children if _alive(pid)], "SIGTERM left worker processes behind"
    assert demo.stderr is not None
    assert "authentication and authorization are OFF" in demo.stderr.read()

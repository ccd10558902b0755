"""`wattscale export` refuses what it cannot do with a message and status 2, never a traceback."""

from __future__ import annotations

import socket

import pytest

from adapter.cli import main


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_prometheus_and_reversed_range(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    assert main(["export", "--prometheus-url", url, "--start", "1790000000", "--end", "1790000060"]) == 2
    assert "wattscale export:" in capsys.readouterr().err
    assert main(["export", "--prometheus-url", url, "--start", "1790000060", "--end", "1790000000"]) == 2
    assert "--end must be after --start" in capsys.readouterr().err
    assert main(["export", "--prometheus-url", url, "--start", "0", "--end", "1", "--sources", "nope"]) == 2
    assert "unknown collector 'nope'" in capsys.readouterr().err


def test_times_as_rfc3339_and_durations(capsys: pytest.CaptureFixture[str]) -> None:
    from adapter.cli import build_parser

    args = build_parser().parse_args(
        [
            "export",
            "--prometheus-url",
            "http://x",
            "--start",
            "2026-09-21T12:00:00Z",
            "--end",
            "1790000000.5",
            "--step",
            "1m",
        ]
    )
    assert (args.start, args.end, args.step) == (1789992000.0, 1790000000.5, 60.0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "--prometheus-url", "x", "--start", "soon", "--end", "1"])
    assert "not a time" in capsys.readouterr().err

"""Every subcommand is offered and says what it does."""

from __future__ import annotations

import pytest

from adapter.cli import ALIASES, COMMANDS, build_parser, main


def test_every_command_is_offered_with_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    listing = capsys.readouterr().out
    for name in COMMANDS:
        assert f"    {name}" in listing
    aliases = {alias for names in ALIASES.values() for alias in names}
    offered = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert offered == set(COMMANDS) | aliases


def test_version() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0


@pytest.mark.parametrize(
    ("argv", "option", "seconds"),
    [
        (["simulate", "--duration", "2h"], "duration", 7200.0),
        (["simulate", "--actuation-delay", "500ms"], "actuation_delay", 0.5),
        (["operator", "--interval-seconds", "2s"], "interval_seconds", 2.0),
        (["demo", "--exit-after", "1m30s"], "exit_after", 90.0),
        (["top", "nodes", "--interval", "5s"], "interval", 5.0),
        (["estimate", "watts-per-token", "--input", "-", "--window", "30s"], "window", 30.0),
    ],
)
def test_every_command_reads_durations_alike(argv: list[str], option: str, seconds: float) -> None:
    assert getattr(build_parser().parse_args(argv), option) == seconds


def test_a_malformed_duration_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["simulate", "--duration", "2 fortnights"])
    assert exit_info.value.code == 2
    assert "not a duration" in capsys.readouterr().err

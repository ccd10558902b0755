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

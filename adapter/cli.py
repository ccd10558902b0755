"""`wattscale`: one console script for both programs, one module per subcommand.

The metrics server's commands live in `adapter.commands`, the power operator's in
`poweroperator.commands`. Each command module exposes `HELP: str`, `configure(parser)` and
`run(args) -> int`. Adding a command is one module plus one line in `COMMANDS`; heavy imports stay
inside `run`. Every command that takes `--log-level` logs JSON lines (`adapter.logs`), set up here once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from adapter import __version__, logs

COMMANDS: dict[str, str] = {
    "serve": "adapter.commands.serve",
    "demo": "adapter.commands.demo",
    "collect": "adapter.commands.collect",
    "manifests": "adapter.commands.manifests",
    "agent": "adapter.commands.agent",
    "estimate": "adapter.commands.estimate",
    "operator": "poweroperator.commands.operator",
    "simulate": "poweroperator.commands.simulate",
    "top": "adapter.commands.top",
}
ALIASES: dict[str, list[str]] = {"operator": ["capper"]}
"""`capper` is the operator's name before it configured KEDA; kept for one release."""


def _command_module(name: str) -> ModuleType:
    return importlib.import_module(COMMANDS[name])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wattscale", description="Power metrics for Kubernetes autoscaling."
    )
    parser.add_argument("--version", action="version", version=f"wattscale {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = _command_module(name)
        sub = subparsers.add_parser(
            name, aliases=ALIASES.get(name, []), help=module.HELP, description=module.HELP
        )
        module.configure(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "log_level", None):
        logs.configure(args.log_level)
    try:
        code: int = args._run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (`| head`) went away: that is how pipelines end, not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())

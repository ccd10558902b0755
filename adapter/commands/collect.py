"""`wattscale collect`: poll the configured collectors and print what they return."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

HELP = "poll each configured collector and print its samples, one JSON line per sample"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="the same YAML file `serve` reads")
    parser.add_argument(
        "--once", action="store_true", help="poll once and exit (default: poll every interval)"
    )
    parser.add_argument("--collector", action="append", help="only this collector (repeatable)")


async def _collect(args: argparse.Namespace) -> int:
    from adapter.plugins import load_collectors
    from adapter.settings import Settings

    settings = Settings.from_file(args.config)
    wanted = [c for c in settings.collectors if not args.collector or c.name in args.collector]
    collectors = load_collectors((c.name, c.type, c.raw) for c in wanted)
    failures = 0
    try:
        while True:
            for collector in collectors:
                try:
                    samples = await collector.collect()
                except Exception as exc:  # report every source's failure, then go on to the next one
                    failures += 1
                    print(f"{collector.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
                    continue
                for sample in samples:
                    print(json.dumps({"collector": collector.name, **sample.to_json()}, sort_keys=True))
            sys.stdout.flush()
            if args.once:
                return 1 if failures else 0
            started = time.monotonic()
            await asyncio.sleep(
                max(min(c.interval_seconds for c in collectors) - (time.monotonic() - started), 0.1)
            )
    finally:
        for collector in collectors:
            await collector.aclose()


def run(args: argparse.Namespace) -> int:
    from adapter.errors import ConfigError

    try:
        return asyncio.run(_collect(args))
    except ConfigError as exc:
        print(f"wattscale collect: {exc}", file=sys.stderr)
        return 2

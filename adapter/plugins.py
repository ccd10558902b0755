"""Collectors from the config file, found by entry point: light enough for the serving process,
which checks nothing here itself (its worker builds the collectors) but must not import pandas."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from adapter.settings import Settings
from collectors.base import Collector


def settings_collectors(settings: Settings) -> list[Collector]:
    """The collectors the config file lists (`ConfigError` with every problem)."""
    return load_collectors((c.name, c.type, c.raw) for c in settings.collectors)


def load_collectors(entries: Iterable[tuple[str, str, Mapping[str, object]]]) -> list[Collector]:
    """Build collectors from (name, entry-point type, raw settings); every problem is reported at once."""
    from importlib.metadata import entry_points

    from adapter.errors import ConfigError
    from collectors.base import CollectorConfigError

    available = {ep.name: ep for ep in entry_points(group="wattscale.collectors")}
    collectors: list[Collector] = []
    problems: list[str] = []
    for name, kind, raw in entries:
        entry_point = available.get(kind)
        if entry_point is None:
            problems.append(
                f"collectors.{name}.type: unknown collector {kind!r}; installed: {', '.join(sorted(available))}"
            )
            continue
        try:
            factory = entry_point.load()
            collector = factory.from_settings(name, raw)
        except CollectorConfigError as exc:
            problems.extend(f"collectors.{name}.{problem}" for problem in exc.problems)
            continue
        except (ImportError, AttributeError) as exc:
            problems.append(f"collectors.{name}.type: {kind!r} cannot be loaded: {exc}")
            continue
        if isinstance(collector, Collector):
            collectors.append(collector)
        else:
            missing = [
                a for a in ("name", "interval_seconds", "poll_timeout_seconds") if not hasattr(collector, a)
            ]
            problems.append(
                f"collectors.{name}.type: {kind!r} is not a Collector (missing {', '.join(missing)})"
            )
    if problems:
        raise ConfigError(problems)
    return collectors

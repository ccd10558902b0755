"""The adapter's configuration file, parsed once and validated before the server binds.

Like KEDA's `Validate()`, parsing collects every problem with its key and raises one `ConfigError`,
so a user fixes the whole file in one go.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adapter.errors import ConfigError
from collectors.label_selectors import Selector, SelectorError, parse_selector


@dataclass(frozen=True, slots=True, kw_only=True)
class RackSettings:
    name: str
    cap_watts: float
    margin_ratio: float = 0.1
    node_selector: Selector = field(default_factory=Selector)


@dataclass(frozen=True, slots=True, kw_only=True)
class CollectorSettings:
    name: str
    type: str
    """The entry-point name in the `wattscale.collectors` group."""
    raw: Mapping[str, object]
    """Everything else, handed to the collector's `from_settings`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    window_seconds: float = 60.0
    max_age_seconds: float = 120.0
    estimate_interval_seconds: float = 1.0
    collectors: tuple[CollectorSettings, ...] = ()
    racks: tuple[RackSettings, ...] = ()

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Settings:
        problems: list[str] = []
        known = {"window_seconds", "max_age_seconds", "estimate_interval_seconds", "collectors", "racks"}
        problems += [f"{key}: unknown setting" for key in raw if key not in known]

        def number(key: str, default: float, where: Mapping[str, Any] = raw, prefix: str = "") -> float:
            value = where.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                problems.append(f"{prefix}{key}: want a positive number, got {value!r}")
                return default
            return float(value)

        window = number("window_seconds", 60.0)
        max_age = number("max_age_seconds", 120.0)
        interval = number("estimate_interval_seconds", 1.0)
        collectors: list[CollectorSettings] = []
        names: set[str] = set()
        for index, entry in enumerate(raw.get("collectors") or []):
            prefix = f"collectors[{index}]."
            if not isinstance(entry, Mapping):
                problems.append(f"{prefix[:-1]}: want a mapping, got {entry!r}")
                continue
            name, kind = entry.get("name"), entry.get("type")
            if not isinstance(kind, str) or not kind:
                problems.append(f"{prefix}type: required (the collector's entry-point name)")
                continue
            name = name if isinstance(name, str) and name else kind
            if name in names:
                problems.append(f"{prefix}name: {name!r} is used twice")
            names.add(name)
            rest = {key: value for key, value in entry.items() if key not in ("name", "type")}
            collectors.append(CollectorSettings(name=name, type=kind, raw=rest))
        racks: list[RackSettings] = []
        for index, entry in enumerate(raw.get("racks") or []):
            prefix = f"racks[{index}]."
            if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
                problems.append(f"{prefix}name: required")
                continue
            unknown = set(entry) - {"name", "cap_watts", "margin_ratio", "node_selector"}
            problems += [f"{prefix}{key}: unknown setting" for key in sorted(unknown)]
            cap = number("cap_watts", 1.0, entry, prefix) if "cap_watts" in entry else None
            if cap is None:
                problems.append(f"{prefix}cap_watts: required")
                continue
            margin = entry.get("margin_ratio", 0.1)
            if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0 <= margin < 1:
                problems.append(f"{prefix}margin_ratio: want a number in [0, 1), got {margin!r}")
                margin = 0.1
            try:
                selector = parse_selector(entry.get("node_selector") or f"wattscale.io/rack={entry['name']}")
            except SelectorError as exc:
                problems.append(f"{prefix}node_selector: {exc}")
                continue
            racks.append(
                RackSettings(
                    name=entry["name"], cap_watts=cap, margin_ratio=float(margin), node_selector=selector
                )
            )
        if max_age < window / 4:
            problems.append(
                f"max_age_seconds: {max_age} is shorter than a quarter of window_seconds {window}"
            )
        if problems:
            raise ConfigError(problems)
        return cls(
            window_seconds=window,
            max_age_seconds=max_age,
            estimate_interval_seconds=interval,
            collectors=tuple(collectors),
            racks=tuple(racks),
        )

    @classmethod
    def from_file(cls, path: Path) -> Settings:
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError([f"{path}: {exc.strerror}"]) from exc
        except yaml.YAMLError as exc:
            raise ConfigError([f"{path}: not valid YAML: {exc}"]) from exc
        if not isinstance(raw, Mapping):
            raise ConfigError([f"{path}: want a mapping at the top level"])
        return cls.from_mapping(raw)

"""The adapter's configuration file, parsed once and validated before the server binds.

Like KEDA's `Validate()`, parsing collects every problem with its key and raises one `ConfigError`,
so a user fixes the whole file in one go.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from adapter.errors import ConfigError
from collectors.config_fields import read_fields, setting
from collectors.label_selectors import EVERYTHING, Requirement, Selector, SelectorError, parse_selector


def _node_selector(text: object) -> Selector:
    if not isinstance(text, str):
        raise ValueError(f"want a label selector string, got {text!r}")
    try:
        return parse_selector(text)
    except SelectorError as exc:
        raise ValueError(str(exc)) from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class RackSettings:
    name: str
    cap_watts: float = setting(above=0)
    margin_ratio: float = setting(0.1, minimum=0, below=1)
    # setting() is dataclasses.field with bounds; the default is a frozen (shared, immutable) Selector.
    node_selector: Selector = setting(EVERYTHING, parse=_node_selector)  # noqa: RUF009
    """Default (an empty selector in the file too): `wattscale.io/rack=<name>`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CollectorSettings:
    name: str
    type: str
    """The entry-point name in the `wattscale.collectors` group."""
    raw: Mapping[str, object]
    """Everything else, handed to the collector's `from_settings`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    window_seconds: float = setting(60.0, above=0)
    max_age_seconds: float = setting(120.0, above=0)
    estimate_interval_seconds: float = setting(1.0, above=0)
    collectors: tuple[CollectorSettings, ...] = ()
    racks: tuple[RackSettings, ...] = ()

    def problems(self) -> list[str]:
        if self.max_age_seconds < self.window_seconds / 4:
            return [
                f"max_age_seconds: {self.max_age_seconds} is shorter than a quarter of window_seconds "
                f"{self.window_seconds}"
            ]
        return []

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Settings:
        problems: list[str] = []
        top = read_fields(cls, raw, problems, also_known=("collectors", "racks"))
        collectors = _collectors(raw.get("collectors") or [], problems)
        racks = _racks(raw.get("racks") or [], problems)
        if problems or top is None:
            raise ConfigError(problems)
        return dataclasses.replace(top, collectors=tuple(collectors), racks=tuple(racks))

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


def _collectors(entries: Sequence[object], problems: list[str]) -> list[CollectorSettings]:
    """Each collector's own keys are checked by its `from_settings`; here only name and type."""
    collectors: list[CollectorSettings] = []
    names: set[str] = set()
    for index, entry in enumerate(entries):
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
    return collectors


def _racks(entries: Sequence[object], problems: list[str]) -> list[RackSettings]:
    racks: list[RackSettings] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            problems.append(f"racks[{index}]: want a mapping, got {entry!r}")
            continue
        rack = read_fields(RackSettings, entry, problems, path=f"racks[{index}].")
        if rack is not None and rack.node_selector.empty:
            rack = dataclasses.replace(
                rack, node_selector=Selector((Requirement("wattscale.io/rack", "=", (rack.name,)),))
            )
        if rack is not None:
            racks.append(rack)
    return racks

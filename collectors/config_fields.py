"""Settings read from raw mappings, one way for every program: fields are declared with their type, default
and bounds, and reading collects every problem in the file, each prefixed with its key, so a user fixes
the whole file in one go (each program then exits with status 2).

A settings class is a dataclass; `setting(...)` declares a field's bounds (and, where the file spells it
differently, its key) and an optional `problems()` method adds the rules between fields. `read_fields`
reads one mapping into the class; `check_number` is the bounded-number rule on its own, for declaration
tables that also generate a schema (the PowerBudget CRD). Users: each collector's settings
(`collectors.support.build_settings`), the metrics server's file (`adapter.settings`) and the PowerBudget
parser (`poweroperator.budget`). It lives in `collectors`, the lowest layer both programs may import.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Bounds:
    """Inclusive `minimum`/`maximum`, exclusive `above`/`below`; None: unbounded on that side."""

    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None

    def allows(self, value: float) -> bool:
        return (
            (self.minimum is None or value >= self.minimum)
            and (self.maximum is None or value <= self.maximum)
            and (self.above is None or value > self.above)
            and (self.below is None or value < self.below)
        )

    def describe(self, what: str) -> str:
        """What a value must be: "a number in [0, 1)", "an integer >= 1", "a positive number"."""
        article = "an" if what[0] in "aeiou" else "a"
        if self.above == 0 and self.minimum is None and self.maximum is None and self.below is None:
            return f"a positive {what}"
        low = f"[{self.minimum:g}" if self.minimum is not None else None
        low = low or (f"({self.above:g}" if self.above is not None else None)
        high = f"{self.maximum:g}]" if self.maximum is not None else None
        high = high or (f"{self.below:g})" if self.below is not None else None)
        if low and high:
            return f"{article} {what} in {low}, {high}"
        if low:
            return f"{article} {what} {'>=' if low[0] == '[' else '>'} {low[1:]}"
        if high:
            return f"{article} {what} {'<=' if high[-1] == ']' else '<'} {high[:-1]}"
        return f"{article} {what}"


UNBOUNDED = Bounds()


@dataclass(frozen=True, slots=True)
class Setting:
    """A field's declaration beyond its type and default (dataclass field metadata)."""

    bounds: Bounds = UNBOUNDED
    key: str | None = None
    """The key in the file when it differs from the attribute (camelCase APIs)."""
    parse: Callable[[Any], Any] | None = None
    """Turns the raw value into the field's value; a ValueError is the problem's text."""


def setting(
    default: Any = dataclasses.MISSING,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    key: str | None = None,
    parse: Callable[[Any], Any] | None = None,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with its bounds: `x: float = setting(1.0, above=0)`."""
    metadata = {"setting": Setting(Bounds(minimum, maximum, above, below), key, parse)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def check_number(
    value: object, key: str, problems: list[str], bounds: Bounds = UNBOUNDED, *, integer: bool = False
) -> TypeGuard[float]:
    """Whether `value` is a number (an integer when asked) within `bounds`; if not, one problem for `key`."""
    what = "integer" if integer else "number"
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and not isinstance(value, int))
        or not math.isfinite(value)
    ):
        problems.append(f"{key}: want {UNBOUNDED.describe(what)}, got {value!r}")
        return False
    if not bounds.allows(value):
        problems.append(f"{key}: want {bounds.describe(what)}, got {value!r}")
        return False
    return True


def convert(value: object, hint: Any, key: str, problems: list[str]) -> Any:
    """`value` as type `hint`; a wrong type adds one problem for `key` and returns a placeholder."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if value is None:
            return None
        return convert(value, options[0], key, problems)
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value in allowed:
            return value
        problems.append(f"{key}: want one of {', '.join(map(str, allowed))}, got {value!r}")
        return allowed[0]
    if hint is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{key}: want true or false, got {value!r}")
        return False
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append(f"{key}: want an integer, got {value!r}")
        return 0
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        problems.append(f"{key}: want a number, got {value!r}")
        return 0.0
    if hint is str:
        if isinstance(value, str):
            return value
        problems.append(f"{key}: want a string, got {value!r}")
        return ""
    if origin is tuple:
        item_hint = typing.get_args(hint)[0]
        if isinstance(value, str) or not isinstance(value, Sequence):
            problems.append(f"{key}: want a list, got {value!r}")
            return ()
        return tuple(convert(item, item_hint, f"{key}[{i}]", problems) for i, item in enumerate(value))
    if origin is Mapping or hint is Mapping:
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            problems.append(f"{key}: want a mapping of strings to strings, got {value!r}")
            return {}
        return dict(value)
    from_raw = getattr(hint, "from_raw", None)
    if from_raw is not None:
        return from_raw(value, key, problems)
    raise TypeError(f"settings field {key} has an unsupported type {hint!r}")  # our bug, not the user's


def _declared(field: dataclasses.Field[Any]) -> Setting:
    declared = field.metadata.get("setting")
    return declared if isinstance(declared, Setting) else Setting()


def declared_fields(cls: type) -> dict[str, tuple[dataclasses.Field[Any], Setting]]:
    """Each field of the settings class `cls` by its key in the file, with its declaration (for a
    schema generated from the same declarations the reader checks)."""
    return {(_declared(f).key or f.name): (f, _declared(f)) for f in dataclasses.fields(cls)}


def _read_one(field: dataclasses.Field[Any], hint: Any, value: object, key: str, problems: list[str]) -> Any:
    declared = _declared(field)
    if declared.parse is not None:
        try:
            return declared.parse(value)
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
            return field.default if field.default is not dataclasses.MISSING else None
    if declared.bounds != UNBOUNDED:
        optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(
            None
        ) in typing.get_args(hint)
        if value is None and optional:
            return None
        integer = int in (typing.get_args(hint) if optional else (hint,))
        if not check_number(value, key, problems, declared.bounds, integer=integer):
            return field.default if field.default is not dataclasses.MISSING else 0
        return int(value) if integer else float(value)
    return convert(value, hint, key, problems)


def _problem_key(problem: str) -> str:
    return problem.split(":", 1)[0].split("[", 1)[0].split(".", 1)[0]


def read_fields(
    cls: type[T],
    raw: Mapping[str, object],
    problems: list[str],
    *,
    path: str = "",
    also_known: Iterable[str] = (),
) -> T | None:
    """`raw` read into the dataclass `cls`, appending every problem (prefixed with `path`) to `problems`:
    unknown keys, missing required keys, wrong types, values out of bounds, then the class's own
    `problems()` for the fields not already reported. `also_known` keys are accepted and left to the
    caller (nested sections it reads itself). None when a required key is missing."""
    hints = typing.get_type_hints(cls)
    fields = {key: field for key, (field, _) in declared_fields(cls).items()}
    skipped = set(also_known)
    found: list[str] = []
    for key in raw:
        if key not in fields and key not in skipped:
            found.append(f"{key}: unknown setting (known: {', '.join(sorted(set(fields) | skipped))})")
    values: dict[str, Any] = {}
    for key, field in fields.items():
        if key in skipped:
            continue
        if key in raw:
            values[field.name] = _read_one(field, hints[field.name], raw[key], key, found)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            found.append(f"{key}: required")
    instance = None
    if not any(p.endswith(": required") for p in found):
        instance = cls(**values)
        # A field already reported for its type holds a placeholder: do not judge it again.
        reported = {_problem_key(p) for p in found}
        own = getattr(instance, "problems", None)
        found.extend(p for p in (own() if callable(own) else []) if _problem_key(p) not in reported)
    problems.extend(f"{path}{p}" for p in found)
    return instance

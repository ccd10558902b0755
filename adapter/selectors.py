"""Kubernetes label selectors: the string form (`labels.Parse`) and the `LabelSelector` object form.

Grammar, as apimachinery's `pkg/labels/selector.go` accepts it:
    selector    := requirement ("," requirement)*
    requirement := key ("=" | "==" | "!=") value | key ("in" | "notin") "(" values ")" | key | "!" key
Keys are qualified names (optional DNS-subdomain prefix + "/" + name of at most 63 characters); values
are empty or at most 63 characters of [A-Za-z0-9_.-] starting and ending with an alphanumeric.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from adapter.errors import BadQueryError

Operator = Literal["=", "!=", "in", "notin", "exists", "!"]

_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_TOKEN = re.compile(r"\s*(!=|==|=|\(|\)|,|!|[^\s!=(),]+)")


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "exists":
            return self.key in labels
        if self.operator == "!":
            return self.key not in labels
        present = self.key in labels
        if self.operator in ("=", "in"):
            return present and labels[self.key] in self.values
        # "!=" and "notin" match objects that lack the key, as in Go.
        return not present or labels[self.key] not in self.values

    def __str__(self) -> str:
        if self.operator == "exists":
            return self.key
        if self.operator == "!":
            return f"!{self.key}"
        if self.operator in ("=", "!="):
            return f"{self.key}{self.operator}{self.values[0]}"
        return f"{self.key} {self.operator} ({','.join(self.values)})"


@dataclass(frozen=True, slots=True)
class Selector:
    """A conjunction of requirements; the empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(requirement.matches(labels) for requirement in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements

    def __str__(self) -> str:
        return ",".join(str(requirement) for requirement in self.requirements)

    def as_label_selector(self) -> dict[str, object] | None:
        """The `metav1.LabelSelector` JSON form, echoed in a MetricValue's `selector`."""
        if self.empty:
            return None
        match_labels: dict[str, str] = {}
        expressions: list[dict[str, object]] = []
        names = {"!=": "NotIn", "in": "In", "notin": "NotIn", "exists": "Exists", "!": "DoesNotExist"}
        for requirement in self.requirements:
            if requirement.operator == "=":
                match_labels[requirement.key] = requirement.values[0]
            else:
                expression: dict[str, object] = {
                    "key": requirement.key,
                    "operator": names[requirement.operator],
                }
                if requirement.values:
                    expression["values"] = list(requirement.values)
                expressions.append(expression)
        selector: dict[str, object] = {}
        if match_labels:
            selector["matchLabels"] = match_labels
        if expressions:
            selector["matchExpressions"] = expressions
        return selector


EVERYTHING = Selector()


def _check_key(key: str) -> str:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        raise BadQueryError(f"invalid label key {key!r}: prefix must be a DNS subdomain")
    if not _NAME.match(name):
        raise BadQueryError(
            f"invalid label key {key!r}: name part must be 63 characters or less, alphanumeric, '-', '_' or '.', "
            "starting and ending with an alphanumeric character"
        )
    return key


def _check_value(value: str) -> str:
    if not _VALUE.match(value):
        raise BadQueryError(
            f"invalid label value {value!r}: must be 63 characters or less, alphanumeric, '-', '_' or '.', "
            "starting and ending with an alphanumeric character"
        )
    return value


def _tokens(text: str) -> list[str]:
    tokens: list[str] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:  # only whitespace can be left, and rstrip removed it
            break
        tokens.append(match.group(1))
        position = match.end()
    return tokens


def parse_selector(text: str | None) -> Selector:
    """Parse a label selector string; raises `BadQueryError` naming what is wrong."""
    if text is None or not text.strip():
        return EVERYTHING
    tokens = _tokens(text)
    requirements: list[Requirement] = []
    index = 0

    def take() -> str:
        nonlocal index
        if index >= len(tokens):
            raise BadQueryError(f"unable to parse requirement: unexpected end of selector {text!r}")
        token = tokens[index]
        index += 1
        return token

    while True:
        token = take()
        if token == "!":
            requirements.append(Requirement(_check_key(take()), "!"))
        elif token in ("=", "==", "!=", "(", ")", ","):
            raise BadQueryError(f"unable to parse requirement: found {token!r}, expected a key in {text!r}")
        else:
            key = _check_key(token)
            following = tokens[index] if index < len(tokens) else ","
            if following == ",":
                requirements.append(Requirement(key, "exists"))
            elif following in ("=", "==", "!="):
                index += 1
                value = tokens[index] if index < len(tokens) and tokens[index] not in (",", ")", "(") else ""
                if value:
                    index += 1
                operator: Operator = "!=" if following == "!=" else "="
                requirements.append(Requirement(key, operator, (_check_value(value),)))
            elif following in ("in", "notin"):
                index += 1
                if take() != "(":
                    raise BadQueryError(
                        f"unable to parse requirement: expected '(' after {following!r} in {text!r}"
                    )
                values: list[str] = []
                while True:
                    item = take()
                    if item == ")" and not values:
                        raise BadQueryError(
                            f"for 'in', 'notin' operators, values set can't be empty in {text!r}"
                        )
                    if item in (",", ")"):
                        values.append("")
                    else:
                        values.append(_check_value(item))
                        item = take()
                    if item == ")":
                        break
                    if item != ",":
                        raise BadQueryError(
                            f"unable to parse requirement: found {item!r}, expected ',' or ')'"
                        )
                op: Operator = "in" if following == "in" else "notin"
                requirements.append(Requirement(key, op, tuple(sorted(set(values)))))
            else:
                raise BadQueryError(
                    f"unable to parse requirement: found {following!r} after key {key!r} in {text!r}"
                )
        if index >= len(tokens):
            break
        if take() != ",":
            raise BadQueryError(f"unable to parse requirement: expected ',' between requirements in {text!r}")
    return Selector(tuple(requirements))


def selector_from_object(label_selector: Mapping[str, object] | None) -> Selector:
    """A Deployment's `spec.selector` (matchLabels + matchExpressions) as a `Selector`."""
    if not label_selector:
        return EVERYTHING
    requirements: list[Requirement] = []
    match_labels = label_selector.get("matchLabels") or label_selector.get("match_labels") or {}
    if isinstance(match_labels, Mapping):
        requirements.extend(Requirement(str(k), "=", (str(v),)) for k, v in sorted(match_labels.items()))
    expressions = label_selector.get("matchExpressions") or label_selector.get("match_expressions") or []
    operators: dict[str, Operator] = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    if isinstance(expressions, Sequence):
        for expression in expressions:
            if not isinstance(expression, Mapping) or expression.get("operator") not in operators:
                continue
            values = expression.get("values") or []
            requirements.append(
                Requirement(
                    str(expression.get("key")),
                    operators[str(expression["operator"])],
                    tuple(sorted(str(v) for v in values)) if isinstance(values, Sequence) else (),
                )
            )
    return Selector(tuple(requirements))

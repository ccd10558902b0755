"""Kubernetes label selectors, written once: the string form (`labels.Parse`), the `metav1.LabelSelector`
object form, and the predicate over an object's labels.

Every program uses this module: the metrics server parses `labelSelector` query parameters and reads
Deployments' `spec.selector`, the power operator turns a PowerBudget's `nodeSelector` into the string the
list API takes, and collectors match the pods they discover. It lives here, in the lowest layer, because
both programs may import `collectors` and `collectors` imports nothing of ours. Errors are
`SelectorError` (a `ValueError`); each caller says what a bad selector means where it is used (the API
answers 400, a configuration file lists it as a problem with its key).

String grammar, as apimachinery's `pkg/labels/selector.go` accepts it:
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

Operator = Literal["=", "!=", "in", "notin", "exists", "!"]

_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_TOKEN = re.compile(r"\s*(!=|==|=|\(|\)|,|!|[^\s!=(),]+)")

_FROM_OBJECT: dict[str, Operator] = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
_TO_OBJECT: dict[Operator, str] = {
    "!=": "NotIn",
    "in": "In",
    "notin": "NotIn",
    "exists": "Exists",
    "!": "DoesNotExist",
}


class SelectorError(ValueError):
    """The selector is malformed; the message says what and where, in apimachinery's words."""


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
    """A conjunction of requirements; the empty selector matches everything.

    `str()` is the string form the list API's `labelSelector` parameter takes."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(requirement.matches(labels) for requirement in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements

    def __str__(self) -> str:
        return ",".join(str(requirement) for requirement in self.requirements)

    def as_label_selector(self) -> dict[str, object] | None:
        """The `metav1.LabelSelector` JSON form (None when empty), echoed in a MetricValue's `selector`."""
        if self.empty:
            return None
        match_labels: dict[str, str] = {}
        expressions: list[dict[str, object]] = []
        for requirement in self.requirements:
            if requirement.operator == "=":
                match_labels[requirement.key] = requirement.values[0]
                continue
            expression: dict[str, object] = {
                "key": requirement.key,
                "operator": _TO_OBJECT[requirement.operator],
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
        raise SelectorError(f"invalid label key {key!r}: prefix must be a DNS subdomain")
    if not _NAME.match(name):
        raise SelectorError(
            f"invalid label key {key!r}: name part must be 63 characters or less, alphanumeric, '-', '_' or '.', "
            "starting and ending with an alphanumeric character"
        )
    return key


def _check_value(value: str) -> str:
    if not _VALUE.match(value):
        raise SelectorError(
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
    """Parse a label selector string; raises `SelectorError` naming what is wrong."""
    if text is None or not text.strip():
        return EVERYTHING
    tokens = _tokens(text)
    requirements: list[Requirement] = []
    index = 0

    def take() -> str:
        nonlocal index
        if index >= len(tokens):
            raise SelectorError(f"unable to parse requirement: unexpected end of selector {text!r}")
        token = tokens[index]
        index += 1
        return token

    while True:
        token = take()
        if token == "!":
            requirements.append(Requirement(_check_key(take()), "!"))
        elif token in ("=", "==", "!=", "(", ")", ","):
            raise SelectorError(f"unable to parse requirement: found {token!r}, expected a key in {text!r}")
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
                    raise SelectorError(
                        f"unable to parse requirement: expected '(' after {following!r} in {text!r}"
                    )
                values: list[str] = []
                while True:
                    item = take()
                    if item == ")" and not values:
                        raise SelectorError(
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
                        raise SelectorError(
                            f"unable to parse requirement: found {item!r}, expected ',' or ')'"
                        )
                op: Operator = "in" if following == "in" else "notin"
                requirements.append(Requirement(key, op, tuple(sorted(set(values)))))
            else:
                raise SelectorError(
                    f"unable to parse requirement: found {following!r} after key {key!r} in {text!r}"
                )
        if index >= len(tokens):
            break
        if take() != ",":
            raise SelectorError(f"unable to parse requirement: expected ',' between requirements in {text!r}")
    return Selector(tuple(requirements))


def _expression(expression: object, where: str) -> Requirement:
    if not isinstance(expression, Mapping):
        raise SelectorError(f"{where}: want an object with key and operator, got {expression!r}")
    key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
    if operator not in _FROM_OBJECT:
        raise SelectorError(
            f"{where}.operator: unknown operator {operator!r} (want In, NotIn, Exists, DoesNotExist)"
        )
    if not isinstance(key, str):
        raise SelectorError(f"{where}.key: required, got {key!r}")
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise SelectorError(f"{where}.values: want a list of strings, got {values!r}")
    if operator in ("In", "NotIn") and not values:
        raise SelectorError(f"{where}.values: must be non-empty for {operator}")
    if operator in ("Exists", "DoesNotExist") and values:
        raise SelectorError(f"{where}.values: must be empty for {operator}")
    checked = sorted({_check_value(str(value)) for value in values})
    return Requirement(_check_key(key), _FROM_OBJECT[str(operator)], tuple(checked))


def selector_from_object(label_selector: Mapping[str, object] | None) -> Selector:
    """A `metav1.LabelSelector` (a Deployment's `spec.selector`, a PowerBudget's `nodeSelector`) as a
    `Selector`: matchLabels sorted by key, then matchExpressions in order. Accepts the Kubernetes
    client's snake_case `to_dict()` form (`match_labels`, `match_expressions`) too."""
    if not label_selector:
        return EVERYTHING
    match_labels = label_selector.get("matchLabels") or label_selector.get("match_labels") or {}
    expressions = label_selector.get("matchExpressions") or label_selector.get("match_expressions") or []
    if not isinstance(match_labels, Mapping):
        raise SelectorError(f"matchLabels: want a map of strings, got {match_labels!r}")
    if isinstance(expressions, str) or not isinstance(expressions, Sequence):
        raise SelectorError(f"matchExpressions: want a list, got {expressions!r}")
    requirements = [
        Requirement(_check_key(str(key)), "=", (_check_value(str(value)),))
        for key, value in sorted(match_labels.items())
    ]
    requirements += [_expression(item, f"matchExpressions[{i}]") for i, item in enumerate(expressions)]
    return Selector(tuple(requirements))

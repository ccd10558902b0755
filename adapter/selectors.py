"""Label selectors at the API's edge: the grammar and conversions are `collectors.label_selectors`
(shared with the power operator); a malformed selector in a request is a 400 `BadRequest` Status."""

from __future__ import annotations

from adapter.errors import BadQueryError
from collectors import label_selectors
from collectors.label_selectors import Selector, SelectorError


def parse_selector(text: str | None) -> Selector:
    """A request's `labelSelector` or `metricLabelSelector`; raises `BadQueryError` naming what is wrong."""
    try:
        return label_selectors.parse_selector(text)
    except SelectorError as exc:
        raise BadQueryError(str(exc)) from exc

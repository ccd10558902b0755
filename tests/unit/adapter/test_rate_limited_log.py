"""Refused requests are logged one line each, until a client floods: then lines are counted, not written."""

from __future__ import annotations

import logging

import pytest

from adapter.logs import RateLimitedLog


def test_a_flood_is_cut_to_the_rate_and_the_next_line_counts_what_was_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    limited = RateLimitedLog(
        logging.getLogger("test"), "api.request_failed", per_second=10, burst=5, clock=lambda: now[0]
    )
    with caplog.at_level(logging.INFO):
        for _ in range(1000):
            limited.info(code=400)
        assert len(caplog.records) == 5  # the burst, then nothing more in the same instant
        now[0] += 1.0  # a second later: a full burst again; its first line says how many were dropped
        for _ in range(20):
            limited.info(code=400)
    assert len(caplog.records) == 10
    assert getattr(caplog.records[5], "suppressed", None) == 995
    assert not hasattr(caplog.records[6], "suppressed")

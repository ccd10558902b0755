"""End to end: a rack driven over its cap in `wattscale demo` makes the real Prometheus fire the shipped
WattscaleRackPowerAboveCap rule and the real Alertmanager deliver it to a webhook; the alert is
delivered resolved once the surge ends. Prints the delivery times."""

from __future__ import annotations

import time
from typing import Any

import pytest
from monitoring_stack import Stack

pytestmark = [pytest.mark.prometheus, pytest.mark.alertmanager]

ALERT = "WattscaleRackPowerAboveCap"


def _is(alert: dict[str, Any], status: str, rack: str) -> bool:
    labels = alert["labels"]
    return labels.get("alertname") == ALERT and labels.get("rack") == rack and alert["status"] == status


def test_rack_over_cap_is_delivered_then_resolved(monitoring: Stack) -> None:
    monitoring.wait_until(
        lambda: bool(monitoring.query('wattscale_rack_power_watts{rack="rack-a"}')),
        timeout_seconds=60,
        what="Prometheus scraping the demo's rack power",
    )
    assert not monitoring.query(f'ALERTS{{alertname="{ALERT}"}}'), "a rack is over its cap before the surge"

    surged = time.monotonic()
    assert monitoring.demo_request("POST", "/demo/surge/rack-a") == {"surging": ["rack-a"]}
    fired = monitoring.webhook.wait_for(lambda a: _is(a, "firing", "rack-a"), timeout_seconds=120)
    firing = monitoring.query(f'ALERTS{{alertname="{ALERT}", alertstate="firing"}}')
    assert [series["metric"]["rack"] for series in firing] == ["rack-a"], "only the surging rack alerts"
    power = float(monitoring.query('wattscale_rack_power_watts{rack="rack-a"}')[0]["value"][1])
    cap = float(monitoring.query('wattscale_rack_power_cap_watts{rack="rack-a"}')[0]["value"][1])
    assert power > cap

    calmed = time.monotonic()
    assert monitoring.demo_request("DELETE", "/demo/surge/rack-a") == {"surging": []}
    resolved = monitoring.webhook.wait_for(lambda a: _is(a, "resolved", "rack-a"), timeout_seconds=120)
    assert float(monitoring.query('wattscale_rack_power_watts{rack="rack-a"}')[0]["value"][1]) <= cap
    print(
        f"\nalert delivery: surge -> firing at the webhook {fired - surged:.1f} s; "
        f"surge ended -> resolved at the webhook {resolved - calmed:.1f} s "
        "(5 s estimator window, 1 s scrape and evaluation, `for` shortened to 2 s, group_wait 1 s)"
    )


def test_unknown_rack_surge_is_a_status_404(monitoring: Stack) -> None:
    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as refused:
        monitoring.demo_request("POST", "/demo/surge/rack-z")
    with refused.value as answer:
        assert answer.code == 404
        assert b'"kind":"Status"' in answer.read()

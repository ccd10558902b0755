"""Vendor scaling and settings; the SNMP conversation itself is tested against snmpsim in
tests/integration/test_snmp_pdu.py."""

from __future__ import annotations

import pytest

from collectors.base import CollectorConfigError
from collectors.snmp_pdu import SnmpPduCollector, interpret


def test_raritan_values_are_scaled_by_their_own_decimal_digits() -> None:
    values = {(1, 1, 5): 16653, (1, 1, 8): 740, (1, 1, 1): 7467, (1, 2, 5): 100}
    digits = {(1, 1, 5): 1, (1, 1, 8): 0, (1, 1, 1): 3, (1, 2, 5): 0}
    reading = interpret("raritan", {"inlet_value": values, "inlet_digits": digits})
    assert reading.inlet_watts == {"1.1": 1665.3, "1.2": 100.0}
    assert reading.energy_joules == {"1.1": 740 * 3600.0}


def test_apc_units_and_unsupported_minus_one() -> None:
    reading = interpret(
        "apc", {"power": {(1,): 117, (2,): -1}, "energy": {(1,): 706}, "rated_current": {(1,): 32}}
    )
    assert reading.inlet_watts == {"1": 1170.0}  # hundredths of kW; device 2 does not meter
    assert reading.energy_joules == {"1": pytest.approx(70.6 * 3.6e6)}
    assert reading.rated_current_amps == 32.0


def test_eaton_falls_back_to_per_phase_input_watts() -> None:
    tables = {"power": {}, "energy": {}, "input_power": {(0, 1, 1): 500, (0, 1, 2): 700, (0, 1, 3): -1}}
    assert interpret("eaton", tables).inlet_watts == {"0.1": 1200.0}


def test_settings_problems() -> None:
    with pytest.raises(CollectorConfigError) as caught:
        SnmpPduCollector.from_settings(
            "pdu", {"host": "pdu-1", "vendor": "cyberpower", "rack": "r", "version": "3", "auth_key": "short"}
        )
    assert caught.value.problems == [
        "vendor: want one of apc, raritan, sentry4, eaton, got 'cyberpower'",
        "username: required with version 3",
        "auth_key: required with an auth_protocol, at least 8 characters",
        "priv_key: required with a priv_protocol, at least 8 characters",
    ]

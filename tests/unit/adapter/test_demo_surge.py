"""The demo's surge knob: an unknown rack is refused at start with the racks it has."""

from __future__ import annotations

import subprocess
import sys


def test_unknown_surge_rack_is_refused_with_the_demo_racks() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "adapter.cli", "demo", "--surge-rack", "rack-z", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no rack rack-z; racks: rack-a, rack-b" in result.stderr

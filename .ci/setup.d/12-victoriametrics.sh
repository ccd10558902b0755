#!/usr/bin/env bash
# Real VictoriaMetrics and vmalert for tests/integration/test_recording_rules.py (marker `prometheus`):
# the Debian package (1.79.5), no service started.
set -euo pipefail
if command -v victoria-metrics >/dev/null 2>&1 && command -v vmalert >/dev/null 2>&1; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends victoria-metrics >/dev/null
victoria-metrics -version

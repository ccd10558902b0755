#!/usr/bin/env bash
# Real Alertmanager (marker `alertmanager`) and headless Chromium (marker `browser`) for the monitoring
# tests: Debian packages, no service started; the tests start their own processes on loopback.
set -euo pipefail
if command -v prometheus-alertmanager >/dev/null 2>&1 && command -v chromium >/dev/null 2>&1; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends: no desktop extras; fonts-liberation gives the page's text real glyphs.
apt-get install -y -qq --no-install-recommends prometheus-alertmanager chromium fonts-liberation >/dev/null
prometheus-alertmanager --version 2>&1 | head -n 1
chromium --version

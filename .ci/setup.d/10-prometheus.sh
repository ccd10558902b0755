#!/usr/bin/env bash
# Real Prometheus for tests/integration (marker `prometheus`): the Debian package, no service started.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends keeps node-exporter and friends out; the tests start their own server.
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
prometheus --version | head -n 1

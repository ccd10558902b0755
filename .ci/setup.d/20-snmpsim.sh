#!/usr/bin/env bash
# Real SNMP agent for tests/integration (marker `snmp`): snmpsim in its own venv.
# snmpsim must drop privileges to `nobody` when started as root, and then cannot import from a Python
# under root's home, so the venv is built from Debian's /usr/bin/python3 in a world-readable place.
set -euo pipefail
VENV=${WATTSCALE_SNMPSIM_VENV:-/opt/wattscale-snmpsim}
if [ -x "$VENV/bin/snmpsim-command-responder" ] && "$VENV/bin/python" -c "import snmpsim, pysmi, cryptography" 2>/dev/null; then
    exit 0
fi
if ! /usr/bin/python3 -c "import ensurepip, venv" 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi
/usr/bin/python3 -m venv "$VENV"
# pysmi is imported at start-up but not declared by snmpsim; cryptography enables SNMPv3 privacy (AES/DES).
"$VENV/bin/pip" install --quiet --disable-pip-version-check "snmpsim==1.2.2" pysmi cryptography
chmod -R a+rX "$VENV"
"$VENV/bin/snmpsim-command-responder" --version | head -n 1 || true

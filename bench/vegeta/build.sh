#!/usr/bin/env bash
# Builds vegeta (the version pinned in go.mod beside this script) into the wattscale cache and prints its
# path (bench/go_build.sh). Used by bench/load_serve.py; not part of CI.
here="$(cd "$(dirname "$0")" && pwd)"
exec "$here/../go_build.sh" "$here" github.com/tsenart/vegeta/v12 github.com/tsenart/vegeta/v12 vegeta vegeta

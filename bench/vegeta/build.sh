#!/usr/bin/env bash
# Builds vegeta (the version pinned in go.mod beside this script) into
#   ${WATTSCALE_CACHE:-$HOME/.cache/wattscale}/vegeta/<version>/vegeta
# with its own Go build and module caches there, at low priority. Prints the binary's path; returns at
# once when the binary exists. Used by bench/load_serve.py; not part of CI.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="$(awk '$1 == "require" && $2 == "github.com/tsenart/vegeta/v12" {print $3}' "$here/go.mod")"
[ -n "$version" ] || { echo "build.sh: vegeta version not found in go.mod" >&2; exit 1; }
cache="${WATTSCALE_CACHE:-$HOME/.cache/wattscale}/vegeta"
binary="$cache/$version/vegeta"
if [ -x "$binary" ]; then
    echo "$binary"
    exit 0
fi
export PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "build.sh: Go is needed to build vegeta" >&2; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-modcacherw
export GOMODCACHE="$cache/gomod" GOCACHE="$cache/gocache"
mkdir -p "$cache/$version"
exec 9>"$cache/build.lock"
flock 9
start_seconds=$SECONDS
(cd "$here" && nice -n 15 go build -trimpath -ldflags="-s -w" -o "$binary.partial" github.com/tsenart/vegeta/v12)
mv -f "$binary.partial" "$binary"
echo "built vegeta $version in $((SECONDS - start_seconds)) s (load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
echo "$binary"

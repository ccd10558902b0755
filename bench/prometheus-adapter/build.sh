#!/usr/bin/env bash
# Builds prometheus-adapter (the version pinned in go.mod beside this script, cmd/adapter) into
#   ${WATTSCALE_CACHE:-$HOME/.cache/wattscale}/prometheus-adapter/<version>/adapter
# with its own Go build and module caches there, at low priority. Prints the build time; returns at
# once when the binary exists. Used by bench/compare_prometheus_adapter.py; not part of CI.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="$(awk '$1 == "sigs.k8s.io/prometheus-adapter" && $2 ~ /^v/ {print $2} $1 == "require" && $2 == "sigs.k8s.io/prometheus-adapter" {print $3}' "$here/go.mod")"
[ -n "$version" ] || { echo "build.sh: prometheus-adapter version not found in go.mod" >&2; exit 1; }
cache="${WATTSCALE_CACHE:-$HOME/.cache/wattscale}/prometheus-adapter"
binary="$cache/$version/adapter"
if [ -x "$binary" ]; then
    echo "$binary"
    exit 0
fi
export PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "build.sh: Go is needed to build prometheus-adapter" >&2; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-modcacherw
export GOMODCACHE="$cache/gomod" GOCACHE="$cache/gocache"
mkdir -p "$cache/$version"
exec 9>"$cache/build.lock"
flock 9
start_seconds=$SECONDS
(cd "$here" && nice -n 15 go build -trimpath -ldflags="-s -w" -o "$binary.partial" sigs.k8s.io/prometheus-adapter/cmd/adapter)
mv -f "$binary.partial" "$binary"
echo "built prometheus-adapter $version in $((SECONDS - start_seconds)) s (load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
echo "$binary"

#!/usr/bin/env bash
# Builds one package of a Go module pinned in a go.mod into
#   ${WATTSCALE_CACHE:-$HOME/.cache/wattscale}/<name>/<version>/<binary>
# with its own Go build and module caches there, at low priority. Prints the binary's path; returns at
# once when the binary exists. For the bench peers (bench/*/build.sh); not part of CI.
#
#   go_build.sh <folder with go.mod> <module> <package> <name> <binary>
set -euo pipefail
folder="$1" module="$2" package="$3" name="$4" binary_name="$5"
version="$(awk -v m="$module" '$1 == m && $2 ~ /^v/ {print $2} $1 == "require" && $2 == m {print $3}' "$folder/go.mod")"
[ -n "$version" ] || { echo "go_build.sh: $module's version not found in $folder/go.mod" >&2; exit 1; }
cache="${WATTSCALE_CACHE:-$HOME/.cache/wattscale}/$name"
binary="$cache/$version/$binary_name"
if [ -x "$binary" ]; then
    echo "$binary"
    exit 0
fi
export PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "go_build.sh: Go is needed to build $name" >&2; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-modcacherw
export GOMODCACHE="$cache/gomod" GOCACHE="$cache/gocache"
mkdir -p "$cache/$version"
exec 9>"$cache/build.lock"
flock 9
start_seconds=$SECONDS
(cd "$folder" && nice -n 15 go build -trimpath -ldflags="-s -w" -o "$binary.partial" "$package")
mv -f "$binary.partial" "$binary"
echo "built $name $version in $((SECONDS - start_seconds)) s (load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
echo "$binary"

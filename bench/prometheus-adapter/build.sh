#!/usr/bin/env bash
# Builds prometheus-adapter's cmd/adapter (the version pinned in go.mod beside this script) into the
# wattscale cache and prints its path (bench/go_build.sh). Used by bench/compare_prometheus_adapter.py;
# not part of CI.
here="$(cd "$(dirname "$0")" && pwd)"
exec "$here/../go_build.sh" "$here" sigs.k8s.io/prometheus-adapter sigs.k8s.io/prometheus-adapter/cmd/adapter \
    prometheus-adapter adapter

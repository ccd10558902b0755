#!/usr/bin/env bash
# Real control plane for tests/cluster (marker `cluster`): etcd, kube-apiserver, kube-controller-manager,
# kubectl and the KEDA client test, built from their Go modules into
# ${WATTSCALE_CACHE:-$HOME/.cache/wattscale}/k8s. The first build takes tens of minutes on 2 cores; later
# runs find the binaries and return at once.
set -euo pipefail
exec bash "$(dirname "$0")/../../tests/cluster/build.sh"

#!/usr/bin/env bash
# Builds what the cluster tests run into
#   ${WATTSCALE_CACHE:-$HOME/.cache/wattscale}/k8s/<kubernetes version>/bin
# outside the clone, so later runs (and fresh clones on the same machine) reuse it: etcd (./etcd),
# kube-apiserver, kube-controller-manager, kube-scheduler and kubectl (./k8s), the compiled KEDA client test and
# KEDA's operator, metrics API server and admission webhooks (./keda), and the KServe controller (./kserve). The manifests the
# harness applies for KEDA and KServe (CRDs, RBAC, KServe's inferenceservice-config) are copied from the same
# module versions into ../manifests/<module>-<version>/config.
# The Go build and module caches live beside it. Each piece is skipped when its output exists. The versions
# come from the go.mod files next to this script, the single source of truth (conftest.py reads them too).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${WATTSCALE_CACHE:-$HOME/.cache/wattscale}/k8s"

# go mod tidy moves requirements into a block, so match the module name wherever it stands on the line.
k8s_version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2} $1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$here/k8s/go.mod")"
etcd_version="$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2}' "$here/etcd/go.mod")"
keda_version="$(awk '$1 == "github.com/kedacore/keda/v2" {print $2} $1 == "require" && $2 == "github.com/kedacore/keda/v2" {print $3}' "$here/keda/go.mod")"
kserve_version="$(awk '$1 == "github.com/kserve/kserve" {print $2} $1 == "require" && $2 == "github.com/kserve/kserve" {print $3}' "$here/kserve/go.mod")"
[ -n "$k8s_version" ] && [ -n "$etcd_version" ] && [ -n "$keda_version" ] && [ -n "$kserve_version" ] \
    || { echo "build.sh: versions not found in the go.mod files" >&2; exit 1; }
bin_dir="$cache/$k8s_version/bin"
k8s_binaries=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
keda_binaries=(keda-operator keda-adapter keda-admission-webhooks)
manifests_dir="$cache/$k8s_version/manifests"
keda_manifests="$manifests_dir/keda-$keda_version"
kserve_manifests="$manifests_dir/kserve-$kserve_version"

# One build at a time (CI setup and a test session may both call this): the second waits, then finds
# the binaries there.
mkdir -p "$cache"
exec 9>"$cache/build.lock"
flock 9

need_etcd=0; need_k8s=0; need_keda=0; need_keda_peers=0; need_kserve=0
[ -x "$bin_dir/etcd" ] || need_etcd=1
for b in "${k8s_binaries[@]}"; do [ -x "$bin_dir/$b" ] || need_k8s=1; done
[ -x "$bin_dir/keda-metrics-api.test" ] || need_keda=1
for b in "${keda_binaries[@]}"; do [ -x "$bin_dir/$b" ] || need_keda_peers=1; done
[ -d "$keda_manifests/config" ] || need_keda_peers=1
[ -x "$bin_dir/kserve-manager" ] && [ -d "$kserve_manifests/config" ] || need_kserve=1
if [ $((need_etcd + need_k8s + need_keda + need_keda_peers + need_kserve)) = 0 ]; then
    echo "cluster binaries present in $bin_dir"
    exit 0
fi

command -v go >/dev/null || { echo "build.sh: Go >= 1.26 is needed to build the control plane" >&2; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-modcacherw
export GOMODCACHE="$cache/gomod" GOCACHE="$cache/gocache"

# Build into a scratch folder and move into place at the end, so an interrupted build never looks done.
staging="$cache/$k8s_version/bin.partial"
rm -rf "$staging"
mkdir -p "$staging" "$bin_dir"
start_seconds=$SECONDS

if [ "$need_etcd" = 1 ]; then
    echo "building etcd $etcd_version"
    (cd "$here/etcd" && nice -n 10 go build -trimpath -ldflags="-s -w" -o "$staging/etcd" go.etcd.io/etcd/server/v3)
    mv -f "$staging/etcd" "$bin_dir/etcd"
fi

if [ "$need_k8s" = 1 ]; then
    minor="${k8s_version#v1.}"; minor="${minor%%.*}"
    ldflags="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags="$ldflags -X $p.gitVersion=$k8s_version -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    done
    echo "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl $k8s_version"
    (cd "$here/k8s" && nice -n 10 go build -trimpath -tags=selinux,notest -ldflags="$ldflags" -o "$staging/" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
    for b in "${k8s_binaries[@]}"; do mv -f "$staging/$b" "$bin_dir/$b"; done
fi

if [ "$need_keda" = 1 ]; then
    # KEDA's scalers package links every cloud SDK it supports, so this is a long compile too.
    echo "building the KEDA $keda_version metrics-api client test"
    (cd "$here/keda" && nice -n 10 go test -c -trimpath -ldflags="-s -w" -o "$staging/keda-metrics-api.test" .)
    mv -f "$staging/keda-metrics-api.test" "$bin_dir/keda-metrics-api.test"
fi

# The manifests of a Go module, as the module proxy served it (its config/ folder: CRDs, RBAC, ConfigMaps).
copy_module_config() { # <module dir here> <module path> <destination>
    local source
    source="$(cd "$1" && go list -m -f '{{.Dir}}' "$2")"
    rm -rf "$3.partial"
    mkdir -p "$3.partial"
    cp -R "$source/config" "$3.partial/config"
    chmod -R u+w "$3.partial"
    rm -rf "$3"
    mv "$3.partial" "$3"
}

if [ "$need_keda_peers" = 1 ]; then
    # Same module as the client test, so the scalers it links are compiled once for both.
    echo "building KEDA $keda_version operator, metrics API server and admission webhooks"
    (cd "$here/keda" && nice -n 10 go build -trimpath \
        -ldflags="-s -w -X github.com/kedacore/keda/v2/version.Version=$keda_version" -o "$staging/" \
        github.com/kedacore/keda/v2/cmd/operator github.com/kedacore/keda/v2/cmd/adapter \
        github.com/kedacore/keda/v2/cmd/webhooks)
    copy_module_config "$here/keda" github.com/kedacore/keda/v2 "$keda_manifests"
    mv -f "$staging/operator" "$bin_dir/keda-operator"
    mv -f "$staging/adapter" "$bin_dir/keda-adapter"
    mv -f "$staging/webhooks" "$bin_dir/keda-admission-webhooks"
fi

if [ "$need_kserve" = 1 ]; then
    echo "building the KServe $kserve_version controller"
    (cd "$here/kserve" && nice -n 10 go build -trimpath -ldflags="-s -w" -o "$staging/kserve-manager" \
        github.com/kserve/kserve/cmd/manager)
    copy_module_config "$here/kserve" github.com/kserve/kserve "$kserve_manifests"
    mv -f "$staging/kserve-manager" "$bin_dir/kserve-manager"
fi

rm -rf "$staging"
echo "cluster binaries built in $((SECONDS - start_seconds))s into $bin_dir"

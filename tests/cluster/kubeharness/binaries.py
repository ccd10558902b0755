"""Where build.sh puts the control-plane binaries; the go.mod files beside it name the versions."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

CLUSTER_DIR = Path(__file__).resolve().parent.parent


def _required_version(go_mod: Path, module: str) -> str:
    for line in go_mod.read_text().splitlines():
        fields = line.split()
        if fields[:1] == ["require"]:
            fields = fields[1:]
        if len(fields) >= 2 and fields[0] == module and fields[1].startswith("v"):
            return fields[1]
    raise AssertionError(f"{go_mod} does not require {module}")


@dataclass(frozen=True)
class Binaries:
    kubernetes_version: str
    etcd_version: str
    keda_version: str
    folder: Path
    kserve_version: str = ""

    def path(self, name: str) -> str:
        return str(self.folder / name)

    def module_config(self, module: str) -> Path:
        """The `config/` folder (CRDs, RBAC, ConfigMaps) of `keda` or `kserve` at the version that was built."""
        version = {"keda": self.keda_version, "kserve": self.kserve_version}[module]
        return self.folder.parent / "manifests" / f"{module}-{version}" / "config"


def locate_binaries() -> Binaries:
    """Run build.sh (a no-op once built, as in CI after .ci/setup.d/30-cluster.sh) and say where things are."""
    kubernetes_version = _required_version(CLUSTER_DIR / "k8s" / "go.mod", "k8s.io/kubernetes")
    cache = Path(os.environ.get("WATTSCALE_CACHE") or Path.home() / ".cache" / "wattscale")
    binaries = Binaries(
        kubernetes_version=kubernetes_version,
        etcd_version=_required_version(CLUSTER_DIR / "etcd" / "go.mod", "go.etcd.io/etcd/server/v3"),
        keda_version=_required_version(CLUSTER_DIR / "keda" / "go.mod", "github.com/kedacore/keda/v2"),
        folder=cache / "k8s" / kubernetes_version / "bin",
        kserve_version=_required_version(CLUSTER_DIR / "kserve" / "go.mod", "github.com/kserve/kserve"),
    )
    if os.environ.get("WATTSCALE_CLUSTER_NO_BUILD") == "1":
        # Another session is building (build.sh holds its lock for the whole KEDA build): use what is
        # there without waiting, which is all but the KEDA client test needs.
        missing = [
            name
            for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
            if not (binaries.folder / name).exists()
        ]
        if missing:
            raise AssertionError(f"WATTSCALE_CLUSTER_NO_BUILD=1 but {missing} not in {binaries.folder}")
        return binaries
    subprocess.run(["bash", str(CLUSTER_DIR / "build.sh")], check=True, stdout=subprocess.DEVNULL)
    return binaries

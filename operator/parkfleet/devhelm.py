"""parkfleet installed by its chart on the local cluster's real node (``make demo-helm``).

The local cluster started with its real node (``devcluster.start(node=True)``) runs the
chart's pods from the images ``make images`` built, imported into the node's containerd
(the node has no registry). :class:`ChartInstall` does what an operator of a real
cluster would do before and for ``helm install``:

- a namespace that enforces restricted Pod Security;
- the fleet CA and a gateway certificate naming the address cars dial (the node's
  InternalIP), as the Secret the chart expects (the CA's key stays off the cluster);
- the gateway's volume: a hostPath PersistentVolume of a StorageClass with no
  provisioner, owned by the images' user (hostPath has no fsGroup), holding the model
  store (the digits model, by name) and the default namespace's data area;
- ``helm install --wait`` with the cars' Service a NodePort on the node's address.

The cars are simulated outside the cluster (:class:`parkfleet.devstack.DevStack`'s
``start_fleet``), dialling that NodePort.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parkfleet import devcluster
from parkfleet.certs import FleetCA
from parkfleet.contract import data_area
from parkfleet.devstack import REPO_ROOT, DevStack
from parkfleet.gateway.modelstore import ModelStore
from parkfleet.models.digits import DigitsModel

__all__ = ["IMAGES_DIR", "ChartInstall", "HelmError", "image_archives"]

CHART = REPO_ROOT / "helm" / "parkfleet"
HELM = REPO_ROOT / ".cache" / "bin" / "helm"
IMAGES_DIR = REPO_ROOT / ".cache" / "images"
# The images' user and group: the volume's files must be theirs.
IMAGE_UID = 10001
CLAIM = "gateway-data"
STORAGE_CLASS = "parkfleet-local"
RESTRICTED = (
    "pod-security.kubernetes.io/enforce=restricted",
    "pod-security.kubernetes.io/warn=restricted",
)


class HelmError(RuntimeError):
    """A helm or kubectl step of the install failed; the message says which and why."""


def image_archives(directory: Path = IMAGES_DIR) -> list[Path]:
    """The CPU images ``make images`` built (the operator's, also the gateway's, and the
    agent's), as OCI archives, from the builder's ``images.json``.

    Raises:
        HelmError: They are not built.
    """
    try:
        built = json.loads((directory / "images.json").read_text())
        found = [directory / built[name]["archive"] for name in ("parkfleet", "agent")]
    except (OSError, ValueError, KeyError) as e:
        raise HelmError(f"the images are not built in {directory}: run `make images` ({e})") from e
    missing = [p.name for p in found if not p.exists()]
    if missing:
        raise HelmError(f"{', '.join(missing)} missing in {directory}: run `make images`")
    return found


@dataclass
class ChartInstall:
    """A chart release on the local cluster's real node, and the cars outside it.

    Args:
        cluster: A local cluster started with ``node=True``.
        root: Working folder (helm's state, the fleet's certificates, the volume).
        namespace: The release's namespace (created, restricted Pod Security).
        release: The release's name.
        node_port: The cars' NodePort on the node's address.
        telemetry_interval_s: How often cars report; the gateway's timeout is 3x.
        detach: Let the cars outlive this process (``make demo-helm`` with ``--keep``).
    """

    cluster: devcluster.LocalCluster
    root: Path
    namespace: str = "parkfleet-system"
    release: str = "pf"
    node_port: int = 30743
    telemetry_interval_s: float = 2.0
    detach: bool = False
    values: list[str] = field(default_factory=list)
    stack: DevStack = field(init=False)

    def __post_init__(self) -> None:
        if self.cluster.node is None:
            raise HelmError("the cluster has no real node: start it with node=True")
        self.stack = DevStack(
            self.root / "stack",
            self.cluster.kubeconfig,
            telemetry_interval_s=self.telemetry_interval_s,
            detach=self.detach,
        )

    @property
    def fullname(self) -> str:
        """The chart's object name prefix (RELEASE-parkfleet)."""
        return f"{self.release}-parkfleet"

    @property
    def volume(self) -> Path:
        """The gateway's volume on this machine (models/ and data/)."""
        return self.root / "volume"

    def area(self, namespace: str = "default") -> Path:
        """A namespace's area of the gateway's data volume."""
        return self.volume / "data" / data_area(namespace)

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        """kubectl against the cluster; raises :class:`HelmError` naming the step."""
        proc = devcluster.kubectl(self.cluster.kubeconfig, *args, stdin=stdin, check=False)
        if proc.returncode != 0:
            raise HelmError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def helm(self, *args: str, timeout: float = 300.0) -> str:
        """``.cache/bin/helm`` with its state under ``root`` (never in ``~``)."""
        if not HELM.exists():
            raise HelmError(f"helm is not built: run `make helm` (expected {HELM})")
        home = self.root / "helm-home"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
            "KUBECONFIG": str(self.cluster.kubeconfig),
        }
        proc = subprocess.run(
            [str(HELM), *args], capture_output=True, text=True, env=env, timeout=timeout
        )
        if proc.returncode != 0:
            raise HelmError(f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}".strip())
        return proc.stdout

    def prepare(self, archives: Sequence[Path] | None = None) -> DigitsModel:
        """Everything ``helm install`` needs: images, namespace, certificates, volume.

        Returns:
            The digits model (in the volume's model store as ``digits``).
        """
        node = self.cluster.node
        assert node is not None
        for archive in archives if archives is not None else image_archives():
            devcluster.import_image(self.cluster, archive)
        self._certificates(node.ip)
        model = self.stack.prepare()
        self.stack.gateway_address = f"{node.ip}:{self.node_port}"
        self._fill_volume(model)
        self.kubectl("create", "namespace", self.namespace)
        self.kubectl("label", "namespace", self.namespace, *RESTRICTED)
        certs = self.stack.certs
        self.kubectl(
            "create",
            "secret",
            "generic",
            f"{self.fullname}-gateway-certs",
            f"-n={self.namespace}",
            *(f"--from-file={certs / f}" for f in ("ca.crt", "gateway.crt", "gateway.key")),
        )
        self._storage()
        return model

    def install(self, *values: str, timeout_s: int = 300) -> float:
        """``helm install --wait``; returns the seconds until every pod was Ready."""
        self.values = [
            "--set=gateway.service.type=NodePort",
            f"--set=gateway.service.nodePort={self.node_port}",
            f"--set=gateway.storage.existingClaim={CLAIM}",
            f"--set=gateway.telemetryIntervalSeconds={self.telemetry_interval_s:g}",
            f"--set=gateway.telemetryTimeoutSeconds={3 * self.telemetry_interval_s:g}",
            *values,
        ]
        started = time.monotonic()
        self._helm_wait("install", str(CHART), *self.values, timeout_s=timeout_s)
        return time.monotonic() - started

    def upgrade(self, *values: str, timeout_s: int = 300) -> None:
        """``helm upgrade --wait`` with the install's values and ``values`` on top."""
        self._helm_wait("upgrade", str(CHART), *self.values, *values, timeout_s=timeout_s)

    def uninstall(self, timeout_s: int = 180) -> None:
        """``helm uninstall --wait``."""
        self._helm_wait("uninstall", timeout_s=timeout_s)

    def _helm_wait(self, verb: str, *args: str, timeout_s: int) -> None:
        self.helm(
            verb,
            self.release,
            *args,
            f"--namespace={self.namespace}",
            "--wait",
            f"--timeout={timeout_s}s",
            timeout=timeout_s + 30,
        )

    def manifest(self) -> list[dict[str, Any]]:
        """The release's objects, as ``helm get manifest`` lists them."""
        import yaml

        text = self.helm("get", "manifest", self.release, f"--namespace={self.namespace}")
        return [d for d in yaml.safe_load_all(text) if d]

    def _certificates(self, node_ip: str) -> None:
        certs = self.stack.certs
        if (certs / "ca.crt").exists():
            return
        ca = FleetCA.create()
        ca.save(certs)
        svc = f"{self.fullname}-gateway"
        hosts = [
            node_ip,
            f"{svc}.{self.namespace}.svc",
            f"{svc}-0.{svc}-headless.{self.namespace}.svc",
        ]
        ca.issue_gateway(hosts).save(certs / "gateway.crt", certs / "gateway.key")

    def _fill_volume(self, model: DigitsModel) -> None:
        ModelStore(self.volume / "models").add_file(model.model_path, "digits")
        shutil.copytree(self.stack.area(), self.area(), dirs_exist_ok=True)
        # The pods' user must reach the volume: through root, and every folder above it.
        self.root.chmod(0o755)
        closed = [p for p in self.root.parents if p.stat().st_mode & 0o001 == 0]
        if closed:
            raise HelmError(f"the pods' user cannot reach {self.volume}: {closed[0]} is o-x")
        self.chown_volume()

    def chown_volume(self) -> None:
        """Gives the volume's files to the images' user (after writing to it here)."""
        for path in (self.volume, *self.volume.rglob("*")):
            os.chown(path, IMAGE_UID, IMAGE_UID, follow_symlinks=False)

    def _storage(self) -> None:
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{self.fullname}-{self.namespace}-data"},
            "spec": {
                "storageClassName": STORAGE_CLASS,
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": str(self.volume), "type": "Directory"},
                "claimRef": {"namespace": self.namespace, "name": CLAIM},
            },
        }
        sc = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS},
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "Immediate",
        }
        pvc = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": CLAIM, "namespace": self.namespace},
            "spec": {
                "storageClassName": STORAGE_CLASS,
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "1Gi"}},
                "volumeName": pv["metadata"]["name"],  # type: ignore[index]
            },
        }
        self.kubectl(
            "apply",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": [sc, pv, pvc]}),
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = json.loads(self.kubectl("get", "pvc", CLAIM, f"-n={self.namespace}", "-o=json"))
            if got.get("status", {}).get("phase") == "Bound":
                return
            time.sleep(0.5)
        raise HelmError(f"claim {self.namespace}/{CLAIM} did not bind within 60 s")

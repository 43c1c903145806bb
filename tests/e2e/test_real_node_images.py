"""The images ``make images`` builds run as pods on the local cluster's real node.

Both archives are imported into the node's containerd (``pf-controlplane import-image``)
and run by the kubelet under restricted Pod Security (non-root, read-only root, every
capability dropped, RuntimeDefault seccomp), named as the chart's defaults resolve and
with its pull policy (``IfNotPresent``): no override, no registry. Each pod's image is
the archive's own manifest.

Root only, with ``make node`` done; not part of ``make test`` (marker ``node``).
"""

from __future__ import annotations

import functools
import json
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from parkfleet import devcluster

from ..integration.images_env import Image, built
from .conftest import E2E_FLAGS, Kubectl
from .kube import get_json, until

pytestmark = [pytest.mark.e2e, pytest.mark.node, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "images"


def _image_id(archive: Path) -> str:
    # What the kubelet reports for an image that was imported, not pulled: its config's digest.
    with tarfile.open(archive) as tar:

        def read(name: str) -> dict[str, Any]:
            f = tar.extractfile(name)
            assert f is not None
            data: dict[str, Any] = json.load(f)
            return data

        manifest = read("blobs/sha256/" + read("index.json")["manifests"][0]["digest"][7:])
        return str(manifest["config"]["digest"])


def _pod(name: str, image: str, args: list[str]) -> str:
    # What the chart's pods say about security, and its pull policy.
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "restartPolicy": "Never",
                "nodeSelector": {"parkfleet.io/real-node": "true"},
                "securityContext": {
                    "runAsNonRoot": True,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": "main",
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "args": args,
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    }
                ],
                "volumes": [{"name": "tmp", "emptyDir": {}}],
            },
        }
    )


@pytest.fixture(scope="module")
def images() -> dict[str, Image]:
    return built("parkfleet", "agent")


@pytest.fixture(scope="module")
def node_cluster(images: dict[str, Image]) -> Iterator[devcluster.LocalCluster]:
    missing = [
        p
        for p in (devcluster.default_binary(), devcluster.default_binary().with_name("pf-pause"))
        if not p.exists()
    ] + [t for t in ("containerd", "ctr", "runc") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {missing}: run `make node`")
    tmp = Path(tempfile.mkdtemp(prefix="parkfleet-node-images-"))
    try:
        cluster = devcluster.start(tmp, node=True, remove_dir_on_exit=True, flags=E2E_FLAGS)
        for image in images.values():
            started = time.monotonic()
            devcluster.import_image(cluster, image.archive)
            print(f"{image.ref} imported in {time.monotonic() - started:.1f}s")
        yield cluster
    finally:
        devcluster.stop(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def _finished(k: Kubectl, name: str) -> str | None:
    phase = get_json(k, "-n", NAMESPACE, "pod", name)["status"].get("phase")
    return str(phase) if phase in ("Succeeded", "Failed") else None


def test_images_run_as_the_chart_names_them_under_restricted_pod_security(
    node_cluster: devcluster.LocalCluster, images: dict[str, Image]
) -> None:
    k = Kubectl(node_cluster.kubeconfig)
    k("create", "namespace", NAMESPACE)
    k(
        "label",
        "namespace",
        NAMESPACE,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    )
    short = {n: i.ref.removeprefix("docker.io/") for n, i in images.items()}
    pods = {
        "operator": (short["parkfleet"], ["operator", "--help"], "usage: parkfleet operator"),
        "gateway": (short["parkfleet"], ["gateway", "--help"], "usage: parkfleet gateway"),
        "agent": (short["agent"], ["--help"], "usage: parkfleet agent"),
    }
    for name, (image, args, _) in pods.items():
        k("apply", "-f", "-", stdin=_pod(name, image, args))
    for name, (image, _, usage) in pods.items():
        phase = until(functools.partial(_finished, k, name), 180, f"pod {name} to finish")
        logs = k("-n", NAMESPACE, "logs", name).stdout
        assert phase == "Succeeded", logs
        assert usage in logs
        status = get_json(k, "-n", NAMESPACE, "pod", name)["status"]["containerStatuses"][0]
        archive = images["parkfleet" if image == short["parkfleet"] else "agent"].archive
        assert status["imageID"].endswith(_image_id(archive))  # ours, not a pull
    k("delete", "namespace", NAMESPACE, "--wait=false")

"""The chart installed for real: ``helm install`` on the local cluster's real node.

The images ``make images`` builds are imported into the node's containerd; the chart is
installed into a namespace that enforces restricted Pod Security, with the gateway's
volume a hostPath PersistentVolume (a StorageClass of no provisioner) and the cars'
Service a NodePort. Simulated cars outside the cluster (processes on this machine)
connect to the node's address through that Service, and a job applied with kubectl rides
out, one after the other: the active operator's pod deleted (the standby takes over),
the gateway's pod deleted (the StatefulSet recreates it, the cars reconnect), a
``helm upgrade`` with a changed value, and the API server restarted. Every item is then
on the volume exactly once, the same as local ONNX Runtime computes, and ``helm
uninstall`` leaves no parkfleet object behind.

Root only, with ``make node`` and ``make images`` done (``make test`` does both).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from parkfleet import devcluster
from parkfleet.devhelm import IMAGE_UID, ChartInstall, HelmError, image_archives
from parkfleet.devstack import DevStack

from .conftest import E2E_FLAGS, Kubectl
from .kube import get_json, onnx_labels, unit_results, until
from .test_helm import exists
from .test_inferencejob import wait_done, wait_gpus
from .test_real_node import node_requirements

# Install, a job through four faults, uninstall: minutes each on 2 cores.
pytestmark = [pytest.mark.e2e, pytest.mark.node, pytest.mark.timeout(900)]

NS = "parkfleet-system"
FULL = "pf-parkfleet"  # the release pf's object names
POOL, JOB = "helm", "digits-helm"
ITEMS, PER_UNIT, PARALLELISM = 9000, 150, 6
UNITS = ITEMS // PER_UNIT
# Items/s of one simulated car: a unit takes about 10 s, the job a few minutes, long
# enough for the four faults to land while it runs.
CAR_RATE = 15.0
CARS = 8


@dataclass
class Installed:
    """A chart release running on the real node, and the cars outside the cluster."""

    cluster: devcluster.LocalCluster
    chart: ChartInstall
    k: Kubectl

    @property
    def stack(self) -> DevStack:
        """Where the cars run from (and the fleet's certificates live)."""
        return self.chart.stack


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    node_requirements()
    try:
        archives = image_archives()
    except HelmError as e:
        pytest.fail(f"{e} (make test does)")
    tmp = Path(tempfile.mkdtemp(prefix="parkfleet-chart-e2e-"))
    chart: ChartInstall | None = None
    try:
        cluster = devcluster.start(tmp / "cluster", node=True, flags=E2E_FLAGS)
        chart = ChartInstall(cluster, tmp, namespace=NS)
        chart.prepare(archives)
        digits = chart.area() / "digits"
        x = np.load(digits / "inputs.npy")
        np.save(digits / "helm.npy", np.tile(x, (-(-ITEMS // len(x)), 1))[:ITEMS])
        chart.chown_volume()
        seconds = chart.install("--set=gateway.graceSeconds=120")
        print(f"helm install --wait: every pod Ready in {seconds:.1f}s")
        yield Installed(cluster, chart, Kubectl(cluster.kubeconfig))
    finally:
        if chart is not None:
            chart.stack.stop()
        devcluster.stop(tmp / "cluster")
        shutil.rmtree(tmp, ignore_errors=True)


def _pods(x: Installed, component: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(
        x.k, "pods", f"-n={NS}", f"-l=app.kubernetes.io/component={component}"
    )["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def _ready(pod: dict[str, Any]) -> bool:
    conds = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
    return conds.get("Ready") == "True"


def _ready_pod(x: Installed, component: str, other_than: str = "") -> str:
    """The name of the ready pod of ``component`` (another than ``other_than``)."""

    def one() -> str | None:
        pods = [p for p in _pods(x, component) if p["metadata"]["name"] != other_than]
        return pods[0]["metadata"]["name"] if len(pods) == 1 and _ready(pods[0]) else None

    return until(one, 180, f"a ready {component} pod")


def _units(x: Installed) -> int:
    st = get_json(x.k, "ij", JOB).get("status", {})
    return int(st.get("units", {}).get("succeeded", 0))


def _more_units(x: Installed, than: int, what: str) -> int:
    """Waits until more units than ``than`` have succeeded, the job still running."""
    done = until(lambda: n if (n := _units(x)) > than else None, 240, f"units after {what}")
    assert done < UNITS, f"the job ended before {what} could land mid-job"
    return done


def test_every_pod_ready_on_the_real_node_as_its_user(installed: Installed) -> None:
    x = installed
    assert x.cluster.node is not None
    for component in ("operator", "operator-standby", "gateway"):
        pods = _pods(x, component)
        assert len(pods) == 1, [
            (p["metadata"]["name"], p["status"].get("phase"), p["status"].get("reason"))
            for p in pods
        ]
        pod = pods[0]
        assert _ready(pod), pod["status"]
        assert pod["spec"]["nodeName"] == x.cluster.node.name
        status = pod["status"]["containerStatuses"][0]
        name = pod["metadata"]["name"]
        if status["restartCount"]:
            before = x.k("logs", name, f"-n={NS}", "--previous", check=False)
            pytest.fail(f"{name} restarted: {status.get('lastState')}\n{before.stdout[-3000:]}")
        ids = x.k("exec", name, f"-n={NS}", "--", "id", "-u").stdout.strip()
        assert ids == str(IMAGE_UID)
        # The root filesystem is read-only; /tmp is the pod's scratch volume.
        wrote = x.k("exec", name, f"-n={NS}", "--", "touch", "/x", check=False)
        assert wrote.returncode != 0
        assert "Read-only file system" in wrote.stderr
    # kubectl logs through the real kubelet.
    active = _ready_pod(x, "operator")
    logs = x.k("logs", active, f"-n={NS}").stdout
    assert "parkfleet" in logs.lower(), logs[-2000:]


def test_a_job_rides_out_pod_deletions_an_upgrade_and_an_api_server_restart(
    installed: Installed,
) -> None:
    x, k = installed, installed.k
    k(
        "apply",
        "-f",
        "-",
        stdin=f"""
apiVersion: parkfleet.io/v1alpha1
kind: FleetPool
metadata: {{name: {POOL}}}
spec:
  selector: {{matchAttributes: {{pool: {POOL}}}}}
  cellSize: {CARS}
  cells: 1
  gateway: {{shards: 1, graceSeconds: 120}}
""",
    )
    x.stack.start_fleet(CARS, 1, POOL, extra=["--compute=modelled", f"--modelled-rate={CAR_RATE}"])
    node = f"pf-{POOL}-0"

    # A car offers its GPU once connected through the NodePort.
    wait_gpus(k, node, CARS, within=120)
    k(
        "apply",
        "-f",
        "-",
        stdin=f"""
apiVersion: parkfleet.io/v1alpha1
kind: InferenceJob
metadata: {{name: {JOB}}}
spec:
  pool: {POOL}
  model: {{name: digits, outputNames: [label, probabilities]}}
  input: {{path: digits/helm.npy, items: {ITEMS}}}
  itemsPerUnit: {PER_UNIT}
  parallelism: {PARALLELISM}
  batchSize: 50
  retriesPerUnit: 5
  output: {{path: results/{JOB}}}
""",
    )
    done = _more_units(x, 0, "the start")

    # kubectl logs of a fleet pod: the API server asks the gateway's kubelet API.
    fleet_pod = until(
        lambda: next(
            (
                p["metadata"]["name"]
                for p in get_json(k, "pods", f"-l=parkfleet.io/inference-job={JOB}")["items"]
                if p["status"].get("phase") in ("Running", "Succeeded")
            ),
            None,
        ),
        60,
        "a fleet pod that ran",
    )
    assert k("logs", fleet_pod).stdout.strip(), "no logs from the fleet pod"

    # 1. The active operator's pod goes: the standby resumes, the Deployment replaces it.
    active = _ready_pod(x, "operator")
    standby = _ready_pod(x, "operator-standby")
    k("delete", "pod", active, f"-n={NS}", "--wait=false")
    until(
        lambda: "Resuming operations" in k("logs", standby, f"-n={NS}").stdout,
        90,
        "the standby to take over",
    )
    _ready_pod(x, "operator", other_than=active)
    done = _more_units(x, done, "the operator's deletion")

    # 2. The gateway's pod goes: the StatefulSet recreates it, the cars reconnect.
    gateway = _ready_pod(x, "gateway")
    uid = get_json(k, "pod", gateway, f"-n={NS}")["metadata"]["uid"]
    k("delete", "pod", gateway, f"-n={NS}", "--wait=false")
    until(
        lambda: any(p["metadata"]["uid"] != uid and _ready(p) for p in _pods(x, "gateway")),
        180,
        "the gateway's pod to be recreated and ready",
    )
    wait_gpus(k, node, CARS, within=120)  # the cars reconnected
    done = _more_units(x, done, "the gateway's deletion")

    # 3. helm upgrade with a changed value rolls the gateway and the operators.
    revision = get_json(k, "statefulset", f"{FULL}-gateway", f"-n={NS}")["status"]
    x.chart.upgrade("--set=gateway.logLevel=debug")
    rolled = get_json(k, "statefulset", f"{FULL}-gateway", f"-n={NS}")["status"]
    assert rolled["updateRevision"] != revision["updateRevision"]
    until(
        lambda: (
            get_json(k, "statefulset", f"{FULL}-gateway", f"-n={NS}")["status"].get(
                "currentRevision"
            )
            == rolled["updateRevision"]
        ),
        180,
        "the gateway to roll",
    )
    wait_gpus(k, node, CARS, within=120)  # and again after the upgrade
    done = _more_units(x, done, "the upgrade")

    # 4. The API server restarts: the operator and the gateway ride out the outage.
    devcluster.restart_component(x.cluster, "kube-apiserver")

    st = wait_done(k, JOB, 600)
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert conds.get("Complete") == "True", st
    assert st["units"]["succeeded"] == UNITS
    # Every item exactly once on the gateway's volume, as local ONNX Runtime computes it.
    area = x.chart.area()
    items, labels = unit_results(area / "results" / JOB)
    assert np.array_equal(items, np.arange(ITEMS)), "every item exactly once"
    assert np.array_equal(labels, onnx_labels(x.stack, np.load(area / "digits" / "helm.npy")))
    for pod in (*_pods(x, "operator"), *_pods(x, "gateway")):
        # Nothing crashed: the restarts were the ones the test asked for.
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0, pod["status"]


def test_uninstall_leaves_no_parkfleet_object(installed: Installed) -> None:
    x, k = installed, installed.k
    manifest = x.chart.manifest()
    # The user's objects first (a running operator removes the pool's Nodes) ...
    k("delete", "ij", "--all", "--timeout=120s")
    k("delete", "fp", "--all", "--timeout=120s")
    x.stack.stop()
    # ... then the release.
    x.chart.uninstall()
    left = [f"{o['kind']}/{o['metadata']['name']}" for o in manifest if exists(k, o, NS)]
    assert not left, f"left behind by helm uninstall: {left}"
    until(lambda: not get_json(k, "pods", f"-n={NS}")["items"], 120, f"no pod in {NS}")
    labelled = k(
        "get",
        "nodes,leases,jobs,pods,events",
        "-A",
        "-l=parkfleet.io/pool",
        "-o=name",
    ).stdout.split()
    assert not labelled, labelled
    nodes = [n["metadata"]["name"] for n in get_json(k, "nodes")["items"]]
    assert [n for n in nodes if n.startswith("pf-")] == [], nodes
    # The chart's cluster-wide objects are named after the release.
    for kind in (
        "clusterroles",
        "clusterrolebindings",
        "validatingwebhookconfigurations",
        "validatingadmissionpolicies",
        "validatingadmissionpolicybindings",
        "clusterkopfpeerings",
    ):
        names = k("get", kind, "-o=name").stdout.split()
        assert not [n for n in names if FULL in n], (kind, names)

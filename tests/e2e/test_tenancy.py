"""Tenants kept apart on the data volume, end to end.

Namespace B cannot read namespace A's inputs, write A's results, or plant A's unit files:
each namespace's pods and InferenceJobs name paths in its own area of the gateway's data
volume (``<data root>/<namespace>/``), and a unit file counts as done only when it names
its job's uid. A ConfigMap input is read with the identity the chart gives the gateway,
only in the namespaces the chart lists.

Runs on the session's stack (operator, gateway, 50 parked cars of pool `demo`); pods and
jobs are applied with kubectl in namespaces of their own, as their users would.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from parkfleet import devcluster
from parkfleet.api import FleetPoolSpec
from parkfleet.devstack import DevStack
from parkfleet.gateway import Gateway, GatewayConfig
from parkfleet.nodeagent.taskspecs import BadInput, TaskSpecs
from parkfleet.nodeagent.translate import translate

from .conftest import REPO, Kubectl
from .kube import get_json, inference_pod, onnx_labels, token_kubeconfig, until
from .test_helm import CHART, Helm

pytestmark = pytest.mark.e2e

A, B = "tenant-a", "tenant-b"
INPUT_FIELD = "spec.containers[0].env[PARKFLEET_INPUT]"
OUTPUT_FIELD = "spec.containers[0].env[PARKFLEET_OUTPUT]"


@pytest.fixture(scope="module")
def tenants(stack: DevStack, kubectl: Kubectl) -> Iterator[DevStack]:
    """Namespaces A and B, each with the digits inputs in its area; A also has a secret."""
    kubectl("apply", "-f", str(REPO / "crds" / "inferencejobs.parkfleet.io.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/inferencejobs.parkfleet.io")
    for ns in (A, B):
        kubectl("create", "namespace", ns)
        shutil.copytree(stack.area() / "digits", stack.area(ns) / "digits")
    x = np.load(stack.area(A) / "digits" / "inputs.npy")
    np.save(stack.area(A) / "digits" / "secret.npy", x[::-1])
    try:
        yield stack
    finally:
        kubectl("delete", "namespace", A, B, "--wait=false", check=False)


def run_pods(k: Kubectl, ns: str, docs: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Applies each ``name: manifest`` in ``ns``; the pods' status once each has ended."""
    for doc in docs.values():
        k("apply", "-n", ns, "-f", "-", stdin=doc)

    def ended(name: str) -> dict[str, Any] | None:
        status: dict[str, Any] = get_json(k, "pod", name, "-n", ns).get("status", {})
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    return {name: until(partial(ended, name), 90, f"pod {ns}/{name} to end") for name in docs}


def refused(status: dict[str, Any], reason: str, field: str, says: str) -> None:
    assert (status["phase"], status.get("reason")) == ("Failed", reason), status
    assert status["message"].startswith(field), status["message"]
    assert says in status["message"], status["message"]


def test_namespace_b_cannot_read_namespace_a_inputs(tenants: DevStack, kubectl: Kubectl) -> None:
    secret = tenants.area(A) / "digits" / "secret.npy"
    # A symlink from B's area into A's (a careless admin's shortcut): no way through.
    (tenants.area(B) / "shortcut").symlink_to(secret.parent, target_is_directory=True)
    unsupported, invalid = "UnsupportedPodSpec", "InvalidTaskInput"
    attempts = {
        "via-dotdot": (f"../{A}/digits/secret.npy", unsupported, "inside the namespace's"),
        "via-absolute": (str(secret), unsupported, "is absolute"),
        "via-symlink": ("shortcut/secret.npy", invalid, f"outside namespace {B}'s area"),
        # The same name in B is B's own file, which B does not have.
        "same-name": ("digits/secret.npy", invalid, "No such file"),
    }
    docs = {
        name: inference_pod(name, "demo", "0-8", 8, output="stolen", source=path)
        for name, (path, *_) in attempts.items()
    }
    ended = run_pods(kubectl, B, docs)
    for name, (_, reason, says) in attempts.items():
        refused(ended[name], reason, INPUT_FIELD, says)
        if name != "via-absolute":  # that one repeats the path it was given
            assert str(tenants.data) not in ended[name]["message"]  # no gateway path shown
    assert not (tenants.area(B) / "stolen").exists()
    # The control: A's own pod reads it.
    doc = inference_pod("own-secret", "demo", "0-8", 8, output="mine", source="digits/secret.npy")
    assert run_pods(kubectl, A, {"own-secret": doc})["own-secret"]["phase"] == "Succeeded"
    with np.load(tenants.area(A) / "mine" / "own-secret.npz") as z:
        assert np.array_equal(z["label"], onnx_labels(tenants, np.load(secret)[:8]))


def test_namespace_b_cannot_write_namespace_a_results(tenants: DevStack, kubectl: Kubectl) -> None:
    reports = tenants.area(A) / "reports"
    reports.mkdir()
    report = reports / "report.npz"
    np.savez(report, label=np.arange(8))
    before = report.read_bytes()
    (tenants.area(B) / "a-reports").symlink_to(reports, target_is_directory=True)
    attempts = {
        "write-dotdot": (f"../{A}/reports", "UnsupportedPodSpec", "inside the namespace's"),
        "write-absolute": (str(reports), "UnsupportedPodSpec", "is absolute"),
        "write-symlink": ("a-reports", "InvalidTaskInput", f"outside namespace {B}'s area"),
    }
    docs = {
        name: inference_pod(name, "demo", "0-8", 8, output=out)
        for name, (out, *_) in attempts.items()
    }
    # The control: into its own area, B's pod writes its result.
    docs["report"] = inference_pod("report", "demo", "0-8", 8, output="reports")
    ended = run_pods(kubectl, B, docs)
    for name, (_, reason, says) in attempts.items():
        refused(ended[name], reason, OUTPUT_FIELD, says)
    assert ended["report"]["phase"] == "Succeeded"
    assert (tenants.area(B) / "reports" / "report.npz").exists()
    # A's folder is as it was: nothing added, its report.npz not replaced.
    assert sorted(os.listdir(reports)) == ["report.npz"]
    assert report.read_bytes() == before


def unit_pods(k: Kubectl, ns: str, job: str) -> dict[int, dict[str, Any]]:
    """A job's pods by unit (completion index)."""
    items = get_json(k, "pods", "-n", ns, "-l", f"batch.kubernetes.io/job-name={job}")["items"]
    return {
        int(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]): p
        for p in items
    }


def summary(pod: dict[str, Any]) -> dict[str, Any]:
    """A unit pod's termination summary."""
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    doc: dict[str, Any] = json.loads(term["message"])
    return doc


def test_planted_unit_files_do_not_count_and_the_jobs_own_file_does(
    tenants: DevStack, kubectl: Kubectl
) -> None:
    x = np.tile(np.load(tenants.area(A) / "digits" / "inputs.npy"), (3, 1))[:750]
    np.save(tenants.area(A) / "digits" / "planted.npy", x)
    right = onnx_labels(tenants, x)
    out = tenants.area(A) / "results" / "planted"
    out.mkdir(parents=True)
    # Planted before the job exists: a file naming no job, and one naming another job.
    wrong = np.zeros(250, dtype=right.dtype)
    np.savez(out / "unit-000000.npz", label=wrong, first_item=np.array([0]))
    np.savez(
        out / "unit-000001.npz", label=wrong, first_item=[250], job_uid=np.array("another-job")
    )
    # Nobody else can plant one: B's pod cannot reach A's folder, and a plain pod of A
    # cannot take a unit file's name.
    b_try = inference_pod("unit-000002", "demo", "0-8", 8, output=f"../{A}/results/planted")
    b_ended = run_pods(kubectl, B, {"unit-000002": b_try})["unit-000002"]
    refused(b_ended, "UnsupportedPodSpec", OUTPUT_FIELD, "inside the namespace's")
    a_try = inference_pod("unit-000002", "demo", "0-8", 8, output="results/planted")
    a_ended = run_pods(kubectl, A, {"unit-000002": a_try})["unit-000002"]
    refused(a_ended, "UnsupportedPodSpec", "metadata.name", "unit-NNNNNN.npz")
    assert sorted(os.listdir(out)) == ["unit-000000.npz", "unit-000001.npz"]

    job = (
        "apiVersion: parkfleet.io/v1alpha1\nkind: InferenceJob\nmetadata: {name: planted}\n"
        "spec:\n  pool: demo\n  model: {name: digits, outputNames: [label, probabilities]}\n"
        "  input: {path: digits/planted.npy, items: 750}\n  itemsPerUnit: 250\n"
        "  parallelism: 1\n  batchSize: 50\n  output: {path: results/planted}\n"
    )
    kubectl("apply", "-n", A, "-f", "-", stdin=job)
    uid = get_json(kubectl, "ij", "planted", "-n", A)["metadata"]["uid"]
    # The job's own result of its last unit, there before that unit's pod (one unit at a
    # time, in order): counted as done, not run again.
    own = out / "unit-000002.npz"
    np.savez(own, label=right[500:], first_item=np.array([500]), job_uid=np.array(uid))
    own_inode = own.stat().st_ino

    def ended() -> dict[str, Any] | None:
        st: dict[str, Any] = get_json(kubectl, "ij", "planted", "-n", A).get("status", {})
        conds = {c["type"]: c["status"] for c in st.get("conditions", [])}
        return st if "True" in (conds.get("Complete"), conds.get("Failed")) else None

    st = until(ended, 180, "InferenceJob planted to end")
    assert st["units"]["succeeded"] == 3, st
    assert st["resultLocation"] == f"{A}/results/planted"
    # The planted files were not taken for the units: they ran, and their files, which
    # replaced the planted ones, name this job.
    for unit in (0, 1):
        with np.load(out / f"unit-{unit:06d}.npz", allow_pickle=False) as z:
            assert str(z["job_uid"]) == uid
            assert int(z["first_item"][0]) == 250 * unit
            assert np.array_equal(z["label"], right[250 * unit : 250 * (unit + 1)])
    assert own.stat().st_ino == own_inode  # the job's own file stood
    pods = unit_pods(kubectl, A, "planted")
    assert [summary(pods[u]).get("cached", False) for u in (0, 1, 2)] == [False, False, True]
    kubectl("delete", "ij", "planted", "-n", A)


@pytest.fixture
async def gateway_identity(
    cluster: devcluster.LocalCluster, kubectl: Kubectl, tmp_path: Path
) -> AsyncIterator[client.ApiClient]:
    """An API client with the token of the gateway's ServiceAccount, bound to the rules
    the chart renders with ``gateway.configMapInputs.namespaces=[A]`` (and nothing more)."""
    release = f"cm{uuid.uuid4().hex[:6]}"
    ns = f"pf-{release}"
    kubectl("create", "namespace", ns)
    rendered = Helm(tmp_path / "helm-home")(
        "template",
        release,
        str(CHART),
        f"--namespace={ns}",
        f"--set=gateway.configMapInputs.namespaces={{{A}}}",
        "--show-only=templates/serviceaccounts.yaml",
        "--show-only=templates/rbac.yaml",
        "--show-only=templates/rbac-configmap-inputs.yaml",
    ).stdout
    kubectl("apply", "-f", "-", stdin=rendered)
    try:
        sa = f"{release}-parkfleet-gateway"
        token = kubectl("create", "token", sa, "-n", ns, "--duration=10m").stdout.strip()
        path = token_kubeconfig(cluster.kubeconfig, token, tmp_path / "gateway.kubeconfig")
        cfg = client.Configuration()
        await config.load_kube_config(config_file=str(path), client_configuration=cfg)
        async with client.ApiClient(configuration=cfg) as api:
            yield api
    finally:
        kubectl("delete", "-f", "-", "--wait=false", stdin=rendered, check=False)
        kubectl("delete", "namespace", ns, "--wait=false", check=False)


async def test_a_configmap_input_is_read_under_the_charts_rbac_in_listed_namespaces_only(
    tenants: DevStack, kubectl: Kubectl, gateway_identity: client.ApiClient, tmp_path: Path
) -> None:
    assert tenants.model is not None
    items = np.load(tenants.area() / "digits" / "inputs.npy")[:6].tolist()
    for ns in (A, B):
        doc = (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: six}\n"
            f"data:\n  items.json: '{json.dumps(items)}'\n"
        )
        kubectl("apply", "-n", ns, "-f", "-", stdin=doc)
    # The node agent's own code, with a real gateway's model store, as the chart's gateway.
    gw = Gateway(GatewayConfig.from_certs_dir(tenants.certs, tmp_path / "store"))
    gw.models.add_file(tenants.model.model_path, name="digits")
    specs = TaskSpecs(gateway_identity, gw, tenants.data)
    pool = FleetPoolSpec(name="demo")

    def pod(ns: str) -> dict[str, Any]:
        env = {"PARKFLEET_MODEL": "digits", "PARKFLEET_INPUT_CONFIGMAP": "six/items.json"}
        return {
            "metadata": {"name": "tiny", "namespace": ns, "uid": f"uid-{ns}"},
            "spec": {
                "containers": [
                    {
                        "name": "infer",
                        "image": "parkfleet.io/runtime/onnxruntime:1",
                        "env": [{"name": k, "value": v} for k, v in env.items()],
                    }
                ]
            },
        }

    prepared = await specs.prepare(pod(A), "demo-0", translate(pod(A), pool.runtimes), pool)
    assert (prepared.spec.item_start, prepared.spec.item_end) == (0, 6)
    with pytest.raises(BadInput) as err:
        await specs.prepare(pod(B), "demo-0", translate(pod(B), pool.runtimes), pool)
    assert err.value.message == (
        "spec.containers[0].env[PARKFLEET_INPUT_CONFIGMAP]: the gateway may not read "
        f"ConfigMaps in namespace {B} (the chart's gateway.configMapInputs.namespaces)"
    )
    # That identity reads nothing else: no listing, not even in A; no other namespace.
    core = client.CoreV1Api(gateway_identity)
    for call in (
        core.list_namespaced_config_map(A),
        core.list_config_map_for_all_namespaces(),
        core.read_namespaced_config_map("kube-root-ca.crt", "kube-system"),
        core.read_namespaced_secret("anything", A),
    ):
        with pytest.raises(ApiException) as denied:
            await call
        assert denied.value.status == 403

"""Least privilege in the cluster, with the identities the chart creates.

The chart is installed by ``helm install`` into the local control plane (its RBAC, its
ValidatingAdmissionPolicies, its service accounts); tokens are minted for those service
accounts (TokenRequest, ``kubectl create token``) and every request below is made with a
kubeconfig that carries only such a token, never the admin's. What RBAC grants on every
Node, Lease and pod, the policies narrow to parkfleet's own: the gateway writes only cell
Nodes and their Leases and deletes or writes the status of only pods bound to cells; the
operator creates only its InferenceJobs' Jobs and deletes only cell Nodes. A real gateway
process runs under its chart identity: it registers its cell, runs a pod whose input is a
ConfigMap, and its ``/metrics`` (``--metrics-auth=kubernetes``) answers only tokens bound
to the chart's metrics-reader role.

The NetworkPolicies cannot be checked here: the local control plane has no network plugin
to enforce them, so ``tests/e2e/test_helm.py`` checks how they render, rule by rule.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Counter

from parkfleet import devcluster
from parkfleet.api import InferenceJobSpec
from parkfleet.controller.jobs import batch_job
from parkfleet.devstack import DevStack, free_port
from parkfleet.kubeauth import NonResourceGuard
from parkfleet.metricsserver import MetricsServer
from parkfleet.shards import shard_of

from .conftest import Kubectl
from .kube import get_json, https_get, inference_pod, local_labels, token_kubeconfig, until
from .test_helm import CHART, Helm

pytestmark = pytest.mark.e2e

RELEASE = "lp"
FULLNAME = f"{RELEASE}-parkfleet"


@dataclass
class Chart:
    """The installed chart and kubeconfigs of its identities (tokens, no certificates)."""

    namespace: str  # the release's
    tenant: str  # a namespace the chart lets the gateway read ConfigMaps in
    admin: Kubectl
    gateway: Kubectl  # FULLNAME-gateway's token
    operator: Kubectl  # FULLNAME-operator's token
    reader_token: str  # a service account bound to FULLNAME-metrics-reader
    nobody_token: str  # a service account with no rights at all
    policy_prefix: str  # the chart's policies are named PREFIX-<what>.parkfleet.io

    def refusal(self, what: str) -> str:
        """How the API server words a refusal by the chart's policy ``what``."""
        name = f"{self.policy_prefix}-{what}.parkfleet.io"
        return f"ValidatingAdmissionPolicy '{name}' with binding '{name}' denied request"


def token(k: Kubectl, sa: str, namespace: str) -> str:
    return k("create", "token", sa, f"-n={namespace}", "--duration=1h").stdout.strip()


@pytest.fixture(scope="module")
def chart(
    cluster: devcluster.LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Chart]:
    k = Kubectl(cluster.kubeconfig)
    tmp = tmp_path_factory.mktemp("least-privilege")
    suffix = uuid.uuid4().hex[:6]
    ns, tenant = f"pflp-{suffix}", f"lp-tenant-{suffix}"
    for name in (ns, tenant):
        k("create", "namespace", name)
    for sa in ("scraper", "nobody"):
        k("create", "serviceaccount", sa, f"-n={ns}")
    helm = Helm(tmp / "helm-home", cluster.kubeconfig)
    try:
        helm(
            "install",
            RELEASE,
            str(CHART),
            f"--namespace={ns}",
            f"--set=gateway.configMapInputs.namespaces={{{tenant}}}",
            f"--set=gateway.objectStore.secrets[0].namespace={tenant}",
            "--set=gateway.objectStore.secrets[0].name=store",
            "--set=monitoring.metricsReaders[0].kind=ServiceAccount",
            "--set=monitoring.metricsReaders[0].name=scraper",
            f"--set=monitoring.metricsReaders[0].namespace={ns}",
            # No operator runs: its webhook would only make every InferenceJob wait for it.
            "--set=operator.admission.enabled=false",
        )
        identities = {
            component: Kubectl(
                token_kubeconfig(
                    cluster.kubeconfig,
                    token(k, f"{FULLNAME}-{component}", ns),
                    tmp / f"{component}.kubeconfig",
                )
            )
            for component in ("gateway", "operator")
        }
        got = Chart(
            namespace=ns,
            tenant=tenant,
            admin=k,
            gateway=identities["gateway"],
            operator=identities["operator"],
            reader_token=token(k, "scraper", ns),
            nobody_token=token(k, "nobody", ns),
            policy_prefix=f"{FULLNAME}-{ns}",
        )
        wait_for_policies(got)
        yield got
    finally:
        helm("uninstall", RELEASE, f"--namespace={ns}", "--wait", check=False)
        k("delete", "namespace", ns, tenant, "--wait=false", check=False)


def wait_for_policies(chart: Chart) -> None:
    """Admission policies take effect a moment after they are created: until then a
    request they refuse is let through. A server-side dry run shows when they do."""

    def refused() -> bool:
        dry = ("create", "-f", "-", "--dry-run=server")
        node = chart.gateway(*dry, stdin=json.dumps(plain_node("lp-probe")), check=False)
        job = chart.operator(*dry, stdin=json.dumps(JOB), check=False)
        return (
            chart.refusal("gateway-nodes") in node.stderr
            and chart.refusal("operator-jobs") in job.stderr
        )

    until(refused, 60, "the chart's admission policies to take effect")


def plain_node(name: str) -> dict[str, Any]:
    """A Node such as a real kubelet registers: not parkfleet's."""
    labels = {"kubernetes.io/hostname": name}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}


def cell_node(pool: str, index: int = 0) -> dict[str, Any]:
    """A cell's Node as the node agent registers it (nodeagent/nodes.py)."""
    cell = f"{pool}-{index}"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": f"pf-{cell}",
            "labels": {"parkfleet.io/pool": pool, "parkfleet.io/cell": cell},
        },
        "spec": {
            "taints": [{"key": "parkfleet.io/fleet", "value": "true", "effect": "NoSchedule"}]
        },
    }


def lease(name: str, namespace: str = "kube-node-lease") -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40},
    }


def bound_pod(name: str, node: str) -> dict[str, Any]:
    container = {"name": "c", "image": "busybox"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [container]},
    }


JOB = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"name": "no-owner", "namespace": "default"},
    "spec": {
        "template": {
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}
        }
    },
}
LABEL = {"metadata": {"labels": {"probe": "1"}}}


def apply(k: Kubectl, obj: dict[str, Any], *args: str) -> None:
    k("apply", *args, "-f", "-", stdin=json.dumps(obj))


async def identity(kubeconfig: Path) -> client.ApiClient:
    """A client as the node agent and the operator open theirs, from a token kubeconfig."""
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    return client.ApiClient(configuration=cfg)


@pytest.fixture
async def gateway_api(chart: Chart) -> AsyncIterator[client.ApiClient]:
    """The API as the chart's gateway: its service account's token."""
    async with await identity(chart.gateway.kubeconfig) as api:
        yield api


@pytest.fixture
async def operator_api(chart: Chart) -> AsyncIterator[client.ApiClient]:
    """The API as the chart's operator: its service account's token."""
    async with await identity(chart.operator.kubeconfig) as api:
        yield api


async def refused(call: Awaitable[Any], chart: Chart, policy: str, says: str) -> None:
    """``call`` is refused (403) by the chart's policy ``policy``, with ``says`` in why."""
    with pytest.raises(ApiException) as caught:
        await call
    message = json.loads(caught.value.body)["message"]
    assert caught.value.status == 403, message
    assert chart.refusal(policy) in message, message
    assert says in message, message


async def denied(call: Awaitable[Any], verb: str, resource: str) -> None:
    """``call`` is refused by RBAC: the identity has no ``verb`` on ``resource`` at all."""
    with pytest.raises(ApiException) as caught:
        await call
    message = json.loads(caught.value.body)["message"]
    assert caught.value.status == 403, message
    assert f'cannot {verb} resource "{resource}"' in message, message


# ---- the gateway's token -------------------------------------------------------------


def test_the_gateways_token_gets_only_the_object_store_secrets_listed(chart: Chart) -> None:
    k, ns = chart.admin, chart.tenant
    for name in ("store", "other"):
        k(
            "create",
            "secret",
            "generic",
            name,
            f"-n={ns}",
            "--type=parkfleet.io/object-store",
            "--from-literal=endpoint=http://127.0.0.1:9",
            "--from-literal=accessKeyId=a",
            "--from-literal=secretAccessKey=b",
        )
    try:
        got = chart.gateway("get", "secret", "store", f"-n={ns}", "-o=jsonpath={.type}")
        assert got.stdout == "parkfleet.io/object-store"
        for args in (
            ("secret", "other", f"-n={ns}"),
            ("secrets", f"-n={ns}"),
            ("secret", "store", f"-n={chart.namespace}"),
            ("secrets", "-A"),
        ):
            refused = chart.gateway("get", *args, check=False)
            assert refused.returncode != 0, args
            assert "forbidden" in refused.stderr.lower(), refused.stderr
    finally:
        k("delete", "secret", "store", "other", f"-n={ns}", check=False)


async def test_the_gateways_token_writes_its_cell_nodes_and_their_leases_and_no_other(
    chart: Chart, gateway_api: client.ApiClient
) -> None:
    k = chart.admin
    core, coord = client.CoreV1Api(gateway_api), client.CoordinationV1Api(gateway_api)
    suffix = uuid.uuid4().hex[:6]
    pool, other = f"lpn{suffix}", f"lp-worker-{suffix}"
    cell = f"pf-{pool}-0"
    apply(k, plain_node(other))
    try:
        # As the node agent does: registers the cell, adopts it, writes its status.
        await core.create_node(cast(Any, cell_node(pool)))
        await core.patch_node(cell, {"metadata": {"labels": {"type": "virtual-kubelet"}}})
        status = {"status": {"capacity": {"nvidia.com/gpu": "1"}}}
        await core.patch_node_status(cell, status)
        assert get_json(k, "node", cell)["status"]["capacity"]["nvidia.com/gpu"] == "1"

        # Any other Node: refused by the policy, which names it.
        says = (
            "the parkfleet gateway may change only parkfleet cell Nodes (pf-<pool>-<index>, "
            f"labelled parkfleet.io/pool and parkfleet.io/cell): {other} is not one"
        )
        await refused(core.patch_node(other, LABEL), chart, "gateway-nodes", says)
        await refused(core.patch_node_status(other, status), chart, "gateway-nodes", says)
        made_a_cell = {"parkfleet.io/pool": "x", "parkfleet.io/cell": "x-0"}
        made = core.patch_node(other, {"metadata": {"labels": made_a_cell}})
        await refused(made, chart, "gateway-nodes", says)
        # Nor a Node that only looks like a cell, nor a cell made into another Node.
        fake = cell_node(pool, 1)
        fake["metadata"]["labels"]["parkfleet.io/cell"] = "x-1"
        says = f"the parkfleet gateway may write only parkfleet cell Nodes: pf-{pool}-1 would"
        await refused(core.create_node(cast(Any, fake)), chart, "gateway-nodes", says)
        stripped = core.patch_node(cell, {"metadata": {"labels": {"parkfleet.io/pool": None}}})
        await refused(stripped, chart, "gateway-nodes", f"{cell} would not be one")
        untainted = core.patch_node(cell, [{"op": "replace", "path": "/spec/taints", "value": []}])
        says = f"may not take the taint parkfleet.io/fleet:NoSchedule off Node {cell}"
        await refused(untainted, chart, "gateway-nodes", says)
        # RBAC grants it no delete of Nodes, nor a read of one.
        await denied(core.delete_node(cell), "delete", "nodes")
        await denied(core.read_node(other), "get", "nodes")

        # Leases: its cells' in kube-node-lease, no other.
        await coord.create_namespaced_lease("kube-node-lease", cast(Any, lease(cell)))
        renewed = {"spec": {"leaseDurationSeconds": 30}}
        await coord.patch_namespaced_lease(cell, "kube-node-lease", renewed)
        says = f"(kube-node-lease/pf-<pool>-<index>): kube-node-lease/{other} is not one"
        made = coord.create_namespaced_lease("kube-node-lease", cast(Any, lease(other)))
        await refused(made, chart, "gateway-leases", says)
        elsewhere = coord.create_namespaced_lease("default", cast(Any, lease(cell, "default")))
        await denied(elsewhere, "create", "leases")
    finally:
        k("delete", "node", other, cell, "--wait=false", "--ignore-not-found", check=False)
        k("delete", "lease", cell, other, "-n=kube-node-lease", "--ignore-not-found", check=False)


async def test_the_gateways_token_deletes_and_writes_status_only_of_pods_bound_to_cells(
    chart: Chart, gateway_api: client.ApiClient
) -> None:
    k, ns = chart.admin, chart.tenant
    core = client.CoreV1Api(gateway_api)
    suffix = uuid.uuid4().hex[:6]
    cell, other = f"pf-lpp{suffix}-0", f"lp-worker-{suffix}"
    apply(k, cell_node(f"lpp{suffix}"))
    apply(k, plain_node(other))
    # Done within seconds: a Node with no kubelet turns unreachable, and its pods are
    # evicted, in about a minute.
    for pod, node in (("on-cell", cell), ("elsewhere", other)):
        apply(k, bound_pod(pod, node), f"-n={ns}")
    try:
        status = {"status": {"message": "written by the gateway"}}
        says = (
            "the parkfleet gateway may delete or write the status of only pods bound to a "
            f"parkfleet cell Node: pod {ns}/elsewhere is bound to Node {other}"
        )
        written = core.patch_namespaced_pod_status("elsewhere", ns, status)
        await refused(written, chart, "gateway-pods", says)
        # As pods.py deletes: at once, the one pod it knows.
        now = client.V1DeleteOptions(grace_period_seconds=0)
        deleted = core.delete_namespaced_pod("elsewhere", ns, body=now)
        await refused(deleted, chart, "gateway-pods", says)
        assert "deletionTimestamp" not in get_json(k, "pod", "elsewhere", f"-n={ns}")["metadata"]

        await core.patch_namespaced_pod_status("on-cell", ns, status)
        got = get_json(k, "pod", "on-cell", f"-n={ns}")["status"]
        assert got["message"] == "written by the gateway"
        await core.delete_namespaced_pod("on-cell", ns, body=now)
        gone = k("get", "pod", "on-cell", f"-n={ns}", check=False)
        assert "NotFound" in gone.stderr, gone.stdout
        # RBAC grants it no change of a pod's spec at all, nor a read of one by name.
        await denied(core.patch_namespaced_pod("elsewhere", ns, LABEL), "patch", "pods")
        await denied(core.read_namespaced_pod("elsewhere", ns), "get", "pods")
    finally:
        force = ("--grace-period=0", "--force", "--ignore-not-found")
        k("delete", "pod", "on-cell", "elsewhere", f"-n={ns}", *force, check=False)
        k("delete", "node", cell, other, "--wait=false", "--ignore-not-found", check=False)


# ---- the operator's token ------------------------------------------------------------


def inference_job_spec(name: str) -> dict[str, Any]:
    """A small InferenceJob's spec, its results under ``results/NAME``."""
    return {
        "pool": "demo",
        "model": {"name": "digits"},
        "input": {"path": "digits/inputs.npy", "items": 100},
        "output": {"path": f"results/{name}"},
    }


def inference_job_job(name: str, namespace: str) -> dict[str, Any]:
    """The Job the operator makes of an InferenceJob (controller/jobs.py)."""
    obj = {"metadata": {"name": name, "namespace": namespace}, "spec": inference_job_spec(name)}
    return batch_job(InferenceJobSpec.from_k8s(obj), str(uuid.uuid4()))


async def test_the_operators_token_creates_only_its_inferencejobs_jobs_running_on_cells(
    chart: Chart, operator_api: client.ApiClient
) -> None:
    ns = chart.tenant
    batch = client.BatchV1Api(operator_api)

    def create(job: dict[str, Any]) -> Awaitable[Any]:
        # A dry run: admitted or not, nothing is stored (the owner's uid is made up).
        return batch.create_namespaced_job(ns, cast(Any, job), dry_run="All")

    own = inference_job_job("units", ns)
    created = await create(own)
    assert created.metadata.name == "units"

    # A Job of no InferenceJob, or of something else: refused, naming the Job.
    says = (
        f"the parkfleet operator may create only the Jobs of its InferenceJobs: Job {ns}/units "
        "has no controller ownerReference to InferenceJob units (parkfleet.io)"
    )
    ownerless = copy.deepcopy(own)
    del ownerless["metadata"]["ownerReferences"]
    await refused(create(ownerless), chart, "operator-jobs", says)
    for field, value in (
        ("kind", "Deployment"),
        ("apiVersion", "apps/v1"),
        ("name", "another"),
        ("controller", False),
    ):
        forged = copy.deepcopy(own)
        forged["metadata"]["ownerReferences"][0][field] = value
        await refused(create(forged), chart, "operator-jobs", says)

    # Its Jobs' pods become tasks on cars: a template that could run a container on a
    # real Node (a hostPath, a fixed Node, a token, no pool, another image) is refused.
    says = (
        f"the parkfleet operator may create only Jobs whose pods run on cells: Job {ns}/units "
        "needs a parkfleet.io/pool nodeSelector"
    )
    for change in (
        {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]},
        {"nodeName": "lp-worker"},
        {"automountServiceAccountToken": True},
        {"nodeSelector": {"kubernetes.io/os": "linux"}},
        {"initContainers": [{"name": "i", "image": "parkfleet.io/runtime/onnxruntime:1"}]},
        {"containers": [{"name": "infer", "image": "busybox"}]},
    ):
        risky = copy.deepcopy(own)
        risky["spec"]["template"]["spec"].update(change)
        await refused(create(risky), chart, "operator-jobs", says)


async def test_the_operators_token_suspends_and_resizes_its_inferencejobs_jobs_only(
    chart: Chart, operator_api: client.ApiClient
) -> None:
    ns, k = chart.tenant, chart.admin
    # A real owner, suspended: no pod runs (an operator of the session, if one runs, may
    # create the Job first; it is the same Job).
    ij = {
        "apiVersion": "parkfleet.io/v1alpha1",
        "kind": "InferenceJob",
        "metadata": {"name": "resized", "namespace": ns},
        "spec": {**inference_job_spec("resized"), "itemsPerUnit": 50, "suspend": True},
    }
    apply(k, ij)
    owner = get_json(k, "ij", "resized", f"-n={ns}")
    batch = client.BatchV1Api(operator_api)
    try:
        job = batch_job(InferenceJobSpec.from_k8s(owner), owner["metadata"]["uid"])
        try:
            await batch.create_namespaced_job(ns, cast(Any, job))
        except ApiException as exc:
            if exc.status != 409:
                raise
        # What inferencejob.py patches: spec.suspend and spec.parallelism.
        patched = await batch.patch_namespaced_job(
            "resized", ns, {"spec": {"suspend": True, "parallelism": 1}}
        )
        assert (patched.spec.suspend, patched.spec.parallelism) == (True, 1)
        # A patch may not make it a Job of no InferenceJob.
        says = (
            f"the parkfleet operator may create only the Jobs of its InferenceJobs: Job "
            f"{ns}/resized has no controller ownerReference"
        )
        orphaned = {"metadata": {"ownerReferences": None}}
        await refused(
            batch.patch_namespaced_job("resized", ns, orphaned), chart, "operator-jobs", says
        )
    finally:
        k("delete", "ij", "resized", f"-n={ns}", "--wait=false", check=False)


async def test_the_operators_token_deletes_only_cell_nodes_and_their_leases(
    chart: Chart, operator_api: client.ApiClient
) -> None:
    k = chart.admin
    core, coord = client.CoreV1Api(operator_api), client.CoordinationV1Api(operator_api)
    suffix = uuid.uuid4().hex[:6]
    cell, other = f"pf-lpo{suffix}-0", f"lp-worker-{suffix}"
    apply(k, cell_node(f"lpo{suffix}"))
    apply(k, plain_node(other))
    for name in (cell, other):
        apply(k, lease(name))
    try:
        says = (
            "the parkfleet operator may only delete parkfleet cell Nodes (pf-<pool>-<index>, "
            f"labelled parkfleet.io/pool and parkfleet.io/cell): {other} is not one"
        )
        await refused(core.delete_node(other), chart, "operator-nodes", says)
        says = f"(kube-node-lease/pf-<pool>-<index>): kube-node-lease/{other} is not one"
        gone = coord.delete_namespaced_lease(other, "kube-node-lease")
        await refused(gone, chart, "operator-leases", says)
        assert k("get", "node", other, "-o=name").stdout.strip() == f"node/{other}"
        # fleetpool.py's calls on a removed cell: its Node, then its Lease.
        await core.delete_node(cell)
        await coord.delete_namespaced_lease(cell, "kube-node-lease")
        # RBAC grants it no write of a Node at all.
        await denied(core.patch_node(other, LABEL), "patch", "nodes")
    finally:
        k("delete", "node", cell, other, "--wait=false", "--ignore-not-found", check=False)
        k("delete", "lease", cell, other, "-n=kube-node-lease", "--ignore-not-found", check=False)


# ---- a real gateway under the chart's identity ---------------------------------------


def counter(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def pool_on_shard(prefix: str, shards: int, shard: int) -> str:
    """A pool name whose cell 0 rendezvous hashing gives to ``shard``."""
    while True:
        name = f"{prefix}{uuid.uuid4().hex[:6]}"
        if shard_of(f"{name}-0", shards) == shard:
            return name


def configmap_pod(name: str, pool: str, configmap: str) -> str:
    """A plain pod of ``pool`` that classifies the items of ``configmap``'s items.json."""
    pod = inference_pod(name, pool, "0-6", 3, output=f"results/{name}")
    source = f"{{name: PARKFLEET_INPUT_CONFIGMAP, value: {configmap}/items.json}}"
    return re.sub(r"\{name: PARKFLEET_INPUT, value: [^}]*\}", source, pod)


def test_a_gateway_under_the_charts_identity_runs_a_configmap_input_and_guards_its_metrics(
    chart: Chart, cluster: devcluster.LocalCluster, tmp_path: Path
) -> None:
    k, ns = chart.admin, chart.tenant
    # Shard 1 of a two-shard pool: the session's gateway (shard 0), if it runs, leaves it.
    pool = pool_on_shard("lpcm", 2, 1)
    cell = f"pf-{pool}-0"
    # The stack's processes run with the gateway's token kubeconfig, not the admin's.
    stack = DevStack(tmp_path / "stack", chart.gateway.kubeconfig, telemetry_interval_s=1.0)
    model = stack.prepare()
    port = free_port()
    pool_doc = (
        "apiVersion: parkfleet.io/v1alpha1\nkind: FleetPool\n"
        f"metadata: {{name: {pool}}}\n"
        f"spec: {{selector: {{matchAttributes: {{pool: {pool}}}}}, cellSize: 4, cells: 1, "
        "gateway: {shards: 2, graceSeconds: 30}}\n"
    )
    k("apply", "-f", "-", stdin=pool_doc)
    try:
        gateway = stack.start_gateway(
            "--shard=1",
            f"--metrics-port={port}",
            "--metrics-auth=kubernetes",
            f"--revocations-configmap={chart.namespace}/{FULLNAME}-revocations",
        )
        url = gateway.wait_for_line(r"metrics on (https://\S+)").group(1)
        assert url == f"https://127.0.0.1:{port}/metrics"

        def scrape(token: str = "") -> tuple[int, str]:
            return https_get(port, "/metrics", token)

        stack.start_fleet(1, 1, pool, prefix=f"{pool}-", name="car")

        def gpus() -> bool:
            got = k("get", "node", cell, "-o=json", check=False)
            node = json.loads(got.stdout) if got.returncode == 0 else {}
            # One car: its GPU and the ready slot beside it.
            return node.get("status", {}).get("allocatable", {}).get("nvidia.com/gpu") == "2"

        until(gpus, 60, f"Node {cell}, registered by the gateway's identity, to have the car")

        # A pod whose items are a ConfigMap of its namespace: read with the chart's grant.
        x = np.load(model.directory / "digits_inputs.npy")[:6]
        configmap = (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: six}\n"
            f"data:\n  items.json: '{json.dumps(x.tolist())}'\n"
        )
        k("apply", f"-n={ns}", "-f", "-", stdin=configmap)
        k("apply", f"-n={ns}", "-f", "-", stdin=configmap_pod("tiny", pool, "six"))
        until(
            lambda: (
                get_json(k, "pod", "tiny", f"-n={ns}").get("status", {}).get("phase")
                in ("Succeeded", "Failed")
            ),
            90,
            "the pod to end",
        )
        status = get_json(k, "pod", "tiny", f"-n={ns}")["status"]
        assert status["phase"] == "Succeeded", f"{status}\n{gateway.tail(20)}"
        log = k("logs", "tiny", f"-n={ns}").stdout
        labels = [int(m) for m in re.findall(r"^item \d+: label=(\d+)", log, re.M)]
        assert labels == local_labels(stack, 0, 6).tolist(), log

        # The gateway deletes the pod once it is deleted (a pod bound to its cell).
        k("delete", "pod", "tiny", f"-n={ns}", "--wait=false")
        until(
            lambda: "NotFound" in k("get", "pod", "tiny", f"-n={ns}", check=False).stderr,
            30,
            "the gateway to remove the deleted pod",
        )

        # /metrics: no token 401, a token without the right 403, a reader's 200.
        code, body = scrape()
        assert (code, body) == (401, "Unauthorized: a bearer token is required\n")
        code, body = scrape("not-a-token")
        assert (code, body) == (401, "Unauthorized: the token is not valid\n")
        code, body = scrape(chart.nobody_token)
        nobody = f"system:serviceaccount:{chart.namespace}:nobody"
        assert (code, body) == (403, f"Forbidden: {nobody} may not get /metrics\n")
        code, first = scrape(chart.reader_token)
        assert code == 200, first
        reviews = counter(first, "parkfleet_kube_api_requests_total", resource="tokenreviews")
        for _ in range(5):
            code, text = scrape(chart.reader_token)
            assert code == 200
        # The reader's verdict is remembered: five more scrapes, no more TokenReviews.
        again = counter(text, "parkfleet_kube_api_requests_total", resource="tokenreviews")
        assert again == reviews
        # Everything the node agent wrote went through (no refusal by RBAC or a policy).
        assert counter(text, "parkfleet_node_lease_renewals_total", result="error") == 0
        assert counter(text, "parkfleet_node_lease_renewals_total", result="ok") > 0
        assert "denied request" not in gateway.text()
        assert "Forbidden" not in gateway.text()

        # The fleet admin revokes the car; the gateway, watching the list under its own
        # identity (one ConfigMap, by name), closes its stream: its GPU leaves the cell.
        subprocess.run(
            [
                sys.executable,
                "-m",
                "parkfleet.cli",
                *("certs", "revoke", f"{pool}-000000"),
                f"--configmap={chart.namespace}/{FULLNAME}-revocations",
                f"--kubeconfig={cluster.kubeconfig}",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        until(lambda: not gpus(), 10, "the revoked car to be cut off")
        assert "Forbidden" not in gateway.text()
    finally:
        stack.stop()
        k("delete", "pod", "tiny", f"-n={ns}", "--ignore-not-found", "--wait=false", check=False)
        k("delete", "configmap", "six", f"-n={ns}", "--ignore-not-found", check=False)
        k("delete", "fp", pool, "--ignore-not-found", "--timeout=60s", check=False)


# ---- the operator's /metrics -----------------------------------------------------------


async def test_the_operators_metrics_answer_only_readers(
    chart: Chart, operator_api: client.ApiClient
) -> None:
    # The operator's own server and guard (controller/run.py with --metrics-auth
    # kubernetes), its reviews made with the operator's token: the chart's RBAC lets it.
    registry = CollectorRegistry()
    Counter("parkfleet_probe", "A sample.", registry=registry).inc()
    server = MetricsServer(registry, NonResourceGuard(operator_api), "127.0.0.1", 0)
    await server.start()
    try:
        got = [
            await asyncio.to_thread(https_get, server.port, "/metrics", t)
            for t in ("", chart.nobody_token, chart.reader_token)
        ]
        assert [code for code, _ in got] == [401, 403, 200], got
        assert "parkfleet_probe_total 1.0" in got[2][1]
    finally:
        await server.stop()

"""The local control plane is a real Kubernetes: these tests would fail on a mock.

Each test exercises a component that later issues rely on: the API server's
CRD validation (CEL), kube-scheduler's binding, the Job and garbage-collector
controllers, and the node-lifecycle controller watching Leases.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from .conftest import NODE_MONITOR_GRACE_S, Kubectl

pytestmark = pytest.mark.e2e


async def eventually(check: Callable[[], Awaitable[Any]], within: float, what: str) -> Any:
    """Poll ``check`` until it returns something truthy; bounded by ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last: Any = None
    while loop.time() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out after {within:.0f}s waiting for {what}; last: {last!r}")


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.e2e.parkfleet.io
spec:
  group: e2e.parkfleet.io
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [minBatteryPercent, resumeBatteryPercent]
            properties:
              minBatteryPercent: {type: integer, minimum: 0, maximum: 100}
              resumeBatteryPercent: {type: integer, minimum: 0, maximum: 100}
            x-kubernetes-validations:
            - rule: self.resumeBatteryPercent >= self.minBatteryPercent
              message: spec.resumeBatteryPercent must be at least spec.minBatteryPercent
"""


def test_crd_cel_rule_rejects_invalid_object(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "-", stdin=CRD)
    kubectl(
        "wait",
        "--for=condition=Established",
        "crd/gadgets.e2e.parkfleet.io",
        "--timeout=60s",
    )
    good = (
        "apiVersion: e2e.parkfleet.io/v1\nkind: Gadget\nmetadata: {name: good}\n"
        "spec: {minBatteryPercent: 60, resumeBatteryPercent: 65}\n"
    )
    kubectl("apply", "-f", "-", stdin=good)

    bad = good.replace("good", "bad").replace("65", "50")
    proc = kubectl("apply", "-f", "-", stdin=bad, check=False)
    assert proc.returncode != 0
    assert "spec.resumeBatteryPercent must be at least spec.minBatteryPercent" in proc.stderr

    schema_bad = good.replace("good", "worse").replace("60", "160")
    proc = kubectl("apply", "-f", "-", stdin=schema_bad, check=False)
    assert proc.returncode != 0
    assert "spec.minBatteryPercent" in proc.stderr


def node_body(node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node, "labels": {"e2e.parkfleet.io/node": node}},
    }


def ready_status() -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "status": {
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "10"},
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "10"},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "E2EReady",
                    "message": "the test says so",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
        }
    }


async def make_ready_node(api: client.ApiClient, node: str) -> None:
    core = client.CoreV1Api(api)
    await core.create_node(node_body(node))
    await core.patch_node_status(node, ready_status())
    await renew_lease(api, node)


async def renew_lease(api: client.ApiClient, node: str) -> None:
    coord = client.CoordinationV1Api(api)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": node, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now},
    }
    try:
        await coord.create_namespaced_lease("kube-node-lease", body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        await coord.patch_namespaced_lease(node, "kube-node-lease", {"spec": {"renewTime": now}})


async def node_ready(api: client.ApiClient, node: str) -> tuple[str, list[str]]:
    obj = await client.CoreV1Api(api).read_node(node)
    ready = next(c.status for c in obj.status.conditions or [] if c.type == "Ready")
    taints = [t.key for t in obj.spec.taints or []]
    return ready, taints


async def test_renewed_node_stays_ready_and_gets_pods(api: client.ApiClient) -> None:
    node = name("renewed")
    await make_ready_node(api, node)
    core = client.CoreV1Api(api)

    async def keep_renewing() -> None:
        while True:
            await renew_lease(api, node)
            await asyncio.sleep(2)

    renewer = asyncio.create_task(keep_renewing())
    try:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name("bound")},
            "spec": {
                "nodeSelector": {"e2e.parkfleet.io/node": node},
                "containers": [{"name": "main", "image": "example.invalid/none:1"}],
            },
        }
        await core.create_namespaced_pod("default", pod)

        async def bound() -> str | None:
            p = await core.read_namespaced_pod(pod["metadata"]["name"], "default")
            return str(p.spec.node_name) if p.spec.node_name else None

        assert await eventually(bound, 60, "kube-scheduler to bind the pod") == node

        # Outlive the grace period: a renewed Lease keeps the node Ready.
        await asyncio.sleep(NODE_MONITOR_GRACE_S * 1.5)
        ready, taints = await node_ready(api, node)
        assert ready == "True"
        assert "node.kubernetes.io/unreachable" not in taints
    finally:
        renewer.cancel()
        await core.delete_node(node)


async def test_node_without_lease_renewal_turns_unreachable(api: client.ApiClient) -> None:
    node = name("silent")
    await make_ready_node(api, node)

    async def unreachable() -> bool:
        ready, taints = await node_ready(api, node)
        return ready == "Unknown" and "node.kubernetes.io/unreachable" in taints

    try:
        await eventually(
            unreachable, NODE_MONITOR_GRACE_S * 4 + 20, "NotReady and the unreachable taint"
        )
    finally:
        await client.CoreV1Api(api).delete_node(node)


async def test_job_controller_creates_pods(api: client.ApiClient) -> None:
    job = name("job")
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job},
        "spec": {
            "completions": 3,
            "parallelism": 2,
            "completionMode": "Indexed",
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "example.invalid/none:1"}],
                }
            },
        },
    }
    await client.BatchV1Api(api).create_namespaced_job("default", body)
    core = client.CoreV1Api(api)

    async def pods() -> int:
        listed = await core.list_namespaced_pod("default", label_selector=f"job-name={job}")
        return len(listed.items) if len(listed.items) == 2 else 0

    assert await eventually(pods, 60, "the Job controller to create `parallelism` pods") == 2
    await client.BatchV1Api(api).delete_namespaced_job(
        job, "default", propagation_policy="Background"
    )


async def test_garbage_collector_removes_dependents(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    owner = await core.create_namespaced_config_map(
        "default", {"metadata": {"name": name("owner")}, "data": {"k": "v"}}
    )
    dependent = name("dependent")
    await core.create_namespaced_config_map(
        "default",
        {
            "metadata": {
                "name": dependent,
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": owner.metadata.name,
                        "uid": owner.metadata.uid,
                    }
                ],
            }
        },
    )
    await core.delete_namespaced_config_map(
        owner.metadata.name, "default", propagation_policy="Background"
    )

    async def gone() -> bool:
        try:
            await core.read_namespaced_config_map(dependent, "default")
        except ApiException as exc:
            return exc.status == 404
        return False

    await eventually(gone, 60, "the garbage collector to delete the dependent")


def test_readyz_and_version(kubectl: Kubectl) -> None:
    assert kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    version = json.loads(kubectl("get", "--raw", "/version").stdout)
    assert version["gitVersion"].startswith("v1.34.")

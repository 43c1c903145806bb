"""Node operations admins use, on cells as on any node: drain, delete, cordon, uncordon.

Driven with kubectl as an admin would, on pools and cars each test starts for itself,
beside the session's stack (operator, gateway, node agent).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from parkfleet.devstack import DevStack

from .conftest import Kubectl
from .kube import events_of, get_json, inference_pod, pod_phase, until
from .test_inferencejob import (
    check_exactly_once_and_correct,
    condition,
    job,
    jobs,  # noqa: F401  (a fixture: the CRD, the 3,000-item input)
    pool,
    wait_done,
    wait_gpus,
)

pytestmark = pytest.mark.e2e

# Lease renewal period of the node agent, and what a re-registration may take beyond it
# (the garbage collector deleting the Lease with its Node; a renewal just missed).
LEASE_PERIOD_S = 10
SLACK_S = 20


def job_pods(k: Kubectl, name: str) -> list[dict[str, Any]]:
    return list(get_json(k, "pods", "-l", f"batch.kubernetes.io/job-name={name}")["items"])


def on_node(pods: list[dict[str, Any]], node: str, phase: str = "") -> list[str]:
    return [
        p["metadata"]["name"]
        for p in pods
        if p["spec"].get("nodeName") == node and (not phase or p["status"].get("phase") == phase)
    ]


def stuck(pods: list[dict[str, Any]], node: str) -> list[tuple[str, str, str, list[str]]]:
    """Name, phase, deletion time and finalizers of the pods still bound to ``node``."""
    return [
        (
            p["metadata"]["name"],
            p["status"].get("phase", ""),
            p["metadata"].get("deletionTimestamp", ""),
            p["metadata"].get("finalizers", []),
        )
        for p in pods
        if p["spec"].get("nodeName") == node
    ]


def busy_cars(k: Kubectl, pool_name: str, cell: int) -> int:
    cells = get_json(k, "fp", pool_name).get("status", {}).get("cells", [])
    return int(cells[cell]["carsBusy"]) if len(cells) > cell else -1


def ready(node: dict[str, Any]) -> bool:
    conds = node.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def unschedulable_reason(k: Kubectl, name: str) -> str:
    conds = get_json(k, "pod", name).get("status", {}).get("conditions", [])
    scheduled = next((c for c in conds if c["type"] == "PodScheduled"), {})
    return str(scheduled.get("reason", "")) if scheduled.get("status") == "False" else ""


@pytest.mark.usefixtures("jobs")
def test_drain_of_a_cell_mid_job_then_uncordon(stack: DevStack, kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "-", stdin=pool("drain", cells=2))
    slow = ["--compute=modelled", "--modelled-rate=20"]  # a unit of 250 items: ~12 s
    fleet = stack.start_fleet(8, 2, "drain", prefix="drain-", name="drain", extra=slow)
    wait_gpus(kubectl, "pf-drain-0", 4)
    wait_gpus(kubectl, "pf-drain-1", 4)
    kubectl("apply", "-f", "-", stdin=job("drained", pool="drain", parallelism=8))
    running = until(
        lambda: on_node(job_pods(kubectl, "drained"), "pf-drain-0", "Running"),
        60,
        "units to run on cell drain-0",
    )

    drain = kubectl(
        "drain",
        "pf-drain-0",
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--force",
        "--timeout=45s",
        check=False,
    )
    # kubectl drain returns once every evicted pod object is gone.
    assert drain.returncode == 0, (drain.stderr, stuck(job_pods(kubectl, "drained"), "pf-drain-0"))
    assert running
    assert not on_node(job_pods(kubectl, "drained"), "pf-drain-0")
    until(lambda: busy_cars(kubectl, "drain", 0) == 0, 30, "cell drain-0's tasks cancelled")
    # Cordoned: the Job's replacements run on the other cell, none on this one.
    until(
        lambda: on_node(job_pods(kubectl, "drained"), "pf-drain-1", "Running"),
        60,
        "units to run on cell drain-1",
    )
    assert not on_node(job_pods(kubectl, "drained"), "pf-drain-0")

    kubectl("uncordon", "pf-drain-0")
    until(
        lambda: on_node(job_pods(kubectl, "drained"), "pf-drain-0"),
        60,
        "units on cell drain-0 again",
    )
    st = wait_done(kubectl, "drained", 240)
    assert condition(kubectl, "drained", "Complete")["status"] == "True", st
    assert st["units"]["succeeded"] == 12
    check_exactly_once_and_correct(stack, "drained")
    fleet.stop()
    kubectl("delete", "ij", "drained")
    kubectl("delete", "fp", "drain", "--wait=false")


def test_deleted_cell_node_registers_again(stack: DevStack, kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "-", stdin=pool("phoenix"))
    slow = ["--compute=modelled", "--modelled-rate=10"]
    fleet = stack.start_fleet(2, 1, "phoenix", prefix="phoenix-", name="phoenix", extra=slow)
    wait_gpus(kubectl, "pf-phoenix-0", 2)
    old = get_json(kubectl, "node", "pf-phoenix-0")["metadata"]["uid"]
    # A pod that runs through the deletion (300 items at 10/s on one car).
    kubectl("apply", "-f", "-", stdin=inference_pod("survives", "phoenix", "0-300", 5))
    until(lambda: pod_phase(kubectl, "survives") == "Running", 60, "the pod to run")

    kubectl("delete", "node", "pf-phoenix-0")
    until(
        lambda: fresh_node(kubectl, "pf-phoenix-0", old, "4"),  # 2 GPUs, 2 ready slots
        LEASE_PERIOD_S + SLACK_S,
        "the Node to be registered again, Ready, 2 GPUs",
    )
    reasons = [r for r, _ in events_of(kubectl, "pf-phoenix-0")]
    assert "NodeReregistered" in reasons, reasons
    until(
        lambda: condition_of_pool(kubectl, "phoenix") == "True",
        30,
        "the pool to be Ready again",
    )
    # A new pod runs on it; the one that ran through the deletion finishes.
    kubectl("apply", "-f", "-", stdin=inference_pod("reborn", "phoenix", "0-20", 5))
    until(lambda: pod_phase(kubectl, "reborn") == "Succeeded", 60, "a new pod to succeed")
    until(lambda: pod_phase(kubectl, "survives") == "Succeeded", 90, "the running pod to end")
    fleet.stop()
    kubectl("delete", "pod", "survives", "reborn")
    kubectl("delete", "fp", "phoenix", "--wait=false")


def test_deleted_idle_cell_node_registers_again_at_a_lease_renewal(
    stack: DevStack, kubectl: Kubectl
) -> None:
    # No cars: the Node's status never changes, so only the Lease tells that it is gone
    # (the garbage collector deletes the Lease with the Node that owns it).
    kubectl("apply", "-f", "-", stdin=pool("ashes"))
    until(lambda: lease_owner(kubectl, "pf-ashes-0"), 60, "the Node and its owned Lease")
    old = get_json(kubectl, "node", "pf-ashes-0")["metadata"]["uid"]
    assert lease_owner(kubectl, "pf-ashes-0") == old
    kubectl("delete", "node", "pf-ashes-0")
    node = until(
        lambda: fresh_node(kubectl, "pf-ashes-0", old, "0"),
        LEASE_PERIOD_S + SLACK_S,
        "the Node to be registered again",
    )
    until(
        lambda: lease_owner(kubectl, "pf-ashes-0") == node["metadata"]["uid"],
        LEASE_PERIOD_S + SLACK_S,
        "the new Node to own the Lease",
    )
    assert "Node pf-ashes-0 was deleted (its Lease is gone)" in stack.procs["gateway"].text()
    # Deleted with its pool, the Node stays deleted: the agent does not fight the operator.
    kubectl("delete", "fp", "ashes", "--timeout=60s")
    time.sleep(LEASE_PERIOD_S + 2)
    assert kubectl("get", "node", "pf-ashes-0", check=False).returncode != 0


def fresh_node(k: Kubectl, name: str, old_uid: str, gpus: str) -> dict[str, Any] | None:
    """The Node ``name`` when it is a new one (not ``old_uid``), Ready, with ``gpus``."""
    if k("get", "node", name, check=False).returncode != 0:
        return None
    node = get_json(k, "node", name)
    alloc = node.get("status", {}).get("allocatable", {}).get("nvidia.com/gpu")
    fresh = node["metadata"]["uid"] != old_uid and ready(node) and alloc == gpus
    return node if fresh else None


def lease_owner(k: Kubectl, name: str) -> str:
    got = k("get", "lease", "-n", "kube-node-lease", name, "-o", "json", check=False)
    if got.returncode != 0:
        return ""
    owners = json.loads(got.stdout)["metadata"].get("ownerReferences", [])
    return str(owners[0]["uid"]) if owners and owners[0]["kind"] == "Node" else ""


def condition_of_pool(k: Kubectl, name: str) -> str:
    conds = get_json(k, "fp", name).get("status", {}).get("conditions", [])
    return str(next((c["status"] for c in conds if c["type"] == "Ready"), ""))


def test_cordon_keeps_new_pods_off_and_running_ones_on(stack: DevStack, kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "-", stdin=pool("fenced"))
    slow = ["--compute=modelled", "--modelled-rate=10"]
    fleet = stack.start_fleet(2, 1, "fenced", prefix="fenced-", name="fenced", extra=slow)
    wait_gpus(kubectl, "pf-fenced-0", 2)
    kubectl("apply", "-f", "-", stdin=inference_pod("inside", "fenced", "0-300", 5))
    until(lambda: pod_phase(kubectl, "inside") == "Running", 60, "the pod to run")

    kubectl("cordon", "pf-fenced-0")
    kubectl("apply", "-f", "-", stdin=inference_pod("outside", "fenced", "0-10", 5))
    until(
        lambda: unschedulable_reason(kubectl, "outside") == "Unschedulable",
        30,
        "the scheduler to refuse the cordoned cell",
    )
    # The node agent re-applies the pool's template to its Node (an adopt): the cordon stays.
    kubectl(
        "patch",
        "fp",
        "fenced",
        "--type=merge",
        "-p",
        '{"spec": {"nodeTemplate": {"labels": {"fenced.example.com/rev": "2"}}}}',
    )
    until(
        lambda: (
            get_json(kubectl, "node", "pf-fenced-0")["metadata"]["labels"].get(
                "fenced.example.com/rev"
            )
            == "2"
        ),
        30,
        "the template's new label on the Node",
    )
    assert get_json(kubectl, "node", "pf-fenced-0")["spec"].get("unschedulable") is True
    time.sleep(2)  # a moment for a wrong bind to show
    assert not get_json(kubectl, "pod", "outside")["spec"].get("nodeName")
    assert pod_phase(kubectl, "inside") == "Running"

    kubectl("uncordon", "pf-fenced-0")
    until(lambda: pod_phase(kubectl, "outside") == "Succeeded", 60, "the new pod to run")
    until(lambda: pod_phase(kubectl, "inside") == "Succeeded", 90, "the running pod to end")
    # Pods that ended are removed by a drain as well.
    kubectl("drain", "pf-fenced-0", "--ignore-daemonsets", "--force", "--timeout=30s")
    assert not get_json(kubectl, "pods", "--field-selector", "spec.nodeName=pf-fenced-0")["items"]
    fleet.stop()
    kubectl("delete", "fp", "fenced", "--wait=false")

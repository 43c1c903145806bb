"""A cell's capacity follows its cars; its Node lives on its Lease; ``kubectl logs``
streams from the cars and is guarded.

End to end on the real local control plane with the session ``stack`` (operator, gateway
with its node agent): real ``parkfleet agent`` and ``parkfleet simulate`` processes are
the cars, ``kubectl`` is the user. Each test brings its own FleetPool and removes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parkfleet import devcluster
from parkfleet.contract import READY_PER_CAR, ready_slots
from parkfleet.devstack import DevStack

from .conftest import NODE_MONITOR_GRACE_S, Kubectl
from .kube import get_json, https_get, inference_pod, pod_phase, token_kubeconfig, until

pytestmark = pytest.mark.e2e

# The stack's cars report every second; a change must show within one telemetry
# period plus a second. The bounds below only keep a broken run from hanging.
WITHIN_S = 30


def pool_doc(name: str, floor: str = "") -> str:
    return f"""
apiVersion: parkfleet.io/v1alpha1
kind: FleetPool
metadata: {{name: {name}}}
spec:
  selector: {{matchAttributes: {{pool: {name}}}}}
  cellSize: 4
  cells: 1
  gateway: {{graceSeconds: 30}}
{floor}
"""


@pytest.fixture
def pool(stack: DevStack, kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A one-cell FleetPool of this test's own; its Node registered. Removed afterwards
    (with every car process the test started for it)."""
    name = f"cap-{uuid.uuid4().hex[:6]}"
    floor = getattr(request, "param", "")
    kubectl("apply", "-f", "-", stdin=pool_doc(name, floor))
    until(
        lambda: kubectl("get", "node", f"pf-{name}-0", check=False).returncode == 0,
        60,
        f"Node pf-{name}-0 to register",
    )
    procs_before = set(stack.procs)
    try:
        yield name
    finally:
        for key in set(stack.procs) - procs_before:
            stack.procs.pop(key).stop()
        kubectl("delete", "fp", name, "--ignore-not-found", "--timeout=60s", check=False)


def gpus_of(kubectl: Kubectl, node: str) -> int:
    """The eligible GPUs the Node offers: its allocatable is those and a ready slot beside
    each (pods bound beyond the cars wait at the gateway)."""
    got = get_json(kubectl, "node", node)
    allocatable = int(got["status"].get("allocatable", {}).get("nvidia.com/gpu", -1))
    gpus = allocatable // (1 + READY_PER_CAR) if allocatable > 0 else allocatable
    assert gpus + ready_slots(max(gpus, 0)) == allocatable or allocatable < 0, allocatable
    return gpus


def wait_phase(kubectl: Kubectl, stack: DevStack, pod: str, phase: str, within: float) -> None:
    """Waits for a pod's phase; on timeout says what the pod and the gateway said."""
    try:
        until(lambda: pod_phase(kubectl, pod) == phase, within, f"pod {pod} to be {phase}")
    except AssertionError as exc:
        status = get_json(kubectl, "pod", pod).get("status", {})
        gateway = stack.procs["gateway"].tail(15)
        raise AssertionError(f"{exc}\nstatus: {status}\ngateway log:\n{gateway}") from None


def write_sensors(path: Path, **reading: Any) -> None:
    """Rewrites the car's sensor file at once (the agent re-reads it when it changes)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(reading))
    os.replace(tmp, path)


FLOOR = """  policyFloor:
    onlyWhilePluggedIn: true
    minBatteryPercent: 20
    resumeBatteryPercent: 25
"""


@pytest.mark.parametrize("pool", [FLOOR], indirect=True)
def test_unplugging_driving_off_and_battery_change_the_cells_allocatable(
    stack: DevStack, kubectl: Kubectl, pool: str, tmp_path: Path
) -> None:
    node = f"pf-{pool}-0"
    sensors = tmp_path / "sensors.json"
    base = {"parked": True, "plugged_in": True, "soc_percent": 80}
    write_sensors(sensors, **base)
    stack.start_agent(f"{pool}-car", {"pool": pool}, sensors=str(sensors))
    until(lambda: gpus_of(kubectl, node) == 1, 60, f"{node} to offer the car's GPU")

    # Unplugged: the owner (and the pool's floor) allow work only while charging.
    write_sensors(sensors, **{**base, "plugged_in": False})
    until(lambda: gpus_of(kubectl, node) == 0, WITHIN_S, "allocatable 0 once unplugged")
    write_sensors(sensors, **base)
    until(lambda: gpus_of(kubectl, node) == 1, WITHIN_S, "allocatable 1 once plugged in")

    # Driving off, then parking again.
    write_sensors(sensors, **{**base, "parked": False})
    until(lambda: gpus_of(kubectl, node) == 0, WITHIN_S, "allocatable 0 while driving")
    write_sensors(sensors, **base)
    until(lambda: gpus_of(kubectl, node) == 1, WITHIN_S, "allocatable 1 once parked")

    # Battery below the floor stops work; between floor (20 %) and resume (25 %) it
    # stays stopped (hysteresis), and only at 25 % or more does the GPU come back.
    write_sensors(sensors, **{**base, "soc_percent": 15})
    until(lambda: gpus_of(kubectl, node) == 0, WITHIN_S, "allocatable 0 below 20 %")
    write_sensors(sensors, **{**base, "soc_percent": 22})
    # Several telemetry periods (1 s each) with the car at 22 %: still no GPU.
    stable_until = time.monotonic() + 4 * stack.telemetry_interval_s + 1
    while time.monotonic() < stable_until:
        assert gpus_of(kubectl, node) == 0, "the car came back below the resume threshold"
        time.sleep(0.5)
    write_sensors(sensors, **{**base, "soc_percent": 30})
    until(lambda: gpus_of(kubectl, node) == 1, WITHIN_S, "allocatable 1 at 30 %")

    st = until(
        lambda: (
            (s := get_json(kubectl, "fp", pool).get("status", {})).get("carsEligible") == 1 and s
        ),
        WITHIN_S,
        "the pool to count the car eligible",
    )
    assert st["carsConnected"] == 1

    # The car goes away altogether: its GPU leaves the cell.
    stack.procs[f"agent-{pool}-car"].kill()
    until(lambda: gpus_of(kubectl, node) == 0, WITHIN_S, "allocatable 0 once the car is gone")


def ready_condition(kubectl: Kubectl, node: str) -> dict[str, Any]:
    conditions = get_json(kubectl, "node", node)["status"]["conditions"]
    found: dict[str, Any] = next(c for c in conditions if c["type"] == "Ready")
    return found


def test_a_node_with_nothing_new_stays_ready_on_its_lease_alone(
    stack: DevStack, kubectl: Kubectl, pool: str
) -> None:
    node = f"pf-{pool}-0"
    stack.start_agent(f"{pool}-car", {"pool": pool})
    until(lambda: gpus_of(kubectl, node) == 1, 60, f"{node} to offer the car's GPU")
    until(lambda: ready_condition(kubectl, node)["status"] == "True", 60, f"{node} Ready")
    before = ready_condition(kubectl, node)
    # Past the node-lifecycle controller's grace period: without Lease renewals it would
    # mark the Node Unknown; an unchanged status is not rewritten meanwhile.
    deadline = time.monotonic() + NODE_MONITOR_GRACE_S * 1.5
    while time.monotonic() < deadline:
        time.sleep(2)
        now = ready_condition(kubectl, node)
        assert now["status"] == "True", f"{node} left Ready: {now}"
    assert now["lastHeartbeatTime"] == before["lastHeartbeatTime"], "status was rewritten"
    lease = get_json(kubectl, "lease", node, "-n", "kube-node-lease")
    assert lease["spec"]["holderIdentity"] == node


def test_kubectl_logs_follow_streams_until_the_pod_ends(
    stack: DevStack, kubectl: Kubectl, pool: str
) -> None:
    slow = ["--compute=modelled", "--modelled-rate=60"]
    stack.start_fleet(1, 1, pool, prefix=f"{pool}-", name=f"{pool}-car", extra=slow)
    until(lambda: gpus_of(kubectl, f"pf-{pool}-0") == 1, 60, "the car's GPU")
    pod = f"{pool}-follow"
    kubectl("apply", "-f", "-", stdin=inference_pod(pod, pool, "0-420", 5))  # 7 s of work
    wait_phase(kubectl, stack, pod, "Running", 60)

    follow = subprocess.Popen(
        ["kubectl", f"--kubeconfig={kubectl.kubeconfig}", "logs", "-f", pod],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follow.stdout is not None
        lines = [follow.stdout.readline().rstrip("\n")]
        # The lines so far come at once, while the task still runs ...
        assert pod_phase(kubectl, pod) == "Running", lines
        lines += [line.rstrip("\n") for line in follow.stdout]  # until kubectl exits
        follow.wait(timeout=60)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert follow.returncode == 0, follow.stderr.read() if follow.stderr else ""
    # ... then the lines written later (the results come when the car sends them), and
    # the stream ends by itself once the pod has ended.
    assert lines[0].startswith("parkfleet: task "), lines[:3]
    seen = [int(ln.split()[1].rstrip(":")) for ln in lines if ln.startswith("item ")]
    elided = sum(int(ln.split()[1]) for ln in lines if ln.startswith("... "))
    assert seen == sorted(set(seen)), seen[:10]
    assert seen[0] == 0
    assert len(seen) + elided == 420
    assert lines[-1].startswith("parkfleet: done: 420 items"), lines[-3:]
    assert pod_phase(kubectl, pod) == "Succeeded"
    kubectl("delete", "pod", pod)


def test_logs_are_refused_to_callers_without_rights(
    stack: DevStack,
    kubectl: Kubectl,
    cluster: devcluster.LocalCluster,
    pool: str,
    tmp_path: Path,
) -> None:
    stack.start_fleet(1, 1, pool, prefix=f"{pool}-", name=f"{pool}-car")
    until(lambda: gpus_of(kubectl, f"pf-{pool}-0") == 1, 60, "the car's GPU")
    pod = f"{pool}-secret"
    kubectl("apply", "-f", "-", stdin=inference_pod(pod, pool, "0-8", 4))
    wait_phase(kubectl, stack, pod, "Succeeded", 60)
    assert "item 0: label=" in kubectl("logs", pod).stdout  # the admin may read them

    # A user who may see the pod, but not its log.
    sa = f"{pool}-nobody"
    kubectl("create", "serviceaccount", sa)
    kubectl("create", "role", sa, "--verb=get,list", "--resource=pods")
    kubectl("create", "rolebinding", sa, f"--role={sa}", f"--serviceaccount=default:{sa}")
    try:
        token = kubectl("create", "token", sa, "--duration=10m").stdout.strip()
        nobody = Kubectl(
            token_kubeconfig(cluster.kubeconfig, token, tmp_path / "nobody.kubeconfig")
        )
        assert nobody("get", "pod", pod, check=False).returncode == 0
        # The apiserver refuses pods/log to a user without RBAC for it.
        refused = nobody("logs", pod, check=False)
        assert refused.returncode != 0
        assert "Forbidden" in refused.stderr, refused.stderr
        assert 'cannot get resource "pods/log"' in refused.stderr, refused.stderr

        # The kubelet API itself: no credentials -> 401; a valid token of a user
        # without nodes/proxy -> 403; neither sees a line of the log.
        path = f"/containerLogs/default/{pod}/infer"
        code, body = https_get(stack.kubelet_port, path)
        assert code == 401, body
        code, body = https_get(stack.kubelet_port, path, token=token)
        assert code == 403, body
        assert "label=" not in body
    finally:
        kubectl("delete", "rolebinding,role,serviceaccount", sa, check=False)
        kubectl("delete", "pod", pod, check=False)

"""FleetPool and virtual nodes, end to end: pods scheduled onto cells run on cars.

The real local control plane, the operator, a gateway with its node agent and
simulated cars (the real agent code, each with its own certificate and stream) run as
separate processes; the tests drive them with ``kubectl apply`` as a user would.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from parkfleet.devstack import DevStack, free_port

from .conftest import Kubectl
from .kube import (
    SOLO_POOL,
    events_of,
    get_json,
    inference_pod,
    local_labels,
    pod_phase,
    scrape,
    until,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_cells_register_as_ready_nodes_with_gpus(stack: DevStack, kubectl: Kubectl) -> None:
    def ready_nodes() -> dict[str, int] | None:
        nodes = get_json(kubectl, "nodes", "-l", "parkfleet.io/pool=demo")["items"]
        gpus = {}
        for n in nodes:
            ready = any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n["status"].get("conditions", [])
            )
            if ready:
                gpus[n["metadata"]["name"]] = int(n["status"]["allocatable"]["nvidia.com/gpu"])
        # 10 cars each: their 10 GPUs and a ready slot beside each (a pod bound beyond the
        # cars waits at the gateway for the next car that frees).
        return gpus if len(gpus) == 5 and set(gpus.values()) == {20} else None

    gpus = until(ready_nodes, 90, "5 Ready virtual nodes with 10 GPUs and 10 ready slots each")
    assert sorted(gpus) == [f"pf-demo-{i}" for i in range(5)]
    node = get_json(kubectl, "node", "pf-demo-0")
    assert node["metadata"]["labels"]["type"] == "virtual-kubelet"
    assert node["metadata"]["labels"]["fleet.example.com/region"] == "eu-west"
    assert {"key": "parkfleet.io/fleet", "value": "true", "effect": "NoSchedule"} in node["spec"][
        "taints"
    ]

    def pool_counts() -> dict[str, Any] | None:
        st = get_json(kubectl, "fp", "demo").get("status", {})
        return st if st.get("carsConnected") == 50 and st.get("carsEligible") == 50 else None

    status = until(pool_counts, 30, "kubectl get fp to show 50 connected, 50 eligible")
    assert status["gpusAllocatable"] == 50
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert ready["observedGeneration"] == status["observedGeneration"]
    table = kubectl("get", "fp", "demo").stdout
    assert re.search(r"demo\s+5\s+50\s+50\s+\d+\s+50\s+True", table), table


def test_sample_pod_runs_on_a_car_and_logs_its_output(stack: DevStack, kubectl: Kubectl) -> None:
    kubectl("apply", "-f", str(REPO / "crds" / "samples" / "pod-digits.yaml"))
    until(lambda: pod_phase(kubectl, "digits-sample") == "Succeeded", 60, "the pod to succeed")
    pod = get_json(kubectl, "pod", "digits-sample")
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (0, "Completed")
    reasons = [r for r, _ in events_of(kubectl, "digits-sample")]
    assert "Started" in reasons
    assert "Completed" in reasons

    logs = kubectl("logs", "digits-sample").stdout
    expected = local_labels(stack, 0, 16)
    for i, label in enumerate(expected):
        assert f"item {i}: label={label} " in logs
    results = np.load(stack.area() / "results" / "digits-sample.npz")
    assert np.array_equal(results["label"], expected)
    kubectl("delete", "pod", "digits-sample")


def test_hostpath_pod_fails_unsupported(stack: DevStack, kubectl: Kubectl) -> None:
    doc = inference_pod("wants-host", "demo", "0-4", 4).replace(
        "  containers:",
        "  volumes: [{name: h, hostPath: {path: /etc}}]\n  containers:",
    )
    kubectl("apply", "-f", "-", stdin=doc)
    until(lambda: pod_phase(kubectl, "wants-host") == "Failed", 60, "the pod to fail")
    status = get_json(kubectl, "pod", "wants-host")["status"]
    assert status["reason"] == "UnsupportedPodSpec"
    assert "spec.volumes[0].hostPath" in status["message"]
    kubectl("delete", "pod", "wants-host")


def test_car_killed_mid_task_moves_and_the_pod_still_succeeds(
    stack: DevStack, kubectl: Kubectl
) -> None:
    # Two cars of their own (two processes), slow enough to be caught mid-task.
    slow = ["--compute=modelled", "--modelled-rate=60"]
    cars = {
        "car-a-000000": stack.start_fleet(1, 1, "solo", prefix="car-a-", name="car-a", extra=slow),
        "car-b-000000": stack.start_fleet(1, 1, "solo", prefix="car-b-", name="car-b", extra=slow),
    }

    def solo_gpus() -> int:
        node = get_json(kubectl, "node", "pf-solo-0")
        # Its eligible GPUs and a ready slot beside each.
        return int(node["status"].get("allocatable", {}).get("nvidia.com/gpu", -1)) // 2

    until(lambda: solo_gpus() == 2, 60, "cell solo-0 to offer both cars' GPUs")
    kubectl("apply", "-f", "-", stdin=inference_pod("long", "solo", "0-300", 5))

    def started_on() -> str | None:
        for reason, message in events_of(kubectl, "long"):
            if reason == "Started":
                return message.rsplit(" ", 1)[-1]
        return None

    first = until(started_on, 60, "the task to start on a car")
    time.sleep(1.0)
    cars[first].kill()  # the car drives off without a word

    until(lambda: solo_gpus() == 1, 30, "allocatable to drop when the car is gone")
    until(lambda: pod_phase(kubectl, "long") == "Succeeded", 120, "the pod to succeed")
    moved = [m for r, m in events_of(kubectl, "long") if r == "Moved"]
    assert moved, events_of(kubectl, "long")
    assert moved[0].startswith(f"moved from car {first} to car ")
    results = np.load(stack.area() / "results" / "long.npz")
    assert len(results["label"]) == 300  # every item exactly once
    assert np.array_equal(results["label"], local_labels(stack, 0, 300))

    # The last car goes too: a new pod (asking no GPU, so the scheduler binds it to the
    # empty cell) waits its grace period, then fails.
    for proc in cars.values():
        proc.kill()
    until(lambda: solo_gpus() == 0, 30, "allocatable to reach 0")
    kubectl("apply", "-f", "-", stdin=inference_pod("stranded", "solo", "0-10", 5, gpu=False))
    until(lambda: pod_phase(kubectl, "stranded") == "Failed", 60, "the pod to fail")
    status = get_json(kubectl, "pod", "stranded")["status"]
    assert status["reason"] == "NoEligibleCar"
    kubectl("delete", "pod", "long", "stranded")


def test_operator_and_gateway_restart_mid_run(stack: DevStack, kubectl: Kubectl) -> None:
    slow = ["--compute=modelled", "--modelled-rate=60"]
    stack.start_fleet(2, 1, "solo", prefix="car-r-", name="car-r", extra=slow)
    kubectl("apply", "-f", "-", stdin=inference_pod("survivor", "solo", "0-240", 5))
    until(lambda: pod_phase(kubectl, "survivor") == "Running", 60, "the pod to run")
    uid = get_json(kubectl, "node", "pf-solo-0")["metadata"]["uid"]

    stack.procs["operator"].stop()
    stack.start_operator()
    stack.procs["gateway"].stop()
    stack.start_gateway()

    until(lambda: pod_phase(kubectl, "survivor") == "Succeeded", 120, "the pod to succeed")
    assert get_json(kubectl, "node", "pf-solo-0")["metadata"]["uid"] == uid  # Node stayed
    results = np.load(stack.area() / "results" / "survivor.npz")
    assert np.array_equal(results["label"], local_labels(stack, 0, 240))
    stack.procs["car-r"].stop()
    kubectl("delete", "pod", "survivor")


def test_deleting_the_pool_removes_its_nodes(stack: DevStack, kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "-", stdin=SOLO_POOL.replace("solo", "brief"))
    until(
        lambda: kubectl("get", "node", "pf-brief-0", check=False).returncode == 0,
        60,
        "the pool's Node to register",
    )
    kubectl("delete", "fp", "brief", "--timeout=60s")
    assert kubectl("get", "node", "pf-brief-0", check=False).returncode != 0


def test_deleting_a_running_pod_cancels_its_task(stack: DevStack, kubectl: Kubectl) -> None:
    # The session's gateway serves no /metrics: restarted with them (cars reconnect).
    gateway_metrics, car_metrics = free_port(), free_port()
    stack.procs["gateway"].stop()
    stack.start_gateway(f"--metrics-port={gateway_metrics}")
    kubectl("apply", "-f", "-", stdin=SOLO_POOL.replace("solo", "cancel"))
    car = stack.start_fleet(
        1,
        1,
        "cancel",
        prefix="cancel-",
        name="cancel",
        extra=["--compute=modelled", "--modelled-rate=2", f"--metrics-port={car_metrics}"],
    )
    # Every input (450 items) at 2 items/s: almost 4 minutes, far longer than the waits below.
    kubectl("apply", "-f", "-", stdin=inference_pod("doomed", "cancel", "0-450", 1))
    until(lambda: pod_phase(kubectl, "doomed") == "Running", 60, "the pod to run")
    until(
        lambda: get_json(kubectl, "fp", "cancel").get("status", {}).get("carsBusy") == 1,
        30,
        "the car to be busy",
    )
    kubectl("delete", "pod", "doomed", "--timeout=30s")

    def outcomes(port: int, metric: str) -> dict[str, float]:
        """How this pool's tasks ended, by outcome, from a process's /metrics (the car's
        counters have no pool label: they are all its own)."""
        got = scrape(f"http://127.0.0.1:{port}/metrics", metric)
        return {
            labels["outcome"]: v for labels, v in got if labels.get("pool", "cancel") == "cancel"
        }

    until(
        lambda: outcomes(gateway_metrics, "parkfleet_gateway_tasks_total") == {"Cancelled": 1.0},
        30,
        "the gateway to count the task Cancelled",
    )
    # The car itself stopped the task: it ended with the cancel's reason, not Done.
    ended = until(
        lambda: outcomes(car_metrics, "parkfleet_agent_tasks_total"), 30, "the car to end its task"
    )
    assert sum(ended.values()) == 1.0, ended
    assert "Done" not in ended, ended
    # And it is free again: the next pod runs on it, long before the old task could end.
    kubectl("apply", "-f", "-", stdin=inference_pod("after", "cancel", "0-10", 1))
    until(lambda: pod_phase(kubectl, "after") == "Succeeded", 60, "the next pod to succeed")
    assert ("Started", "running on car cancel-000000") in events_of(kubectl, "after")
    car.stop()
    kubectl("delete", "pod", "after")
    kubectl("delete", "fp", "cancel", "--wait=false")

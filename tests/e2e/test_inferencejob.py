"""InferenceJob end to end: every item's result exactly once, whatever the cars do.

Runs on the session's stack (operator, gateway, 50 parked cars of pool `demo`) plus
pools and cars each test starts for itself, driven with kubectl as a user would.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from parkfleet.contract import ready_slots
from parkfleet.devstack import DevStack, Proc

from .conftest import REPO, Kubectl
from .kube import get_json, unit_results, until

pytestmark = pytest.mark.e2e

ITEMS = 3000


@pytest.fixture(scope="module")
def jobs(stack: DevStack, kubectl: Kubectl) -> DevStack:
    """The InferenceJob CRD and a 3,000-item input (the digits test split, repeated)."""
    kubectl("apply", "-f", str(REPO / "crds" / "inferencejobs.parkfleet.io.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/inferencejobs.parkfleet.io")
    x = np.load(stack.area() / "digits" / "inputs.npy")
    y = np.load(stack.area() / "digits" / "labels.npy")
    reps = -(-ITEMS // len(x))
    np.save(stack.area() / "digits" / "big.npy", np.tile(x, (reps, 1))[:ITEMS])
    np.save(stack.area() / "digits" / "big-labels.npy", np.tile(y, reps)[:ITEMS])
    return stack


def job(name: str, pool: str = "demo", **spec: Any) -> str:
    fields = {
        "pool": pool,
        "model": "{name: digits, outputNames: [label, probabilities]}",
        "input": f"{{path: digits/big.npy, items: {ITEMS}}}",
        "itemsPerUnit": 250,
        "parallelism": 6,
        "batchSize": 50,
        "output": f"{{path: results/{name}}}",
    }
    fields.update({k: str(v) for k, v in spec.items()})
    body = "\n".join(f"  {k}: {v}" for k, v in fields.items())
    return (
        "apiVersion: parkfleet.io/v1alpha1\nkind: InferenceJob\n"
        f"metadata: {{name: {name}}}\nspec:\n{body}\n"
    )


def condition(k: Kubectl, name: str, kind: str) -> dict[str, Any]:
    st = get_json(k, "ij", name).get("status", {})
    return next((c for c in st.get("conditions", []) if c["type"] == kind), {})


def wait_done(k: Kubectl, name: str, within: float = 180) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        st = get_json(k, "ij", name).get("status", {})
        conds = {c["type"]: c["status"] for c in st.get("conditions", [])}
        return st if "True" in (conds.get("Complete"), conds.get("Failed")) else None

    return until(ended, within, f"InferenceJob {name} to end")


def results(stack: DevStack, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Item numbers and labels over every unit file, in item order."""
    return unit_results(stack.area() / "results" / name)


def check_exactly_once_and_correct(stack: DevStack, name: str) -> None:
    items, labels = results(stack, name)
    assert np.array_equal(items, np.arange(ITEMS)), "every item exactly once"
    x = np.load(stack.area() / "digits" / "big.npy")
    assert np.array_equal(labels, local_labels_of(stack, x))


def local_labels_of(stack: DevStack, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    assert stack.model is not None
    session = ort.InferenceSession(str(stack.model.model_path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["label"], {"input": x})[0])


def check_ledger_matches_status(stack: DevStack, pool: str, st: dict[str, Any]) -> None:
    """The gateway's owner ledger (``parkfleet ledger``, written every 5 s) has the job's
    totals: its items and, to the status's rounding, its energy. Only this job used the
    pool."""

    def rows() -> list[dict[str, Any]] | None:
        args = ["ledger", f"--data-dir={stack.data}", f"--pool={pool}", "--format=json"]
        proc = subprocess.run(
            [sys.executable, "-m", "parkfleet.cli", *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        got: list[dict[str, Any]] = json.loads(proc.stdout)
        return got if sum(r["items"] for r in got) >= st["items"]["succeeded"] else None

    got = until(rows, 30, f"the ledger of pool {pool} to have the job's items")
    assert sum(r["items"] for r in got) == st["items"]["succeeded"]
    assert sum(r["energy_wh"] for r in got) == pytest.approx(st["energyWh"], rel=1e-3, abs=1e-3)
    assert sum(r["violations"] for r in got) == 0
    assert sum(r["task_hours"] for r in got) > 0
    assert {r["car_id"][:5] for r in got} <= {"stay-", "leave"}


def test_digits_job_matches_local_onnx_item_for_item(jobs: DevStack, kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "-", stdin=job("digits-e2e"))
    st = wait_done(kubectl, "digits-e2e")
    assert condition(kubectl, "digits-e2e", "Complete")["status"] == "True"
    assert st["units"] == {"total": 12, "running": 0, "ready": 0, "succeeded": 12, "failed": 0}
    assert st["items"]["succeeded"] == ITEMS
    assert st["progress"] == "100%"
    assert st["carsUsed"] >= 1
    assert st["energyWh"] > 0
    assert st["resultLocation"] == "default/results/digits-e2e"  # on the data volume
    check_exactly_once_and_correct(jobs, "digits-e2e")
    _, labels = results(jobs, "digits-e2e")
    truth = np.load(jobs.area() / "digits" / "big-labels.npy")
    assert float(np.mean(labels == truth)) > 0.9  # the model's accuracy, through the fleet
    table = kubectl("get", "ij", "digits-e2e").stdout
    assert "100%" in table
    assert "True" in table
    # Deleting the job removes its Job and pods (owner references).
    kubectl("delete", "ij", "digits-e2e", "--wait=true", "--timeout=60s")
    until(
        lambda: (
            not get_json(kubectl, "pods", "-l", "batch.kubernetes.io/job-name=digits-e2e")["items"]
        ),
        60,
        "the job's pods to go",
    )


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"model": "{sha256: not-a-hash}"}, "spec.model.sha256"),
        ({"parallelism": 0}, "spec.parallelism"),
        ({"itemsPerUnit": ITEMS + 1}, "spec.itemsPerUnit must not exceed spec.input.items"),
        ({"input": "{items: 5}"}, "spec.input needs exactly one of path, configMap and uri"),
        ({"output": "{path: /etc}"}, "spec.output.path must be relative"),
        ({"model": "{name: digits, uri: 'ftp://x'}"}, "spec.model.uri must be"),
        ({"redundancy": "{copies: 2}"}, "spec.redundancy.compare is required"),
        # Not a schema rule: the operator's admission webhook looks the pool up.
        ({"pool": "atlantis"}, 'spec.pool: Not found: no FleetPool named "atlantis"'),
    ],
)
def test_invalid_job_is_rejected_naming_the_field(
    jobs: DevStack, kubectl: Kubectl, override: dict[str, Any], expected: str
) -> None:
    proc = kubectl("apply", "-f", "-", stdin=job("invalid", **override), check=False)
    assert proc.returncode != 0
    assert expected in proc.stderr


def test_pool_deleted_under_a_job_is_reported_on_the_job(jobs: DevStack, kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "-", stdin=pool("ephemeral"))
    kubectl("apply", "-f", "-", stdin=job("orphaned", pool="ephemeral"))
    kubectl("delete", "fp", "ephemeral", "--wait=true", "--timeout=60s")
    cond = until(
        lambda: (
            condition(kubectl, "orphaned", "Progressing").get("reason") == "UnknownPool"
            and condition(kubectl, "orphaned", "Progressing")
        ),
        60,
        "the UnknownPool condition",
    )
    assert "spec.pool: no FleetPool named 'ephemeral'" in cond["message"]
    kubectl("delete", "ij", "orphaned")


def test_model_that_fails_to_load_fails_the_job(jobs: DevStack, kubectl: Kubectl) -> None:
    garbage = b"this is not an ONNX model"
    sha = hashlib.sha256(garbage).hexdigest()
    (jobs.root / "store" / sha).write_bytes(garbage)
    kubectl("apply", "-f", "-", stdin=job("broken", model=f"{{sha256: {sha}}}"))
    st = wait_done(kubectl, "broken", 120)
    failed = condition(kubectl, "broken", "Failed")
    assert failed["status"] == "True", st
    assert "ModelLoadFailed" in failed["message"]
    assert "protobuf" in failed["message"].lower() or "load" in failed["message"].lower()
    kubectl("delete", "ij", "broken")


def pool(name: str, cells: int = 1, grace: int = 30) -> str:
    return (
        "apiVersion: parkfleet.io/v1alpha1\nkind: FleetPool\n"
        f"metadata: {{name: {name}}}\nspec:\n  selector: {{matchAttributes: {{pool: {name}}}}}\n"
        f"  cellSize: 20\n  cells: {cells}\n  gateway: {{graceSeconds: {grace}}}\n"
    )


def wait_gpus(k: Kubectl, node: str, n: int, within: float = 60) -> None:
    """Waits until the Node offers ``n`` eligible cars' GPUs (its allocatable: those and
    a ready slot beside each)."""
    want = n + ready_slots(n)

    def gpus() -> bool:
        got = k(
            "get",
            "node",
            node,
            "-o",
            "jsonpath={.status.allocatable.nvidia\\.com/gpu}",
            check=False,
        ).stdout
        return got == str(want)

    until(gpus, within, f"{node} to offer {n} GPUs (allocatable {want} with ready slots)")


def test_thirty_percent_of_cars_leave_at_once(jobs: DevStack, kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "-", stdin=pool("churn"))
    slow = ["--compute=modelled", "--modelled-rate=100"]
    stay = jobs.start_fleet(7, 1, "churn", prefix="stay-", name="churn-stay", extra=slow)
    leave = jobs.start_fleet(3, 1, "churn", prefix="leave-", name="churn-leave", extra=slow)
    wait_gpus(kubectl, "pf-churn-0", 10)
    kubectl("apply", "-f", "-", stdin=job("churned", pool="churn", parallelism=10))
    until(
        lambda: (
            get_json(kubectl, "ij", "churned").get("status", {}).get("units", {}).get("running", 0)
            >= 8
        ),
        60,
        "units to run on most cars",
    )
    leave.kill()  # 3 of 10 cars gone at once, mid-unit
    st = wait_done(kubectl, "churned", 240)
    assert condition(kubectl, "churned", "Complete")["status"] == "True", st
    assert st["carsMoved"] >= 1
    check_exactly_once_and_correct(jobs, "churned")
    check_ledger_matches_status(jobs, "churn", st)
    stay.stop()
    kubectl("delete", "ij", "churned")
    kubectl("delete", "fp", "churn", "--wait=false")


def watch_units(k: Kubectl, name: str, within: float = 240) -> tuple[dict[str, Any], int, int]:
    """Follows a job to its end: (its last status, the most units it showed running, the
    most it showed ready at the gateway)."""
    most_running = most_ready = 0

    def sample() -> dict[str, Any] | None:
        nonlocal most_running, most_ready
        st = get_json(k, "ij", name).get("status", {})
        units = st.get("units", {})
        most_running = max(most_running, units.get("running", 0))
        most_ready = max(most_ready, units.get("ready", 0))
        conds = {c["type"]: c["status"] for c in st.get("conditions", [])}
        return st if "True" in (conds.get("Complete"), conds.get("Failed")) else None

    st = until(sample, within, f"InferenceJob {name} to end")
    return st, most_running, most_ready


def test_ready_units_wait_at_the_gateway_and_parallelism_is_never_exceeded(
    jobs: DevStack, kubectl: Kubectl
) -> None:
    """A job that can use every car of its pool keeps one more unit per car ready at the
    gateway (its Job's parallelism and annotation say so, its status counts them, an Event
    tells it), yet never runs more than ``parallelism`` units at once; a job that cannot
    use every car keeps none."""
    kubectl("apply", "-f", "-", stdin=pool("queued"))
    fleet = jobs.start_fleet(
        6,
        1,
        "queued",
        prefix="queued-",
        name="queued",
        extra=["--compute=modelled", "--modelled-rate=25"],  # a unit: 10 s
    )
    wait_gpus(kubectl, "pf-queued-0", 6)
    until(
        lambda: get_json(kubectl, "fp", "queued").get("status", {}).get("carsEligible") == 6,
        30,
        "the pool to count its 6 eligible cars",
    )
    kubectl("apply", "-f", "-", stdin=job("queued", pool="queued"))  # 12 units, 6 at once
    st, most_running, most_ready = watch_units(kubectl, "queued")
    assert condition(kubectl, "queued", "Complete")["status"] == "True", st
    assert most_running <= 6, "never more units at once than spec.parallelism"
    assert most_ready >= 1, "units waited ready at the gateway"
    bj = get_json(kubectl, "job", "queued")
    assert bj["spec"]["parallelism"] == 12  # 6 at once, 6 ready
    assert bj["metadata"]["annotations"]["parkfleet.io/ready-units"] == "6"
    told = ij_events(kubectl, "queued", "ReadyUnits")
    assert told, "a ReadyUnits Event"
    assert told[0].startswith("Job queued keeps 6 units ready at the gateway (was 0)")
    check_exactly_once_and_correct(jobs, "queued")
    kubectl("delete", "ij", "queued")

    # Four at once on six cars: a ready pod would find a free car. None is kept.
    kubectl("apply", "-f", "-", stdin=job("narrow", pool="queued", parallelism=4))
    st, most_running, _ = watch_units(kubectl, "narrow")
    assert condition(kubectl, "narrow", "Complete")["status"] == "True", st
    # (status.units.ready may count a pod for the second between its binding and a car
    # taking it: it is bound to a cell and not on a car yet.)
    assert most_running <= 4
    bj = get_json(kubectl, "job", "narrow")
    assert bj["spec"]["parallelism"] == 4
    assert bj["metadata"]["annotations"]["parkfleet.io/ready-units"] == "0"
    assert not ij_events(kubectl, "narrow", "ReadyUnits")
    check_exactly_once_and_correct(jobs, "narrow")
    fleet.stop()
    kubectl("delete", "ij", "narrow")
    kubectl("delete", "fp", "queued", "--wait=false")


def test_operator_restart_mid_job_loses_and_duplicates_nothing(
    jobs: DevStack, kubectl: Kubectl
) -> None:
    kubectl("apply", "-f", "-", stdin=pool("steady"))
    fleet = jobs.start_fleet(
        6,
        1,
        "steady",
        prefix="steady-",
        name="steady",
        extra=["--compute=modelled", "--modelled-rate=150"],
    )
    wait_gpus(kubectl, "pf-steady-0", 6)
    kubectl("apply", "-f", "-", stdin=job("restarted", pool="steady"))
    until(
        lambda: (
            get_json(kubectl, "ij", "restarted")
            .get("status", {})
            .get("units", {})
            .get("succeeded", 0)
            >= 2
        ),
        120,
        "a few units to finish",
    )
    operator: Proc = jobs.procs["operator"]
    operator.kill()
    jobs.start_operator()
    st = wait_done(kubectl, "restarted", 240)
    assert condition(kubectl, "restarted", "Complete")["status"] == "True", st
    assert st["units"]["succeeded"] == 12
    check_exactly_once_and_correct(jobs, "restarted")
    fleet.stop()
    kubectl("delete", "ij", "restarted")
    kubectl("delete", "fp", "steady", "--wait=false")


def pod_events(k: Kubectl, job_name: str, reason: str) -> list[str]:
    pods = get_json(k, "pods", "-l", f"batch.kubernetes.io/job-name={job_name}")["items"]
    out = []
    for p in pods:
        selector = f"involvedObject.name={p['metadata']['name']}"
        events = get_json(k, "events", "--field-selector", selector)["items"]
        out += [e["message"] for e in events if e["reason"] == reason]
    return out


def test_redundancy_detects_a_corrupt_car_and_keeps_the_right_result(
    jobs: DevStack, kubectl: Kubectl
) -> None:
    kubectl("apply", "-f", "-", stdin=pool("checked"))
    # Two cars, one of them faulty: both copies of the unit must run on them.
    good = jobs.start_fleet(1, 1, "checked", prefix="good-", name="checked-good")
    bad = jobs.start_fleet(1, 1, "checked", prefix="bad-", name="checked-bad", extra=["--corrupt"])
    wait_gpus(kubectl, "pf-checked-0", 2)
    spec = {
        "input": "{path: digits/big.npy, items: 250}",
        "itemsPerUnit": 250,
        "parallelism": 1,
        "redundancy": "{copies: 2, compare: {mode: argmax, output: probabilities}}",
    }
    kubectl("apply", "-f", "-", stdin=job("crosschecked", pool="checked", **spec))
    until(
        lambda: pod_events(kubectl, "crosschecked", "ResultsDisagree"),
        120,
        "the two copies to disagree",
    )
    # A third car decides.
    third = jobs.start_fleet(1, 1, "checked", prefix="third-", name="checked-third")
    st = wait_done(kubectl, "crosschecked", 180)
    assert condition(kubectl, "crosschecked", "Complete")["status"] == "True", st
    assert st["disagreements"] == 1
    resolved = pod_events(kubectl, "crosschecked", "DisagreementResolved")
    assert len(resolved) == 1
    assert "bad-000000" in resolved[0]
    items, labels = results(jobs, "crosschecked")
    assert np.array_equal(items, np.arange(250))
    x = np.load(jobs.area() / "digits" / "big.npy")[:250]
    assert np.array_equal(labels, local_labels_of(jobs, x))  # the right result was kept
    for proc in (good, bad, third):
        proc.stop()
    kubectl("delete", "ij", "crosschecked")
    kubectl("delete", "fp", "checked", "--wait=false")


def test_spot_checks_quarantine_a_lying_car_and_its_unchecked_units_are_redone(
    jobs: DevStack, kubectl: Kubectl
) -> None:
    kubectl("apply", "-f", "-", stdin=pool("spotted"))
    liar = jobs.start_fleet(
        1, 1, "spotted", prefix="liar-", name="spotted-liar", extra=["--corrupt"]
    )
    wait_gpus(kubectl, "pf-spotted-0", 1)
    # Alone and unchecked, the lying car's results pass: nothing compares them yet.
    unchecked = {"input": "{path: digits/big.npy, items: 200}", "itemsPerUnit": 100}
    kubectl(
        "apply",
        "-f",
        "-",
        stdin=job("unseen", pool="spotted", redundancy="{spotCheckFraction: 0}", **unchecked),
    )
    wait_done(kubectl, "unseen", 120)
    assert condition(kubectl, "unseen", "Complete")["status"] == "True"
    x = np.load(jobs.area() / "digits" / "big.npy")[:200]
    right = local_labels_of(jobs, x)
    assert not np.array_equal(results(jobs, "unseen")[1], right)

    # Honest cars of other owners join; every unit of the next job is spot-checked.
    honest = jobs.start_fleet(2, 1, "spotted", prefix="honest-", name="spotted-honest")
    wait_gpus(kubectl, "pf-spotted-0", 3)
    checked = {
        "input": "{path: digits/big.npy, items: 600}",
        "itemsPerUnit": 100,
        "parallelism": 1,
        "redundancy": "{spotCheckFraction: 1}",
    }
    kubectl("apply", "-f", "-", stdin=job("spotchecked", pool="spotted", **checked))
    st = wait_done(kubectl, "spotchecked", 240)
    assert condition(kubectl, "spotchecked", "Complete")["status"] == "True", st
    items, labels = results(jobs, "spotchecked")
    assert np.array_equal(items, np.arange(600))
    assert np.array_equal(
        labels, local_labels_of(jobs, np.load(jobs.area() / "digits" / "big.npy")[:600])
    )
    quarantined = pod_events(kubectl, "spotchecked", "CarQuarantined")
    assert len(quarantined) == 1, quarantined
    assert "liar-000000" in quarantined[0]

    # The lying car's earlier, unchecked units ran again on honest cars: corrected.
    until(
        lambda: len(pod_events(kubectl, "unseen", "ResultReplaced")) == 2,
        120,
        "the unchecked units to be redone",
    )
    assert np.array_equal(results(jobs, "unseen")[1], right)
    assert np.array_equal(results(jobs, "unseen")[0], np.arange(200))
    assert "liar-000000" in pod_events(kubectl, "unseen", "ResultReplaced")[0]
    # Quarantined, the car is offered nothing: its GPU left the Node.
    wait_gpus(kubectl, "pf-spotted-0", 2)
    for proc in (liar, honest):
        proc.stop()
    for name in ("unseen", "spotchecked"):
        kubectl("delete", "ij", name)
    kubectl("delete", "fp", "spotted", "--wait=false")


def test_deadline_fails_the_job_and_cancels_the_rest(jobs: DevStack, kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "-", stdin=pool("late"))
    fleet = jobs.start_fleet(
        2,
        1,
        "late",
        prefix="late-",
        name="late",
        extra=["--compute=modelled", "--modelled-rate=20"],
    )
    wait_gpus(kubectl, "pf-late-0", 2)
    kubectl("apply", "-f", "-", stdin=job("overdue", pool="late", deadlineSeconds=8))
    st = wait_done(kubectl, "overdue", 120)
    failed = condition(kubectl, "overdue", "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "DeadlineExceeded"), st
    # The Job controller deletes the running pods; their tasks are cancelled on the cars.
    until(
        lambda: (
            not get_json(kubectl, "pods", "-l", "batch.kubernetes.io/job-name=overdue")["items"]
            or all(
                p["status"].get("phase") in ("Failed", "Succeeded")
                for p in get_json(kubectl, "pods", "-l", "batch.kubernetes.io/job-name=overdue")[
                    "items"
                ]
            )
        ),
        60,
        "the job's pods to stop",
    )
    until(
        lambda: get_json(kubectl, "fp", "late").get("status", {}).get("carsBusy") == 0,
        30,
        "the cars to be free again",
    )
    fleet.stop()
    kubectl("delete", "ij", "overdue")
    kubectl("delete", "fp", "late", "--wait=false")


def test_tiny_input_from_a_configmap(jobs: DevStack, kubectl: Kubectl) -> None:
    x = np.load(jobs.area() / "digits" / "big.npy")[:6]
    doc = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: six-digits}\n"
        f"data:\n  items.json: '{json.dumps(x.tolist())}'\n"
    )
    kubectl("apply", "-f", "-", stdin=doc)
    spec = {
        "input": "{configMap: {name: six-digits, key: items.json}, items: 6}",
        "itemsPerUnit": 3,
    }
    kubectl("apply", "-f", "-", stdin=job("tiny", **spec))
    st = wait_done(kubectl, "tiny", 120)
    assert condition(kubectl, "tiny", "Complete")["status"] == "True", st
    items, labels = results(jobs, "tiny")
    assert np.array_equal(items, np.arange(6))
    assert np.array_equal(labels, local_labels_of(jobs, x))
    kubectl("delete", "ij", "tiny")
    kubectl("delete", "configmap", "six-digits")


def ij_events(k: Kubectl, name: str, reason: str) -> list[str]:
    """Messages of the InferenceJob's own Events with ``reason`` (its Job, of the same
    name, has Events of its own: Suspended and Resumed among them)."""
    selector = f"involvedObject.kind=InferenceJob,involvedObject.name={name}"
    events = get_json(k, "events", "--field-selector", selector)["items"]
    return [e["message"] for e in events if e["reason"] == reason]


def patch_spec(k: Kubectl, name: str, spec: str, check: bool = True) -> Any:
    return k("patch", "ij", name, "--type", "merge", "-p", f'{{"spec": {spec}}}', check=check)


def applied(k: Kubectl, name: str) -> dict[str, Any] | None:
    """The job, once its status answers its current generation (the Job follows it)."""
    obj = get_json(k, "ij", name)
    st = obj.get("status", {})
    return obj if st.get("observedGeneration") == obj["metadata"]["generation"] else None


def batch_spec(k: Kubectl, name: str) -> dict[str, Any]:
    return dict(get_json(k, "job", name)["spec"])


def live_pods(k: Kubectl, name: str) -> list[dict[str, Any]]:
    pods = get_json(k, "pods", "-l", f"batch.kubernetes.io/job-name={name}")["items"]
    return [p for p in pods if p["status"].get("phase") not in ("Failed", "Succeeded")]


def test_suspend_mid_job_then_resume_runs_every_item_exactly_once(
    jobs: DevStack, kubectl: Kubectl
) -> None:
    kubectl("apply", "-f", "-", stdin=pool("paused"))
    fleet = jobs.start_fleet(
        3, 1, "paused", prefix="paused-", name="paused",
        extra=["--compute=modelled", "--modelled-rate=40"],
    )  # fmt: skip
    wait_gpus(kubectl, "pf-paused-0", 3)
    kubectl("apply", "-f", "-", stdin=job("pausable", pool="paused", parallelism=3))
    until(
        lambda: (
            condition(kubectl, "pausable", "Progressing").get("reason") == "UnitsRunning"
            and get_json(kubectl, "ij", "pausable")["status"]["units"]["succeeded"] >= 1
        ),
        120,
        "a unit done and others running",
    )
    patch_spec(kubectl, "pausable", '{"suspend": true}')
    until(lambda: batch_spec(kubectl, "pausable")["suspend"], 30, "the Job to be suspended")
    # The Job controller deletes the running pods; their tasks are cancelled on the cars.
    until(lambda: not live_pods(kubectl, "pausable"), 60, "the running units to stop")
    until(
        lambda: get_json(kubectl, "fp", "paused").get("status", {}).get("carsBusy") == 0,
        30,
        "the cars to be free",
    )

    def settled() -> dict[str, Any] | None:
        obj = applied(kubectl, "pausable")
        return obj if obj and obj["status"]["units"]["running"] == 0 else None

    obj = until(settled, 30, "the status to show the suspension, nothing running")
    suspended = condition(kubectl, "pausable", "Suspended")
    assert (suspended["status"], suspended["reason"]) == ("True", "Suspended"), suspended
    assert condition(kubectl, "pausable", "Progressing")["status"] == "False"
    done = obj["status"]["units"]["succeeded"]
    assert 1 <= done < 12, obj["status"]  # suspended mid-job
    assert len(ij_events(kubectl, "pausable", "Suspended")) == 1
    out = jobs.area() / "results" / "pausable"
    before = {f.name: f.stat().st_mtime_ns for f in out.glob("unit-*.npz")}
    assert len(before) >= done

    # Resumed while the operator is down: nothing happens until it is back (level-based).
    operator: Proc = jobs.procs["operator"]
    operator.kill()
    patch_spec(kubectl, "pausable", '{"suspend": false}')
    lagging = get_json(kubectl, "ij", "pausable")
    assert lagging["status"]["observedGeneration"] < lagging["metadata"]["generation"]
    assert batch_spec(kubectl, "pausable")["suspend"] is True
    assert not live_pods(kubectl, "pausable")
    jobs.start_operator()

    st = wait_done(kubectl, "pausable", 240)
    assert condition(kubectl, "pausable", "Complete")["status"] == "True", st
    assert (st["units"]["succeeded"], st["units"]["failed"]) == (12, 0)
    resumed = condition(kubectl, "pausable", "Suspended")
    assert (resumed["status"], resumed["reason"]) == ("False", "JobEnded")
    assert len(ij_events(kubectl, "pausable", "Resumed")) == 1
    check_exactly_once_and_correct(jobs, "pausable")
    # Units done before the pause were not run again: their files are the same files.
    after = {f.name: f.stat().st_mtime_ns for f in out.glob("unit-*.npz")}
    assert {n: after[n] for n in before} == before
    fleet.stop()
    kubectl("delete", "ij", "pausable")
    kubectl("delete", "fp", "paused", "--wait=false")


def test_a_job_created_suspended_starts_when_resumed_and_parallelism_follows_edits(
    jobs: DevStack, kubectl: Kubectl
) -> None:
    kubectl("apply", "-f", "-", stdin=job("held", suspend="true", parallelism=2))
    # The Job controller saw the Job and keeps it suspended: no pod, no start.
    until(
        lambda: "True" in kubectl(
            "get", "job", "held", "-o",
            'jsonpath={.status.conditions[?(@.type=="Suspended")].status}', check=False,
        ).stdout,
        60,
        "the Job controller to hold the Job",
    )  # fmt: skip
    obj = until(lambda: applied(kubectl, "held"), 30, "the job's status")
    assert condition(kubectl, "held", "Suspended")["status"] == "True"
    assert condition(kubectl, "held", "Progressing")["reason"] == "Suspended"
    assert obj["status"]["units"]["succeeded"] == 0
    assert "startTime" not in obj["status"]
    assert not get_json(kubectl, "pods", "-l", "batch.kubernetes.io/job-name=held")["items"]
    until(
        lambda: any("suspended" in m for m in ij_events(kubectl, "held", "JobCreated")),
        30,
        "the JobCreated Event to say the job is suspended",
    )
    assert "True" in kubectl("get", "ij", "held").stdout  # the Suspended column

    # parallelism follows edits, bounded by the job's 12 units.
    assert batch_spec(kubectl, "held")["parallelism"] == 2
    patch_spec(kubectl, "held", '{"parallelism": 4}')
    until(lambda: applied(kubectl, "held"), 30, "the parallelism edit to be applied")
    assert batch_spec(kubectl, "held")["parallelism"] == 4
    patch_spec(kubectl, "held", '{"parallelism": 100}')
    until(lambda: applied(kubectl, "held"), 30, "the parallelism edit to be applied")
    assert batch_spec(kubectl, "held")["parallelism"] == 12
    changed = ij_events(kubectl, "held", "ParallelismChanged")
    assert sorted(changed) == [
        "Job held: 12 units at once (was 4)",
        "Job held: 4 units at once (was 2)",
    ]

    patch_spec(kubectl, "held", '{"suspend": false}')
    st = wait_done(kubectl, "held")
    assert condition(kubectl, "held", "Complete")["status"] == "True", st
    assert ij_events(kubectl, "held", "Resumed") == [
        "spec.suspend is false: Job held runs its 12 units left"
    ]
    check_exactly_once_and_correct(jobs, "held")
    kubectl("delete", "ij", "held")


@pytest.fixture(scope="module")
def fixed(jobs: DevStack, kubectl: Kubectl) -> Iterator[str]:
    """A suspended job (nothing needs to run) for edits to be refused on."""
    kubectl("apply", "-f", "-", stdin=job("fixed", suspend="true"))
    yield "fixed"
    kubectl("delete", "ij", "fixed")


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ('{"batchSize": 7}', "spec.batchSize"),
        ('{"input": {"items": 100}}', "spec.input"),
        ('{"model": {"name": "other"}}', "spec.model"),
        ('{"output": {"path": "elsewhere"}}', "spec.output"),
        ('{"pool": "solo"}', "spec.pool"),
        ('{"deadlineSeconds": 60}', "spec.deadlineSeconds"),  # a field the job did not set
        ('{"suspend": false, "itemsPerUnit": 100}', "spec.itemsPerUnit"),  # with an allowed one
    ],
)
def test_other_edits_are_refused_naming_what_may_change(
    fixed: str, kubectl: Kubectl, spec: str, field: str
) -> None:
    proc = patch_spec(kubectl, fixed, spec, check=False)
    assert proc.returncode != 0
    assert (
        f"{field} cannot change after creation: only spec.suspend and spec.parallelism may"
        in proc.stderr
    ), proc.stderr
    obj = get_json(kubectl, "ij", fixed)
    assert (obj["metadata"]["generation"], obj["spec"]["suspend"]) == (1, True)  # nothing stored


async def test_a_refused_edit_is_a_422_from_the_api_server(
    fixed: str, kubectl: Kubectl, api: client.ApiClient
) -> None:
    custom = client.CustomObjectsApi(api)
    with pytest.raises(ApiException) as refused:
        await custom.patch_namespaced_custom_object(
            "parkfleet.io", "v1alpha1", "default", "inferencejobs", fixed,
            {"spec": {"retriesPerUnit": 9}}, _content_type="application/merge-patch+json",
        )  # fmt: skip
    assert refused.value.status == 422
    body = json.loads(refused.value.body)
    assert body["reason"] == "Invalid"
    (cause,) = body["details"]["causes"]
    assert cause["field"] == "spec"
    assert "spec.retriesPerUnit cannot change after creation" in cause["message"]
    # Applying the same manifest again changes nothing; labels and parallelism may change.
    again = kubectl("apply", "-f", "-", stdin=job(fixed, suspend="true"))
    assert "unchanged" in again.stdout
    await custom.patch_namespaced_custom_object(
        "parkfleet.io", "v1alpha1", "default", "inferencejobs", fixed,
        {"spec": {"parallelism": 3}, "metadata": {"labels": {"team": "a"}}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip
    assert get_json(kubectl, "ij", fixed)["spec"]["parallelism"] == 3

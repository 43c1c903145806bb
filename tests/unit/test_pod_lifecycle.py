"""The pod lifecycle core, driven through every transition: no cluster, socket or loop."""

from __future__ import annotations

import datetime
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from parkfleet.contract import (
    EXIT_BAD_SPEC,
    EXIT_FAILED,
    EXIT_MODEL,
    EXIT_RETRY_ELSEWHERE,
    EXIT_STOPPED,
    REASON_UNSUPPORTED,
    TerminationSummary,
)
from parkfleet.nodeagent import lifecycle as lc
from parkfleet.nodeagent import podevents as ev

T0 = datetime.datetime(2026, 12, 1, 12, 0, 0, tzinfo=datetime.UTC)
POD = lc.Pod(
    uid="u1",
    namespace="ns",
    name="p",
    cell="eu-0",
    pool="eu",
    container="infer",
    image="parkfleet.io/runtime/onnxruntime:1",
    created="2026-12-01T11:59:58Z",
    host_ip="10.0.0.9",
    items=(0, 100),
)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def kinds(effects: list[ev.Effect]) -> list[str]:
    return [type(e).__name__ for e in effects]


def only(effects: list[ev.Effect], kind: type[Any]) -> list[Any]:
    return [e for e in effects if isinstance(e, kind)]


def final_status(effects: list[ev.Effect]) -> dict[str, Any]:
    (patch,) = [e for e in only(effects, ev.PatchStatus) if e.final]
    return dict(patch.status)


def terminated(effects: list[ev.Effect]) -> dict[str, Any]:
    status = final_status(effects)
    term: dict[str, Any] = status["containerStatuses"][0]["state"]["terminated"]
    return term


def run(state: lc.PodState, *events: ev.Event, t: float = 1.0) -> tuple[lc.PodState, list[Any]]:
    effects: list[Any] = []
    for e in events:
        state, more = lc.step(state, e, at(t))
        effects += more
    return state, effects


def test_admission_submits_and_arms_the_pending_check() -> None:
    state, effects = lc.admit(POD)
    assert kinds(effects) == ["Log", "Submit", "SchedulePendingCheck"]
    assert only(effects, ev.Submit) == [ev.Submit("u1", "")]
    assert state.phase == "Waiting"
    assert "items 0..99 queued on cell eu-0" in effects[0].lines[0]


def test_waiting_then_running_then_moved_then_succeeded() -> None:
    state, _ = lc.admit(POD)
    state, effects = run(state, ev.PendingDue())
    (pending,) = only(effects, ev.PatchStatus)
    assert pending.status["phase"] == "Pending"
    assert pending.status["conditions"][0]["reason"] == "WaitingForCar"

    state, effects = run(state, ev.Accepted("u1", "car-a"), t=2.0)
    assert state.phase == "Running"
    assert kinds(effects) == ["Log", "PostEvent", "PatchStatus", "ObserveStart"]
    running = only(effects, ev.PatchStatus)[0].status
    assert running["phase"] == "Running"
    assert running["hostIP"] == "10.0.0.9"
    assert running["containerStatuses"][0]["name"] == "infer"
    assert only(effects, ev.ObserveStart)[0].seconds == pytest.approx(4.0)
    # A late pending check says nothing: the pod is Running.
    assert run(state, ev.PendingDue())[1] == []

    state, effects = run(state, ev.Moved("u1", "car-a", "car-b", 40), ev.Accepted("u1", "car-b"))
    assert state.moves == 1
    assert only(effects, ev.PostEvent)[0].reason == "Moved"
    assert "resuming at item 40" in only(effects, ev.PostEvent)[0].message
    assert not only(effects, ev.PatchStatus)  # still Running: nothing to rewrite
    assert state.cars == ("car-a", "car-b")

    state, effects = run(state, ev.Succeeded("u1", 100, 0.25, True), t=9.0)
    assert state.ended
    assert only(effects, ev.Release) == [ev.Release("u1")]
    # One copy, compared with nothing: remembered with every car that carried it.
    assert only(effects, ev.KeptUnchecked) == [ev.KeptUnchecked(("car-a", "car-b"))]
    status = final_status(effects)
    assert status["phase"] == "Succeeded"
    term = terminated(effects)
    assert term["exitCode"] == 0
    assert term["startedAt"] == "2026-12-01T12:00:02Z"
    summary = TerminationSummary.from_json(term["message"])
    assert summary == TerminationSummary(
        items=100, cars=("car-a", "car-b"), moves=1, energy_wh=0.25, energy_modelled=True
    )
    assert only(effects, ev.CountEnded) == [ev.CountEnded("Succeeded", "Completed", 0.25)]
    assert "(modelled)" in only(effects, ev.PostEvent)[0].message


def test_a_lost_car_is_told_and_the_pod_stays_running() -> None:
    state, _ = lc.admit(POD)
    state, _ = run(state, ev.Accepted("u1", "car-a"))
    state, effects = run(state, ev.Lost("u1", "car-a", "Driving", 30))
    (event,) = only(effects, ev.PostEvent)
    assert (event.reason, event.warning) == ("CarLost", True)
    assert "from item 30" in event.message
    assert state.phase == "Running"
    assert not only(effects, ev.PatchStatus)


def test_car_log_lines_reach_the_pod_log() -> None:
    state, _ = lc.admit(POD)
    _, effects = run(state, ev.Logged("u1", ("loaded model", "batch 1")))
    assert effects == [ev.Log(("loaded model", "batch 1"))]


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("NoEligibleCar", EXIT_RETRY_ELSEWHERE),
        ("OfferTimeout", EXIT_RETRY_ELSEWHERE),
        ("ModelHashMismatch", EXIT_MODEL),
        ("InputError", EXIT_FAILED),
        ("", EXIT_FAILED),
    ],
)
def test_each_failure_reason_ends_with_its_exit_code(reason: str, code: int) -> None:
    state, _ = lc.admit(POD)
    state, _ = run(state, ev.Accepted("u1", "car-a"))
    state, effects = run(state, ev.Failed("u1", reason, "detail", 0.5))
    assert state.ended
    status = final_status(effects)
    assert status["phase"] == "Failed"
    assert status["reason"] == (reason or "TaskFailed")
    assert terminated(effects)["exitCode"] == code
    assert only(effects, ev.CountEnded)[0].energy_wh == 0.5
    assert only(effects, ev.Release) == [ev.Release("u1")]
    assert not only(effects, ev.Cancel)  # the failed copy is over already


def test_a_refused_task_spec_fails_the_pod() -> None:
    state, _ = lc.admit(POD)
    state, effects = run(state, ev.SubmitFailed("u1", "task 'u1' already exists"))
    assert terminated(effects)["reason"] == "TaskRefused"
    assert "already exists" in terminated(effects)["message"]


def test_deletion_mid_task_cancels_then_removes_the_pod() -> None:
    state, _ = lc.admit(POD)
    state, _ = run(state, ev.Accepted("u1", "car-a"))
    state, effects = run(state, ev.DeletionRequested())
    assert effects[0] == ev.Cancel("u1", "PodDeleted")
    # Terminal first (the Job controller lifts its finalizer only then), the object last.
    assert kinds(effects).index("PatchStatus") < kinds(effects).index("DeletePod")
    assert kinds(effects)[-1] == "DeletePod"
    assert final_status(effects)["phase"] == "Failed"
    assert (terminated(effects)["exitCode"], terminated(effects)["reason"]) == (
        EXIT_STOPPED,
        "PodDeleted",
    )
    assert only(effects, ev.CountEnded) == [ev.CountEnded("Failed", "PodDeleted", 0.0)]
    # The cancelled copy's event, and the object's removal, change nothing more.
    state, late = run(state, ev.Stopped("u1", 0.1), ev.Succeeded("u1", 100), ev.Gone())
    assert late == []


def test_deletion_of_an_ended_pod_only_removes_it() -> None:
    state, _ = lc.admit(POD)
    state, _ = run(state, ev.Accepted("u1", "car-a"), ev.Succeeded("u1", 100))
    _, effects = run(state, ev.DeletionRequested())
    assert effects == [ev.DeletePod()]


def test_a_pod_we_ran_nothing_for_ends_before_it_goes() -> None:
    state, effects = lc.deleted(POD, "2026-12-01T11:00:00Z", at(0))
    assert state.ended
    assert not only(effects, ev.Cancel)
    assert terminated(effects)["exitCode"] == EXIT_STOPPED
    assert terminated(effects)["startedAt"] == "2026-12-01T11:00:00Z"
    assert kinds(effects)[-1] == "DeletePod"


def test_a_pod_gone_mid_task_has_its_task_cancelled() -> None:
    state, _ = lc.admit(POD)
    _, effects = run(state, ev.Gone())
    assert kinds(effects) == ["Cancel", "Release"]


def test_an_already_finished_unit_succeeds_without_running() -> None:
    state, effects = lc.already_done(POD, 100, "unit-000003.npz", at(0))
    assert state.ended
    assert not only(effects, ev.Submit)
    summary = TerminationSummary.from_json(terminated(effects)["message"])
    assert (summary.items, summary.cached) == (100, True)
    assert "unit-000003.npz" in only(effects, ev.Log)[0].lines[0]


def test_a_pod_no_car_can_run_fails_at_once_naming_the_field() -> None:
    message = "spec.volumes[0].hostPath: a car has no host paths"
    state, effects = lc.refuse(POD, REASON_UNSUPPORTED, message, at(0))
    assert state.ended
    status = final_status(effects)
    assert status["conditions"][0]["type"] == "parkfleet.io/CarAssigned"
    assert status["conditions"][0]["reason"] == REASON_UNSUPPORTED
    assert terminated(effects)["exitCode"] == EXIT_BAD_SPEC
    assert terminated(effects)["message"] == message
    assert only(effects, ev.PostEvent)[0].warning


def test_a_pod_running_when_the_gateway_restarted_stays_running() -> None:
    state, effects = lc.admit(POD, running_since="2026-12-01T11:00:00Z")
    assert state.phase == "Running"
    assert kinds(effects) == ["Log", "Submit"]
    state, effects = run(state, ev.Accepted("u1", "car-a"))
    assert not only(effects, ev.PatchStatus)


# ---- redundancy --------------------------------------------------------------------------

REDUNDANT = lc.Pod(
    uid="u2",
    namespace="ns",
    name="r",
    cell="eu-0",
    items=(0, 2),
    copies=2,
    compare=("argmax", "probabilities", 0.0),
)
A = {"probabilities": np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32)}
B = {"probabilities": np.array([[0.1, 0.9], [0.2, 0.8]], dtype=np.float32)}


def redundant_running() -> lc.PodState:
    state, effects = lc.admit(REDUNDANT)
    assert only(effects, ev.Submit) == [ev.Submit("u2-r0", "u2"), ev.Submit("u2-r1", "u2")]
    state, _ = run(state, ev.Accepted("u2-r0", "car-a"), ev.Accepted("u2-r1", "car-b"))
    return state


def test_copies_that_agree_promote_one_result() -> None:
    state = redundant_running()
    state, effects = run(state, ev.Succeeded("u2-r0", 2, 0.1, outputs=A))
    assert effects == []  # the other copy still runs
    state, effects = run(state, ev.Succeeded("u2-r1", 2, 0.2, outputs=A))
    # Both cars hear they agreed, before the result is promoted and the copies released.
    assert kinds(effects)[:3] == ["Verdict", "Verdict", "PromoteResult"]
    assert only(effects, ev.Verdict) == [ev.Verdict("u2-r0", True), ev.Verdict("u2-r1", True)]
    assert only(effects, ev.PromoteResult) == [ev.PromoteResult("u2-r0")]
    assert only(effects, ev.Release) == [ev.Release("u2-r0"), ev.Release("u2-r1")]
    summary = TerminationSummary.from_json(terminated(effects)["message"])
    assert (summary.energy_wh, summary.disagreements) == (pytest.approx(0.3), 0)


def test_a_disagreement_asks_another_car_and_the_majority_wins() -> None:
    state = redundant_running()
    state, effects = run(
        state, ev.Succeeded("u2-r0", 2, outputs=A), ev.Succeeded("u2-r1", 2, outputs=B)
    )
    assert only(effects, ev.Submit) == [ev.Submit("u2-r2", "u2")]
    assert only(effects, ev.PostEvent)[0].reason == "ResultsDisagree"
    assert state.disagreements == 1
    assert not only(effects, ev.Verdict)  # no verdict before the vote is decided
    state, effects = run(state, ev.Accepted("u2-r2", "car-c"), ev.Succeeded("u2-r2", 2, outputs=B))
    assert only(effects, ev.PromoteResult) == [ev.PromoteResult("u2-r1")]
    # A strike for the odd copy, agreements for the others, each before its release.
    assert only(effects, ev.Verdict) == [
        ev.Verdict("u2-r0", False),
        ev.Verdict("u2-r1", True),
        ev.Verdict("u2-r2", True),
    ]
    order = kinds(effects)
    assert order.index("Release") > max(i for i, k in enumerate(order) if k == "Verdict")
    resolved = only(effects, ev.PostEvent)[0]
    assert resolved.reason == "DisagreementResolved"
    assert "car(s) car-a" in resolved.message
    summary = TerminationSummary.from_json(terminated(effects)["message"])
    assert summary.disagreements == 1
    assert summary.cars == ("car-a", "car-b", "car-c")


def test_no_majority_after_the_tie_breakers_fails_the_pod() -> None:
    c = {"probabilities": np.array([[0.6, 0.4], [0.3, 0.7]], dtype=np.float32)}  # as A
    d = {"probabilities": np.array([[0.4, 0.6], [0.9, 0.1]], dtype=np.float32)}
    state = redundant_running()
    state, _ = run(state, ev.Succeeded("u2-r0", 2, outputs=A), ev.Succeeded("u2-r1", 2, outputs=B))
    state, effects = run(state, ev.Succeeded("u2-r2", 2, outputs=c))
    # A and c agree: that is a majority of three, no fourth car needed.
    assert only(effects, ev.PromoteResult) == [ev.PromoteResult("u2-r0")]

    state = redundant_running()
    e = {"probabilities": np.array([[0.9, 0.1], [0.9, 0.1]], dtype=np.float32)}
    state, _ = run(state, ev.Succeeded("u2-r0", 2, outputs=A), ev.Succeeded("u2-r1", 2, outputs=B))
    state, effects = run(state, ev.Succeeded("u2-r2", 2, outputs=e))
    assert only(effects, ev.Submit) == [ev.Submit("u2-r3", "u2")]
    state, effects = run(state, ev.Succeeded("u2-r3", 2, outputs=d))
    assert terminated(effects)["reason"] == "ResultsDisagree"
    assert not only(effects, ev.Verdict)  # no majority: no car can be told it was wrong
    assert terminated(effects)["exitCode"] == EXIT_FAILED
    assert state.disagreements == 2


def test_a_single_copy_gets_no_verdict() -> None:
    state, _ = lc.admit(POD)
    state, effects = run(state, ev.Accepted("u1", "car-a"), ev.Succeeded("u1", 100))
    assert state.ended
    assert not only(effects, ev.Verdict)


def test_a_failed_copy_fails_the_pod_and_cancels_the_others() -> None:
    state = redundant_running()
    state, effects = run(state, ev.Failed("u2-r1", "InputError", "bad input"))
    assert only(effects, ev.Cancel) == [ev.Cancel("u2-r0", "copy failed: InputError")]
    assert terminated(effects)["reason"] == "InputError"
    # Cancelled copies' energy arrives later, and changes nothing already written.
    assert run(state, ev.Stopped("u2-r0", 1.0))[1] == []


def test_events_of_unknown_tasks_are_ignored() -> None:
    state, _ = lc.admit(POD)
    assert run(state, ev.Accepted("other", "car-x"))[1] == []


# ---- spot checks at redundancy 1 -----------------------------------------------------------

LIAR = {"probabilities": np.array([[0.1, 0.9], [0.9, 0.1]], dtype=np.float32)}


def part(outputs: dict[str, np.ndarray], pod: lc.Pod) -> dict[str, np.ndarray]:
    """What the check copy of a spot-checked pod delivers: its slice of ``outputs``."""
    a, b = lc.check_slice(pod.uid, pod.items)
    return {k: v[a - pod.items[0] : b - pod.items[0]] for k, v in outputs.items()}


def checked_pod(fraction: float = 0.5) -> lc.Pod:
    uid = next(f"s{i}" for i in range(1000) if lc.spot_checked(f"s{i}", fraction))
    return lc.Pod(uid=uid, namespace="ns", name="s", cell="eu-0", items=(0, 2), spot_check=fraction)


def test_spot_checks_pick_about_the_fraction_of_units_and_the_same_after_a_restart() -> None:
    uids = [f"pod-{i}" for i in range(2000)]
    assert not any(lc.spot_checked(u, 0.0) for u in uids)
    assert all(lc.spot_checked(u, 1.0) for u in uids)
    # Binomial(2000, 0.05): mean 100, sd under 10.
    assert 60 <= sum(lc.spot_checked(u, 0.05) for u in uids) <= 140
    assert [lc.spot_checked(u, 0.05) for u in uids] == [lc.spot_checked(u, 0.05) for u in uids]


def test_a_spot_checked_unit_runs_as_two_copies_of_one_group() -> None:
    pod = checked_pod()
    state, effects = lc.admit(pod)
    assert state.pod.copies == 2
    assert state.pod.checked
    # The check copy runs a tenth of the items (at least one), where the uid says.
    assert state.pod.check_items == lc.check_slice(pod.uid, pod.items)
    assert only(effects, ev.Submit) == [
        ev.Submit(f"{pod.uid}-r0", pod.uid),
        ev.Submit(f"{pod.uid}-r1", pod.uid, state.pod.check_items),
    ]
    assert "spot check" in effects[0].lines[0]
    unchecked = lc.Pod(uid="u1", namespace="ns", name="p", spot_check=0.0)
    assert lc.admit(unchecked)[0].pod.copies == 1


def test_a_spot_check_catches_a_lying_car_and_keeps_the_right_result() -> None:
    pod = checked_pod()
    r0, r1, r2 = (f"{pod.uid}-r{i}" for i in range(3))
    state, _ = lc.admit(pod)
    state, _ = run(state, ev.Accepted(r0, "liar"), ev.Accepted(r1, "car-b"))
    state, effects = run(
        state, ev.Succeeded(r0, 2, outputs=LIAR), ev.Succeeded(r1, 1, outputs=part(A, pod))
    )
    assert only(effects, ev.Submit) == [ev.Submit(r2, pod.uid)]  # the whole unit again
    state, effects = run(state, ev.Accepted(r2, "car-c"), ev.Succeeded(r2, 2, outputs=A))
    assert only(effects, ev.Verdict) == [
        ev.Verdict(r0, False),
        ev.Verdict(r1, True),
        ev.Verdict(r2, True),
    ]
    # The check's slice won, but a slice is no unit: the whole copy that agrees is kept.
    assert only(effects, ev.PromoteResult) == [ev.PromoteResult(r2)]
    assert terminated(effects)["reason"] == "Completed"
    assert TerminationSummary.from_json(terminated(effects)["message"]).items == 2


def test_a_spot_check_that_agrees_keeps_the_first_copy_and_compares_only_its_slice() -> None:
    pod = lc.Pod(uid="", namespace="ns", name="s", cell="eu-0", items=(100, 200), spot_check=1)
    pod = replace(pod, uid=next(f"w{i}" for i in range(1000) if lc.spot_checked(f"w{i}", 1)))
    state, _ = lc.admit(pod)
    a, b = state.pod.check_items
    assert b - a == 10
    assert 100 <= a < b <= 200
    rng = np.random.default_rng(0)
    full = {"probabilities": rng.random((100, 3), dtype=np.float32)}
    # Items outside the slice differ: the check cannot see them, and does not judge them.
    other = {"probabilities": full["probabilities"][::-1].copy()}
    other["probabilities"][a - 100 : b - 100] = full["probabilities"][a - 100 : b - 100]
    r0, r1 = f"{pod.uid}-r0", f"{pod.uid}-r1"
    state, _ = run(state, ev.Accepted(r0, "car-a"), ev.Accepted(r1, "car-b"))
    state, effects = run(
        state,
        ev.Succeeded(r0, 100, outputs=full),
        ev.Succeeded(r1, 10, outputs=part(other, state.pod)),
    )
    assert only(effects, ev.Verdict) == [ev.Verdict(r0, True), ev.Verdict(r1, True)]
    assert only(effects, ev.PromoteResult) == [ev.PromoteResult(r0)]


def test_only_the_check_copy_may_be_dropped_or_skipped() -> None:
    pod = checked_pod()
    r0, r1 = f"{pod.uid}-r0", f"{pod.uid}-r1"
    # The unit's own copy finding no car fails the pod, as any unit's would.
    state, _ = lc.admit(pod)
    state, effects = run(state, ev.Failed(r0, "NoEligibleCar", "none"))
    assert terminated(effects)["reason"] == "NoEligibleCar"
    # A trusted car taking the check copy first cancels nothing: the unit still runs.
    state, _ = lc.admit(pod)
    state, effects = run(state, ev.Accepted(r1, "veteran", trusted=True))
    assert not only(effects, ev.Cancel)


@pytest.mark.parametrize("check_first", [True, False])
def test_a_spot_check_with_no_second_car_is_dropped_not_failed(check_first: bool) -> None:
    pod = checked_pod()
    r0, r1 = f"{pod.uid}-r0", f"{pod.uid}-r1"
    state, _ = lc.admit(pod)
    state, _ = run(state, ev.Accepted(r0, "car-a"))
    no_car = ev.Failed(r1, "NoEligibleCar", "no eligible car in cell eu-0 took it")
    done = ev.Succeeded(r0, 2, outputs=A)
    first, second = (no_car, done) if check_first else (done, no_car)
    state, effects = run(state, first)
    assert not state.ended
    assert not only(effects, ev.PatchStatus)
    state, more = run(state, second)
    effects += more
    assert state.ended
    assert terminated(effects)["reason"] == "Completed"
    assert only(effects, ev.PromoteResult) == [ev.PromoteResult(r0)]
    assert not only(effects, ev.Verdict)  # nothing was checked
    assert only(effects, ev.KeptUnchecked) == [ev.KeptUnchecked(("car-a",))]
    assert any("spot check skipped" in line for e in only(effects, ev.Log) for line in e.lines)


def test_a_redundant_unit_still_fails_when_a_copy_finds_no_car() -> None:
    state = redundant_running()
    state, effects = run(state, ev.Failed("u2-r1", "NoEligibleCar", "none"))
    assert terminated(effects)["reason"] == "NoEligibleCar"


def test_wrong_results_at_redundancy_1_are_caught_at_about_the_spot_check_rate() -> None:
    # 40 units at fraction 0.5, the lying car always takes the first copy: each
    # checked unit is a strike against it, each unchecked one passes unseen.
    strikes = checked = 0
    for i in range(40):
        pod = lc.Pod(uid=f"unit-{i}", namespace="ns", name=f"p{i}", items=(0, 2), spot_check=0.5)
        state, _ = lc.admit(pod)
        if state.pod.copies == 1:
            state, effects = run(state, ev.Accepted(pod.uid, "liar"), ev.Succeeded(pod.uid, 2))
            assert not only(effects, ev.Verdict)
            # Remembered as unchecked: redone should the liar be quarantined.
            assert only(effects, ev.KeptUnchecked) == [ev.KeptUnchecked(("liar",))]
            continue
        checked += 1
        r0, r1, r2 = (f"{pod.uid}-r{j}" for j in range(3))
        state, _ = run(state, ev.Accepted(r0, "liar"), ev.Accepted(r1, "car-b"))
        state, _ = run(
            state,
            ev.Succeeded(r0, 2, outputs=LIAR),
            ev.Succeeded(r1, 1, outputs=part(A, state.pod)),
        )
        state, effects = run(state, ev.Accepted(r2, "car-c"), ev.Succeeded(r2, 2, outputs=A))
        strikes += sum(not v.agreed for v in only(effects, ev.Verdict))
        assert not only(effects, ev.KeptUnchecked)  # compared: checked
    assert strikes == checked
    assert 10 <= strikes <= 30  # Binomial(40, 0.5): mean 20, sd 3.2


def test_a_trusted_first_car_skips_the_spot_check_and_a_new_one_does_not() -> None:
    """Adaptive replication: a car with a long clean record is checked less."""
    pod = checked_pod()
    r0, r1 = f"{pod.uid}-r0", f"{pod.uid}-r1"
    state, _ = lc.admit(pod)
    state, effects = run(state, ev.Accepted(r0, "veteran", trusted=True))
    assert only(effects, ev.Cancel) == [ev.Cancel(r1, "SpotCheckSkipped")]
    state, effects = run(state, ev.Stopped(r1), ev.Succeeded(r0, 2, outputs=A))
    assert only(effects, ev.PromoteResult) == [ev.PromoteResult(r0)]
    assert not only(effects, ev.Verdict)  # nothing was compared: no verdict either way
    assert only(effects, ev.KeptUnchecked) == [ev.KeptUnchecked(("veteran",))]
    assert terminated(effects)["reason"] == "Completed"

    state, _ = lc.admit(pod)
    state, effects = run(state, ev.Accepted(r0, "newcomer", trusted=False))
    assert not only(effects, ev.Cancel)
    # Once the check copy has a car, a trusted car's acceptance no longer cancels it.
    state, _ = lc.admit(pod)
    state, _ = run(state, ev.Accepted(r1, "checker"))
    state, effects = run(state, ev.Accepted(r0, "veteran", trusted=True))
    assert not only(effects, ev.Cancel)

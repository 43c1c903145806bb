"""Changes after creation, without a cluster: suspend and parallelism reach the Job, and
the status says what the Job does (``observedGeneration`` only once it follows the spec)."""

from __future__ import annotations

import copy
import datetime
from typing import Any

import pytest

from parkfleet.api import InferenceJobSpec
from parkfleet.controller.inferencejob import job_status
from parkfleet.controller.jobs import batch_job, edit_events, job_spec_edits, ready_units

OBJ: dict[str, Any] = {
    "metadata": {"name": "digits", "namespace": "ml", "uid": "u-1", "generation": 4},
    "spec": {
        "pool": "demo",
        "model": {"name": "digits"},
        "input": {"path": "digits/in.npy", "items": 1000},
        "itemsPerUnit": 100,
        "parallelism": 4,
        "output": {"path": "results/d"},
    },
}


def spec_of(**changes: Any) -> InferenceJobSpec:
    obj = copy.deepcopy(OBJ)
    obj["spec"].update(changes)
    return InferenceJobSpec.from_k8s(obj)


def the_job(spec: InferenceJobSpec, **status: Any) -> dict[str, Any]:
    """The Job as the API server has it: what the operator created, with ``status``."""
    job = batch_job(spec, "u-1")
    job["metadata"]["resourceVersion"] = "7"
    job["status"] = status
    return job


def running(index: int) -> dict[str, Any]:
    return {
        "metadata": {"annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
        "status": {"phase": "Running"},
    }


def cond(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


def test_suspend_defaults_to_false_and_reaches_the_job() -> None:
    assert InferenceJobSpec.from_k8s(OBJ).suspend is False
    assert batch_job(spec_of(), "u-1")["spec"]["suspend"] is False
    assert batch_job(spec_of(suspend=True), "u-1")["spec"]["suspend"] is True


def test_parallelism_is_bounded_by_the_unit_count() -> None:
    assert batch_job(spec_of(parallelism=50), "u-1")["spec"]["parallelism"] == 10
    assert spec_of(parallelism=50).parallel_units == 10


def test_a_job_that_follows_the_spec_needs_no_edit() -> None:
    spec = spec_of()
    assert job_spec_edits(spec, the_job(spec)) == {}


@pytest.mark.parametrize(
    ("changes", "edits"),
    [
        ({"suspend": True}, {"suspend": True}),
        ({"parallelism": 2}, {"parallelism": 2}),
        ({"parallelism": 50}, {"parallelism": 10}),  # at most one pod per unit
        ({"suspend": True, "parallelism": 1}, {"suspend": True, "parallelism": 1}),
    ],
)
def test_an_edit_names_only_what_changes(changes: dict[str, Any], edits: dict[str, Any]) -> None:
    job = the_job(spec_of())
    assert job_spec_edits(spec_of(**changes), job) == edits


def test_an_ended_job_is_left_alone() -> None:
    done = the_job(spec_of(), conditions=[{"type": "Complete", "status": "True"}])
    assert job_spec_edits(spec_of(suspend=True), done) == {}


def test_observed_generation_waits_for_the_job_to_follow() -> None:
    job = the_job(spec_of(), completedIndexes="0-2")
    edited = spec_of(suspend=True)
    lagging = job_status(edited, 5, job, [], previous={"observedGeneration": 4})
    assert lagging["observedGeneration"] == 4
    assert all(c["observedGeneration"] == 4 for c in lagging["conditions"])
    assert cond(lagging, "Progressing")["status"] == "True"  # the Job still runs
    assert cond(lagging, "Suspended")["status"] == "False"
    applied = job_status(edited, 5, the_job(edited, completedIndexes="0-2"), [], None, lagging)
    assert applied["observedGeneration"] == 5


def test_a_suspended_job_says_so_and_what_is_still_stopping() -> None:
    spec = spec_of(suspend=True)
    job = the_job(
        spec,
        completedIndexes="0-2",
        startTime="2026-01-02T00:00:00Z",
        conditions=[{"type": "Suspended", "status": "True", "reason": "JobSuspended"}],
    )
    previous = {"observedGeneration": 3, "startTime": "2026-01-01T00:00:00Z"}
    st = job_status(spec, 4, job, [running(3)], previous=previous)
    suspended = cond(st, "Suspended")
    assert (suspended["status"], suspended["reason"]) == ("True", "Suspended")
    assert "3/10 units done stay done" in suspended["message"]
    progressing = cond(st, "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "Suspended")
    assert "1 stopping" in progressing["message"]
    assert cond(st, "Complete")["status"] == "False"
    assert st["units"]["succeeded"] == 3
    assert st["itemsPerSecond"] == 0.0  # nothing runs
    assert st["startTime"] == "2026-01-01T00:00:00Z"  # the first start, not the Job's
    assert st["observedGeneration"] == 4


def test_a_job_created_suspended_has_not_started() -> None:
    spec = spec_of(suspend=True)
    st = job_status(spec, 1, the_job(spec), [])
    assert cond(st, "Suspended")["status"] == "True"
    assert cond(st, "Progressing")["reason"] == "Suspended"
    assert "startTime" not in st
    # Before the Job exists (it is being created), the spec alone says it.
    assert cond(job_status(spec, 1, None, []), "Suspended")["status"] == "True"


def test_a_resumed_job_runs_again() -> None:
    spec = spec_of()
    job = the_job(
        spec,
        completedIndexes="0-2",
        startTime="2026-01-02T00:00:00Z",
        conditions=[{"type": "Suspended", "status": "False", "reason": "JobResumed"}],
    )
    a_minute_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)
    first = a_minute_ago.strftime("%Y-%m-%dT%H:%M:%SZ")
    st = job_status(spec, 6, job, [running(3)], previous={"startTime": first})
    assert (cond(st, "Suspended")["status"], cond(st, "Suspended")["reason"]) == (
        "False",
        "Resumed",
    )
    assert (cond(st, "Progressing")["status"], cond(st, "Progressing")["reason"]) == (
        "True",
        "UnitsRunning",
    )
    assert st["itemsPerSecond"] > 0
    assert st["startTime"] == first


def test_a_job_never_suspended_shows_suspended_false() -> None:
    spec = spec_of()
    st = job_status(spec, 1, the_job(spec), [])
    assert (cond(st, "Suspended")["status"], cond(st, "Suspended")["reason"]) == (
        "False",
        "NotSuspended",
    )
    done = the_job(spec, conditions=[{"type": "Complete", "status": "True"}])
    assert cond(job_status(spec, 1, done, []), "Suspended")["reason"] == "JobEnded"


def test_edits_are_told_as_events() -> None:
    before = the_job(spec_of(), completedIndexes="0-2")
    suspend = edit_events(spec_of(suspend=True), before, {"suspend": True})
    assert [r for r, _ in suspend] == ["Suspended"]
    assert "3/10 units done stay done" in suspend[0][1]
    resume = edit_events(spec_of(), the_job(spec_of(suspend=True)), {"suspend": False})
    assert resume == [("Resumed", "spec.suspend is false: Job digits runs its 10 units left")]
    wider = edit_events(spec_of(parallelism=8), before, {"parallelism": 8})
    assert wider == [("ParallelismChanged", "Job digits: 8 units at once (was 4)")]


# ---- ready units: the next unit waits at the gateway before the current one ends --------


def big(**changes: Any) -> InferenceJobSpec:
    """A job of 1,000 units, 500 at once."""
    return spec_of(**{"input": {"path": "in.npy", "items": 100_000}, "parallelism": 500, **changes})


def test_ready_units_only_while_every_car_the_job_may_use_is_taken() -> None:
    spec = big()
    # 500 cars for 500 units at once, its first wave running: one more unit per car
    # waits ready at the gateway.
    assert ready_units(spec, 500, running=500) == 500
    assert ready_units(spec, 250, running=250) == 250
    # Not before the first wave runs: its pods go first.
    assert ready_units(spec, 500, running=300) == 0
    assert ready_units(spec, 500, running=450) == 500
    # One car more than the units at once: a ready pod would find it free and run, the
    # job would run more units at once than it asked for.
    assert ready_units(spec, 501, running=500) == 0
    assert ready_units(spec, 501, current=500, running=500) == 0
    assert ready_units(spec, None, running=500) == 0  # the pool shows no count yet
    assert ready_units(spec, 0) == 0
    assert ready_units(big(suspend=True), 500, running=500) == 0
    # Never more pods than units.
    assert ready_units(big(parallelism=950), 950, running=950) == 50


def test_ready_units_ignore_a_car_or_two_coming_and_going() -> None:
    spec = big()
    assert ready_units(spec, 495, current=500) == 500  # within a tenth
    assert ready_units(spec, 400, current=500) == 400
    assert ready_units(spec, 500, current=400, running=10) == 500  # the job runs: no gate
    assert ready_units(spec, 3, current=0, running=3) == 3  # a small pool: every slot counts


def test_the_job_keeps_its_ready_units_beside_parallelism_and_says_so() -> None:
    spec = big()
    job = batch_job(spec, "u-1", ready_units(spec, 500, running=500))
    assert job["spec"]["parallelism"] == 1000
    assert job["metadata"]["annotations"]["parkfleet.io/ready-units"] == "500"
    job["metadata"]["resourceVersion"] = "7"
    job["status"] = {}
    # The Job follows the InferenceJob: nothing to edit, the generation is applied.
    assert job_spec_edits(spec, job) == {}
    assert job_status(spec, 4, job, [])["observedGeneration"] == 4
    # The pool grew past the units at once: the ready pods go, told as an Event.
    assert job_spec_edits(spec, job, 0) == {"parallelism": 500}
    assert [r for r, _ in edit_events(spec, job, {"parallelism": 500}, 0)] == ["ReadyUnits"]
    # parallelism edited: told as ParallelismChanged, units at once without the ready ones.
    narrower = big(parallelism=400)
    assert job_spec_edits(narrower, job, 400) == {"parallelism": 800}
    events = edit_events(narrower, job, {"parallelism": 800}, 400)
    assert events[0] == ("ParallelismChanged", "Job digits: 400 units at once (was 500)")
    assert events[1][0] == "ReadyUnits"

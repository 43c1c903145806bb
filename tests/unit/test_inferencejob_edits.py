"""Changes after creation, without a cluster: suspend and parallelism reach the Job, and
the status says what the Job does (``observedGeneration`` only once it follows the spec)."""

from __future__ import annotations

import copy
import datetime
from typing import Any

import pytest

from parkfleet.api import InferenceJobSpec
from parkfleet.controller.inferencejob import job_status
from parkfleet.controller.jobs import batch_job, edit_events, job_spec_edits

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

"""InferenceJob → an Indexed ``batch/v1`` Job, and the Job's pods → the job's status.

Why a Job rather than pods created by the operator: Kubernetes' Job controller already
keeps ``parallelism`` units running, retries each index up to ``backoffLimitPerIndex``,
applies the deadline and survives our restarts; a ``podFailurePolicy`` tells it which
failures are the unit's fault. A car leaving is not a failure at all (the gateway moves
the task and the pod stays Running); a cell with no car for the grace period ends the
pod with exit code 75, which the policy ignores (the unit is simply run again).

Ready units: while the pool has no more eligible cars than the job's parallelism, the Job
keeps one more pod per eligible car (:func:`parkfleet.contract.ready_slots`), from when
its first wave runs. They are bound to the cells' ready slots and wait at the gateway
(Pending), so a car that ends a unit starts the next at once instead of waiting for the
Job controller, the scheduler and the node agent (about 10 s). Only while every car can
be busy with the job anyway: the job never runs more than ``parallelism`` units at once.
The Job's ``parkfleet.io/ready-units`` annotation says how many it keeps.

Pure functions: no I/O.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from parkfleet.api import FLEET_TAINT_KEY, LABEL_POOL, InferenceJobSpec
from parkfleet.contract import (
    EXIT_RETRY_ELSEWHERE,
    FAIL_JOB_EXIT_CODES,
    LABEL_JOB_UID,
    TerminationSummary,
    check_model_uri,
    ready_slots,
)

__all__ = [
    "ANNOTATION_READY_UNITS",
    "LABEL_JOB",
    "JobTally",
    "batch_job",
    "edit_events",
    "job_condition",
    "job_ended",
    "job_ready_units",
    "job_spec_edits",
    "parse_indexes",
    "ready_units",
    "tally",
]

LABEL_JOB = "parkfleet.io/inference-job"
ANNOTATION_READY_UNITS = "parkfleet.io/ready-units"
CONTAINER = "infer"


def ready_units(
    job: InferenceJobSpec, pool_cars_eligible: int | None, current: int = 0, running: int = 0
) -> int:
    """The pods the Job keeps ready at the gateway beside its ``parallelism`` units.

    None while the pool has more eligible cars than the job's units at once: a ready pod
    would then find a free car and run, one unit more than ``parallelism``. Otherwise one
    per eligible car (:func:`parkfleet.contract.ready_slots`), at most the units not yet
    covered; but only once the job's first wave runs (``running``: nine in ten of the
    units it can run at once), so that its pods do not queue behind the ready ones. A
    small change of the car count keeps the current figure (no Job patch, no pod deleted
    and created again for a car or two that come and go).

    Args:
        job: The InferenceJob.
        pool_cars_eligible: The pool's eligible cars (``status.carsEligible``); None:
            not known, no ready units.
        current: The ready units the Job keeps now.
        running: The job's units running now.
    """
    units = job.parallel_units
    if pool_cars_eligible is None or pool_cars_eligible > units or job.suspend:
        return 0
    if current == 0 and running < 0.9 * min(units, pool_cars_eligible):
        return 0
    target = min(ready_slots(pool_cars_eligible), job.unit_count - units)
    if current <= job.unit_count - units and abs(target - current) < max(1, target // 10):
        return current
    return target


def job_ready_units(current: Mapping[str, Any]) -> int:
    """The ready units a Job says it keeps (its annotation; 0 when absent or unreadable)."""
    raw = ((current.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_READY_UNITS)
    try:
        return max(0, int(str(raw))) if raw is not None else 0
    except ValueError:
        return 0


def batch_job(job: InferenceJobSpec, owner_uid: str, ready: int = 0) -> dict[str, Any]:
    """The Indexed Job that runs ``job``'s units (one pod per unit), with ``ready`` more
    pods beside its ``parallelism`` (:func:`ready_units`).

    Raises:
        ValueError: The job's model URI is not one a pod may name (see
            :attr:`InferenceJobSpec.model_problem`).
    """
    if job.input_configmap:
        source = {"name": "PARKFLEET_INPUT_CONFIGMAP", "value": job.input_configmap}
    else:
        source = {"name": "PARKFLEET_INPUT", "value": job.input_path}
    env = [
        source,
        {"name": "PARKFLEET_UNIT_ITEMS", "value": str(job.items_per_unit)},
        {"name": "PARKFLEET_TOTAL_ITEMS", "value": str(job.items)},
        {"name": "PARKFLEET_BATCH_SIZE", "value": str(job.batch_size)},
        {"name": "PARKFLEET_OUTPUT", "value": job.output_path},
    ]
    if job.model_sha256:
        env.append({"name": "PARKFLEET_MODEL_SHA256", "value": job.model_sha256})
    else:
        env.append({"name": "PARKFLEET_MODEL", "value": job.model_name})
    # Only an https:// URI the gateway fetches and checks is ever passed on.
    uri = check_model_uri(job.model_uri)
    if uri:
        env.append({"name": "PARKFLEET_MODEL_URI", "value": uri})
    if job.object_store_secret:
        env.append({"name": "PARKFLEET_OBJECT_STORE_SECRET", "value": job.object_store_secret})
    if job.text_tokenizer:
        env.append({"name": "PARKFLEET_TOKENIZER", "value": job.text_tokenizer})
        env.append({"name": "PARKFLEET_TEXT_FIELD", "value": job.text_field})
        env.append({"name": "PARKFLEET_MAX_TOKENS", "value": str(job.max_tokens)})
        if job.text_tokenizer_sha256:
            env.append({"name": "PARKFLEET_TOKENIZER_SHA256", "value": job.text_tokenizer_sha256})
    if job.input_name:
        env.append({"name": "PARKFLEET_INPUT_NAME", "value": job.input_name})
    if job.output_names:
        env.append({"name": "PARKFLEET_OUTPUT_NAMES", "value": ",".join(job.output_names)})
    if job.gpu_memory_mib:
        env.append({"name": "PARKFLEET_GPU_MEMORY_MIB", "value": str(job.gpu_memory_mib)})
    if job.copies > 1:
        env.append({"name": "PARKFLEET_REDUNDANCY", "value": str(job.copies)})
        env.append({"name": "PARKFLEET_COMPARE", "value": job.compare})
    elif job.spot_check_fraction is not None:
        env.append({"name": "PARKFLEET_SPOT_CHECK_FRACTION", "value": str(job.spot_check_fraction)})
    labels = {LABEL_JOB: job.name}
    spec: dict[str, Any] = {
        "completions": job.unit_count,
        "parallelism": job.parallel_units + ready,
        "suspend": job.suspend,
        "completionMode": "Indexed",
        "backoffLimitPerIndex": job.retries,
        "maxFailedIndexes": 0,  # one unit out of retries fails the job
        "podFailurePolicy": {
            "rules": [
                # No car in the cell for the grace period: run the unit again, uncounted.
                {
                    "action": "Ignore",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "In",
                        "values": [EXIT_RETRY_ELSEWHERE],
                    },
                },
                # The pod or the model is wrong: no retry can help.
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "In",
                        "values": list(FAIL_JOB_EXIT_CODES),
                    },
                },
                # Evicted or preempted: not the unit's fault either.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
        "template": {
            # The job's uid goes into each unit file; only a file naming it counts done.
            "metadata": {"labels": {**labels, LABEL_JOB_UID: owner_uid}},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "nodeSelector": {LABEL_POOL: job.pool},
                "tolerations": [
                    {"key": FLEET_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}
                ],
                "containers": [
                    {
                        "name": CONTAINER,
                        "image": f"parkfleet.io/runtime/{job.runtime}:1",
                        "env": env,
                        "resources": {"limits": {"nvidia.com/gpu": "1"}},
                    }
                ],
            },
        },
    }
    if job.deadline_s is not None:
        spec["activeDeadlineSeconds"] = job.deadline_s
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job.name,
            "namespace": job.namespace,
            "labels": labels,
            "annotations": {ANNOTATION_READY_UNITS: str(ready)},
            "ownerReferences": [
                {
                    "apiVersion": "parkfleet.io/v1alpha1",
                    "kind": "InferenceJob",
                    "name": job.name,
                    "uid": owner_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


def job_condition(job: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    """The Job's condition ``kind`` when its status is True, else None."""
    for c in (job.get("status") or {}).get("conditions") or ():
        if c.get("type") == kind and c.get("status") == "True":
            return cast(Mapping[str, Any], c)
    return None


def job_ended(job: Mapping[str, Any]) -> bool:
    """Whether a Job has finished (its ``Complete`` or ``Failed`` condition is True)."""
    return job_condition(job, "Complete") is not None or job_condition(job, "Failed") is not None


def job_spec_edits(
    job: InferenceJobSpec, current: Mapping[str, Any], ready: int | None = None
) -> dict[str, Any]:
    """What of the Job's ``spec`` must change for it to follow ``job``: ``suspend`` and
    ``parallelism``, the two fields an InferenceJob lets change after creation (its CRD
    refuses any other edit). Empty when the Job follows it, or has ended (an edit then has
    nothing left to act on).

    Args:
        job: The InferenceJob as it is now.
        current: The Job as the API server has it.
        ready: The ready units it should keep beside them (:func:`ready_units`); None:
            those it keeps now (whether the Job follows the InferenceJob's own fields).
    """
    if job_ended(current):
        return {}
    spec: Mapping[str, Any] = current.get("spec") or {}
    if ready is None:
        ready = job_ready_units(current)
    want = {"suspend": job.suspend, "parallelism": job.parallel_units + ready}
    # The API server defaults both (suspend false, parallelism 1).
    have = {"suspend": bool(spec.get("suspend", False)), "parallelism": spec.get("parallelism", 1)}
    return {k: v for k, v in want.items() if have[k] != v}


def edit_events(
    job: InferenceJobSpec, before: Mapping[str, Any], edits: Mapping[str, Any], ready: int = 0
) -> list[tuple[str, str]]:
    """(reason, message) of the Events that tell what applying ``edits`` (from
    :func:`job_spec_edits`, with ``ready`` units ready) to the Job ``before`` did."""
    done = len(parse_indexes((before.get("status") or {}).get("completedIndexes")))
    total = job.unit_count
    out = []
    if edits.get("suspend") is True:
        out.append(
            (
                "Suspended",
                f"spec.suspend is true: Job {job.name}'s running units stop and none start; "
                f"{done}/{total} units done stay done",
            )
        )
    elif edits.get("suspend") is False:
        out.append(
            ("Resumed", f"spec.suspend is false: Job {job.name} runs its {total - done} units left")
        )
    if "parallelism" in edits:
        was_ready = job_ready_units(before)
        was = int((before.get("spec") or {}).get("parallelism") or 1) - was_ready
        if was != job.parallel_units:
            out.append(
                (
                    "ParallelismChanged",
                    f"Job {job.name}: {job.parallel_units} units at once (was {was})",
                )
            )
        if ready != was_ready:
            out.append(
                (
                    "ReadyUnits",
                    f"Job {job.name} keeps {ready} units ready at the gateway (was "
                    f"{was_ready}): "
                    + (
                        "the pool has no more eligible cars than parallelism, so a car "
                        "that ends a unit starts the next at once"
                        if ready
                        else "the pool has more eligible cars than parallelism, or the "
                        "job is suspended"
                    ),
                )
            )
    return out


def parse_indexes(text: str | None) -> set[int]:
    """Reads a Job's ``completedIndexes`` / ``failedIndexes`` (e.g. ``"0-3,7"``)."""
    out: set[int] = set()
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


@dataclass
class JobTally:
    """What a job's pods say, summed up.

    Attributes:
        cars: Distinct cars that ran items.
        moves: Times a task moved to another car.
        energy_wh: Energy the cars reported.
        energy_modelled: Whether any of it was modelled.
        disagreements: Units whose copies disagreed.
        running_units: Units with a Running pod.
        ready_units: Units whose pod is bound to a cell but waits there for a car
            (Pending at the gateway).
        failure: The message of a pod that failed the job (model or spec error).
        unreadable: Terminated pods whose summary could not be read (counted, not added).
    """

    cars: set[str] = field(default_factory=set)
    moves: int = 0
    energy_wh: float = 0.0
    energy_modelled: bool = False
    disagreements: int = 0
    running_units: set[int] = field(default_factory=set)
    ready_units: set[int] = field(default_factory=set)
    failure: str = ""
    unreadable: int = 0


def tally(pods: Iterable[Mapping[str, Any]]) -> JobTally:
    """Sums the machine-readable termination messages of a job's pods."""
    t = JobTally()
    for pod in pods:
        status = pod.get("status") or {}
        index = (
            (pod.get("metadata") or {})
            .get("annotations", {})
            .get("batch.kubernetes.io/job-completion-index")
        )
        if status.get("phase") == "Running" and index is not None:
            t.running_units.add(int(index))
        elif (
            status.get("phase", "Pending") == "Pending"
            and (pod.get("spec") or {}).get("nodeName")
            and index is not None
            and not (pod.get("metadata") or {}).get("deletionTimestamp")
        ):
            t.ready_units.add(int(index))
        for cs in status.get("containerStatuses") or ():
            term = (cs.get("state") or {}).get("terminated")
            if not term:
                continue
            code = term.get("exitCode")
            if code in FAIL_JOB_EXIT_CODES and not t.failure:
                t.failure = f"{term.get('reason')}: {term.get('message')}"
            if code != 0:
                continue  # a failed pod's message is its reason's detail, not a summary
            try:
                info = TerminationSummary.from_json(str(term.get("message") or ""))
            except ValueError:
                t.unreadable += 1
                continue
            t.cars.update(info.cars)
            t.moves += info.moves
            t.energy_wh += info.energy_wh
            t.energy_modelled = t.energy_modelled or info.energy_modelled
            t.disagreements += info.disagreements
    return t


def elapsed_s(start: str | None, end: str | None = None) -> float:
    """Seconds between two RFC 3339 times (``end`` defaults to now)."""
    if not start:
        return 0.0
    s = datetime.datetime.fromisoformat(start.replace("Z", "+00:00"))
    e = (
        datetime.datetime.fromisoformat(end.replace("Z", "+00:00"))
        if end
        else datetime.datetime.now(datetime.UTC)
    )
    return max((e - s).total_seconds(), 0.0)

"""InferenceJob handlers: create the Indexed Job, keep it following the two fields that may
change (``spec.suspend``, ``spec.parallelism``), and tell the truth about its progress.

Level-based: the timer compares the Job with the InferenceJob and recomputes the status
from the Job and its pods every few seconds, so an operator restart mid-job loses nothing
(the Job controller kept running the units meanwhile, and finished units' result files
stay where they are) and an edit made while the operator was down is applied when it is
back. ``status.observedGeneration`` names the generation whose suspend and parallelism
the Job has.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from typing import Any, cast

import aiohttp
import kopf
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from parkfleet.api import GROUP, VERSION, InferenceJobSpec
from parkfleet.contract import results_location, volume_location
from parkfleet.controller.conditions import merge_conditions
from parkfleet.controller.jobs import (
    ANNOTATION_READY_UNITS,
    batch_job,
    edit_events,
    elapsed_s,
    job_condition,
    job_ended,
    job_ready_units,
    job_spec_edits,
    parse_indexes,
    ready_units,
    tally,
)
from parkfleet.controller.state import OperatorState

__all__ = ["job_status", "register"]

log = logging.getLogger(__name__)

RESYNC_S = 2.0
_EDIT_TRIES = 3


def _cond(kind: str, status: bool, reason: str, message: str, gen: int) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": gen,
    }


def job_status(
    spec: InferenceJobSpec,
    generation: int,
    job: Mapping[str, Any] | None,
    pods: list[Mapping[str, Any]],
    problem: tuple[str, str] | None = None,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The status an InferenceJob should show, from its Job and the Job's pods.

    Args:
        spec: The job.
        generation: ``metadata.generation`` now.
        job: The batch Job (None before it exists).
        pods: The Job's pods.
        problem: (reason, message) that keeps the job from starting, if any.
        previous: The status the job shows now (its first start time and the generation
            last applied are kept from it).

    Returns:
        The ``status`` object (conditions without transition times). Its
        ``observedGeneration`` is ``generation`` once the Job follows the spec's suspend
        and parallelism, else the one it showed before.
    """
    previous = previous or {}
    applied = job is None or not job_spec_edits(spec, job)
    if not applied:
        generation = int(previous.get("observedGeneration") or 0)
    total_units = spec.unit_count
    js: Mapping[str, Any] = (job or {}).get("status") or {}
    done = parse_indexes(js.get("completedIndexes"))
    failed = parse_indexes(js.get("failedIndexes"))
    t = tally(pods)
    running = t.running_units - done - failed
    ready = t.ready_units - done - failed - running
    done_items = spec.unit_items(done)
    # The Job controller restarts its startTime at each resume; the job's is its first.
    start, end = previous.get("startTime") or js.get("startTime"), js.get("completionTime")
    complete = job_condition(job or {}, "Complete") is not None
    failed_cond = job_condition(job or {}, "Failed")
    suspended = bool(((job or {}).get("spec") or {}).get("suspend")) and not (
        complete or failed_cond
    )
    seconds = elapsed_s(start, end)
    # Averaged since the first start, pauses included; nothing runs while suspended.
    rate = round(done_items / seconds, 1) if seconds > 0 and not suspended else 0.0
    conditions = []
    if problem is not None:
        conditions.append(_cond("Progressing", False, problem[0], problem[1], generation))
        conditions.append(_cond("Complete", False, problem[0], problem[1], generation))
        conditions.append(_cond("Failed", False, problem[0], problem[1], generation))
    elif failed_cond is not None:
        reason = str(failed_cond.get("reason") or "Failed")
        message = str(failed_cond.get("message") or "")
        if t.failure:
            message = f"{message}: {t.failure}" if message else t.failure
        if reason == "PodFailurePolicy":
            reason = "UnitFailed"
        conditions.append(_cond("Progressing", False, reason, "the job ended", generation))
        conditions.append(_cond("Complete", False, reason, "the job failed", generation))
        conditions.append(_cond("Failed", True, reason, message, generation))
    elif complete:
        msg = f"all {total_units} units ({spec.items} items) done"
        conditions.append(_cond("Progressing", False, "Complete", msg, generation))
        conditions.append(_cond("Complete", True, "AllUnitsDone", msg, generation))
        conditions.append(_cond("Failed", False, "AllUnitsDone", msg, generation))
    elif suspended:
        msg = f"suspended: {len(done)}/{total_units} units done"
        if running:
            msg += f", {len(running)} stopping"
        conditions.append(_cond("Progressing", False, "Suspended", msg, generation))
        conditions.append(_cond("Complete", False, "Suspended", msg, generation))
        conditions.append(_cond("Failed", False, "Suspended", msg, generation))
    else:
        waiting = "UnitsRunning" if running else "WaitingForCars"
        msg = f"{len(done)}/{total_units} units done, {len(running)} running"
        conditions.append(_cond("Progressing", True, waiting, msg, generation))
        conditions.append(_cond("Complete", False, waiting, msg, generation))
        conditions.append(_cond("Failed", False, waiting, msg, generation))
    conditions.append(_suspended_condition(spec, job, suspended, len(done), generation))
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "job": spec.name if job else "",
        "units": {
            "total": total_units,
            "running": len(running),
            "ready": len(ready),
            "succeeded": len(done),
            "failed": len(failed),
        },
        "items": {
            "total": spec.items,
            "running": spec.unit_items(running),
            "succeeded": done_items,
            "failed": spec.unit_items(failed),
        },
        "progress": f"{100 * done_items // max(spec.items, 1)}%",
        "itemsPerSecond": rate,
        "carsUsed": len(t.cars),
        "carsMoved": t.moves,
        "energyWh": round(t.energy_wh, 4),
        "energyModelled": t.energy_modelled,
        "disagreements": t.disagreements,
        # Relative to the data volume: the job's namespace's area holds its output path.
        "resultLocation": volume_location(spec.namespace, spec.output_path),
        "conditions": conditions,
    }
    if start:
        status["startTime"] = start
    if end and complete:
        status["completionTime"] = end
    return status


def _suspended_condition(
    spec: InferenceJobSpec,
    job: Mapping[str, Any] | None,
    suspended: bool,
    done: int,
    gen: int,
) -> dict[str, Any]:
    """``Suspended``: whether the Job is paused (``spec.suspend``), as it is now."""
    total = spec.unit_count
    if job is None:
        if spec.suspend:
            return _cond(
                "Suspended",
                True,
                "Suspended",
                "spec.suspend is true: nothing starts until it is false",
                gen,
            )
        return _cond("Suspended", False, "NotSuspended", "spec.suspend is false", gen)
    if suspended:
        msg = (
            f"spec.suspend is true: no unit runs until it is false; {done}/{total} units "
            "done stay done"
        )
        return _cond("Suspended", True, "Suspended", msg, gen)
    if job_ended(job):
        return _cond("Suspended", False, "JobEnded", "the job has ended", gen)
    # The Job controller keeps its own Suspended condition (False) once a Job resumed.
    if any(c.get("type") == "Suspended" for c in (job.get("status") or {}).get("conditions") or ()):
        return _cond("Suspended", False, "Resumed", "spec.suspend is false: resumed", gen)
    return _cond("Suspended", False, "NotSuspended", "spec.suspend is false", gen)


async def reconcile(
    state: OperatorState, body: kopf.Body, status: Mapping[str, Any], patch: kopf.Patch
) -> None:
    """Creates the Job if missing, makes it follow spec.suspend and spec.parallelism,
    and recomputes the status."""
    spec = InferenceJobSpec.from_k8s(body)
    generation = int(body["metadata"].get("generation", 0))
    api = await state.api()
    problem: tuple[str, str] | None = None
    job: dict[str, Any] | None = None
    pool_cars: int | None = None
    try:
        pool = await client.CustomObjectsApi(api).get_cluster_custom_object(
            GROUP, VERSION, "fleetpools", spec.pool
        )
        pool_cars = _cars_eligible(pool)
    except ApiException as exc:
        if exc.status != 404:
            raise
        problem = ("UnknownPool", f"spec.pool: no FleetPool named {spec.pool!r}")
    if spec.model_problem is not None:  # stored before the CRD refused it: never passed on
        problem = ("UnsupportedModelSource", spec.model_problem)
    if problem is None:
        job = await _ensure_job(api, body, spec)
    pods: list[Mapping[str, Any]] = []
    if job is not None:
        pods = await _job_pods(api, spec.namespace, spec.name)
        running = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Running")
        ready = ready_units(spec, pool_cars, job_ready_units(job), running)
        job = await _follow_spec(api, body, spec, job, ready)
    new = job_status(spec, generation, job, pods, problem, status)
    new["results"] = results_location(
        spec.namespace, spec.output_path, str(body["metadata"]["uid"])
    )
    state.metrics.observe_job(spec.namespace, spec.name, spec.pool, new)
    new["conditions"] = merge_conditions(status.get("conditions"), new["conditions"])
    _post_transitions(body, status, new)
    if _comparable(status) != _comparable(new):
        for key, value in new.items():
            patch.status[key] = value


def _cars_eligible(pool: Any) -> int | None:
    """A FleetPool's ``status.carsEligible`` (None when it shows none yet)."""
    value = ((pool or {}).get("status") or {}).get("carsEligible")
    return value if isinstance(value, int) and value >= 0 else None


async def _ensure_job(
    api: client.ApiClient, body: kopf.Body, spec: InferenceJobSpec
) -> dict[str, Any] | None:
    """The job's Indexed Job, created when missing (None: created meanwhile by another
    reconcile; the next one reads it). It starts with no ready units: those come once
    its first wave runs (:func:`ready_units`)."""
    batch = client.BatchV1Api(api)
    try:
        return cast(
            dict[str, Any],
            api.sanitize_for_serialization(
                await batch.read_namespaced_job(spec.name, spec.namespace)
            ),
        )
    except ApiException as exc:
        if exc.status != 404:
            raise
    try:
        created = await batch.create_namespaced_job(
            spec.namespace, cast(Any, batch_job(spec, str(body["metadata"]["uid"])))
        )
    except ApiException as exc:
        if exc.status != 409:
            raise
        return None
    message = (
        f"Indexed Job {spec.name}: {spec.unit_count} units of up to "
        f"{spec.items_per_unit} items, {spec.parallel_units} at once"
    )
    if spec.suspend:
        message += "; suspended (spec.suspend): nothing starts until it is false"
    _tell(body, "JobCreated", message)
    return cast(dict[str, Any], api.sanitize_for_serialization(created))


async def _follow_spec(
    api: client.ApiClient,
    body: kopf.Body,
    spec: InferenceJobSpec,
    job: dict[str, Any],
    ready: int,
) -> dict[str, Any]:
    """The Job after applying the InferenceJob's suspend and parallelism to it, with
    ``ready`` units ready beside them (its ``parkfleet.io/ready-units`` annotation).

    The patch names the resourceVersion it was computed from, so of two reconciles racing
    (an edit's handler and the timer) only one applies it and posts its Events; the other
    reads the Job again. After a few conflicts the Job is returned as read, and the status
    says the edit is not applied yet (``observedGeneration``); the next tick tries again.
    """
    batch = client.BatchV1Api(api)
    for _ in range(_EDIT_TRIES):
        edits = job_spec_edits(spec, job, ready)
        if not edits:
            return job
        meta: dict[str, Any] = {"resourceVersion": job["metadata"]["resourceVersion"]}
        if "parallelism" in edits:
            meta["annotations"] = {ANNOTATION_READY_UNITS: str(ready)}
        change = {"metadata": meta, "spec": edits}
        try:
            patched = await batch.patch_namespaced_job(spec.name, spec.namespace, change)
        except ApiException as exc:
            if exc.status != 409:
                raise
            job = cast(
                dict[str, Any],
                api.sanitize_for_serialization(
                    await batch.read_namespaced_job(spec.name, spec.namespace)
                ),
            )
            continue
        for reason, message in edit_events(spec, job, edits, ready):
            _tell(body, reason, message)
        return cast(dict[str, Any], api.sanitize_for_serialization(patched))
    return job


async def _job_pods(api: client.ApiClient, namespace: str, job: str) -> list[Mapping[str, Any]]:
    """The Job's pods as the API sent them (plain dicts).

    Not as ``V1Pod`` models turned back into dicts: for a job of a thousand pods that
    cost the operator a quarter of a core, every tick, on the machine that runs the cars.
    """
    resp = cast(
        aiohttp.ClientResponse,
        await client.CoreV1Api(api).list_namespaced_pod(
            namespace,
            label_selector=f"batch.kubernetes.io/job-name={job}",
            _preload_content=False,
        ),
    )
    try:
        body = await resp.read()
        if not 200 <= resp.status <= 299:
            raise ApiException(status=resp.status, reason=resp.reason)
    finally:
        resp.release()
    return cast(list[Mapping[str, Any]], json.loads(body).get("items") or [])


def _comparable(status: Mapping[str, Any]) -> dict[str, Any]:
    # itemsPerSecond drifts every tick while nothing else changes; it rides along
    # with real changes instead of costing a write of its own.
    return {k: v for k, v in status.items() if k != "itemsPerSecond"}


def _tell(body: kopf.Body, reason: str, message: str) -> None:
    """Posts a Normal Event on the job. Not ``kopf.info``: the operator's posting level
    (WARNING, to keep Kopf's own handler logs out of Events) drops those."""
    kopf.event(body, type="Normal", reason=reason, message=message)


def _post_transitions(body: kopf.Body, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    before = {c.get("type"): c.get("status") for c in old.get("conditions") or ()}
    for c in new["conditions"]:
        if c["status"] == "True" and before.get(c["type"]) != "True":
            if c["type"] == "Complete":
                _tell(body, "Complete", c["message"])
            elif c["type"] == "Failed":
                kopf.warn(body, reason=c["reason"], message=c["message"])
    if new["conditions"][0]["reason"] == "UnknownPool" and before.get("Progressing") != "False":
        kopf.warn(body, reason="UnknownPool", message=new["conditions"][0]["message"])


def _terminal(status: Mapping[str, Any], generation: int) -> bool:
    for c in status.get("conditions") or ():
        if c.get("type") in ("Complete", "Failed") and c.get("status") == "True":
            return bool(status.get("observedGeneration") == generation) and bool(
                status.get("completionTime") or c.get("type") == "Failed"
            )
    return False


async def on_change(
    body: kopf.Body, status: kopf.Status, patch: kopf.Patch, *, state: OperatorState, **_: Any
) -> None:
    """A job appeared or changed: create its Job now rather than at the next tick."""
    await reconcile(state, body, status, patch)


async def resync(
    body: kopf.Body, status: kopf.Status, patch: kopf.Patch, *, state: OperatorState, **_: Any
) -> None:
    """The level-based loop: status follows the Job and its pods."""
    if _terminal(status, int(body["metadata"].get("generation", 0))):
        return
    await reconcile(state, body, status, patch)


async def on_delete(name: str, namespace: str | None, *, state: OperatorState, **_: Any) -> None:
    """Drops the job's metric series (optional: no finalizer of its own)."""
    state.metrics.forget_job(namespace or "default", name)


def register(registry: kopf.OperatorRegistry, state: OperatorState) -> None:
    """Adds the InferenceJob handlers to ``registry``, each bound to ``state``."""
    # Ids come from the functions' names (a partial's too): Kopf's annotations keep matching.
    changed = functools.partial(on_change, state=state)
    kopf.on.update(GROUP, VERSION, "inferencejobs", field="spec", registry=registry)(changed)
    kopf.on.create(GROUP, VERSION, "inferencejobs", registry=registry)(changed)
    kopf.on.resume(GROUP, VERSION, "inferencejobs", registry=registry)(changed)
    kopf.timer(
        GROUP, VERSION, "inferencejobs", interval=RESYNC_S, initial_delay=1.0, registry=registry
    )(functools.partial(resync, state=state))
    kopf.on.delete(GROUP, VERSION, "inferencejobs", optional=True, registry=registry)(
        functools.partial(on_delete, state=state)
    )

"""The lifecycle of a pod on a cell, as a pure core: ``step(state, event, now)`` gives the
new state and the effects to carry out.

A pod bound to a cell is a task (or, at redundancy ≥ 2, several copies of one on
distinct cars). Its state says what the cluster has been told; events say what
happened to its tasks; effects are plain data — patch the pod's status, post an Event,
submit, cancel or release a task, promote a result, write a log line — which the shell
(``pods.py``) carries out in order. The redundancy vote, the pod's status and its exit
code are decided here. No I/O, no asyncio, no Kubernetes client: every transition is
unit-tested without a cluster, a socket or an event loop.

The story a pod tells: ``Pending`` with ``parkfleet.io/CarAssigned=False`` while it
waits for a car, ``Running`` once a car has it, a ``Moved`` Event when its car leaves
and another resumes it, ``Succeeded``/``Failed`` with an exit code, a reason and the
termination summary at the end. A deletion cancels its tasks and removes the object.
"""

from __future__ import annotations

import datetime
import hashlib
import math
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from parkfleet.contract import REASON_POD_DELETED, TerminationSummary, exit_code
from parkfleet.nodeagent import podstatus
from parkfleet.nodeagent.compare import agree, majority
from parkfleet.nodeagent.podevents import (
    Accepted,
    Cancel,
    CloseLog,
    CountEnded,
    DeletePod,
    DeletionRequested,
    Effect,
    Event,
    Failed,
    Gone,
    KeptUnchecked,
    Log,
    Logged,
    Lost,
    Moved,
    ObserveStart,
    Outputs,
    PatchStatus,
    PendingDue,
    PostEvent,
    PromoteResult,
    Release,
    SchedulePendingCheck,
    Submit,
    SubmitFailed,
    Succeeded,
    Verdict,
)

__all__ = [
    "PENDING_AFTER_S",
    "SPOT_CHECK_SHARE",
    "Copy",
    "Pod",
    "PodState",
    "Step",
    "admit",
    "already_done",
    "check_slice",
    "copy_ids",
    "deleted",
    "refuse",
    "spot_checked",
    "step",
]

PENDING_AFTER_S = 1.0  # a pod no car took within this shows WaitingForCar
# A spot check re-runs this share of the unit's items: it costs a tenth of a unit, so the
# checks add no wave of their own to a job, and a car lying on every item is caught as
# surely; one lying on a few items only is caught in proportion.
SPOT_CHECK_SHARE = 0.1
REASON_DISAGREE = "ResultsDisagree"
REASON_SUBMIT = "TaskRefused"
# A spot check's second copy that finds no car of another owner is dropped, not failed.
REASON_NO_CAR = "NoEligibleCar"


# ---- the state -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pod:
    """What a pod on a cell is, fixed when it is admitted.

    Attributes:
        uid: The pod's uid (its task's id, or the copies' prefix).
        namespace: Its namespace.
        name: Its name.
        cell: The cell it is bound to.
        pool: The cell's pool (a metric label).
        container: Its one container's name.
        image: That container's image.
        created: Its ``creationTimestamp`` ("" when unknown).
        host_ip: The gateway's address, shown as ``status.hostIP``.
        items: What its task covers, ``[start, end)``.
        copies: Distinct cars each item runs on (2+: results are compared).
        compare: How copies are compared: (mode, output, tolerance).
        spot_check: The fraction of single-copy units also run on a second car (of
            another owner) and compared (see :func:`spot_checked`).
        checked: This single-copy unit is spot-checked: :func:`admit` made it 2 copies,
            the second (the check) over ``check_items`` only.
        check_items: The slice of ``items`` the check copy runs (see :func:`check_slice`).
    """

    uid: str
    namespace: str
    name: str
    cell: str = ""
    pool: str = ""
    container: str = "main"
    image: str = ""
    created: str = ""
    host_ip: str = ""
    items: tuple[int, int] = (0, 0)
    copies: int = 1
    compare: tuple[str, str, float] = ("argmax", "", 0.0)
    spot_check: float = 0.0
    checked: bool = False
    check_items: tuple[int, int] = (0, 0)

    @property
    def key(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"

    @property
    def ref(self) -> dict[str, str]:
        """The pod as an Event's ``involvedObject``."""
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": self.namespace,
            "name": self.name,
            "uid": self.uid,
        }


CopyOutcome = Literal["", "succeeded", "failed", "cancelled"]


@dataclass(frozen=True, slots=True)
class Copy:
    """One run of the pod's items on one car.

    Attributes:
        task_id: Its task on the gateway.
        car: The car that took it last ("" before any).
        outcome: How it ended ("" while it runs).
        items: Items whose results it delivered (when it succeeded).
        energy_wh: Energy it used.
        energy_modelled: Whether that energy was modelled.
        outputs: Its results, kept to be compared (copies ≥ 2 only).
    """

    task_id: str
    car: str = ""
    outcome: CopyOutcome = ""
    items: int = 0
    energy_wh: float = 0.0
    energy_modelled: bool = False
    outputs: Outputs | None = field(default=None, compare=False, repr=False)


Phase = Literal["Waiting", "Running", "Ended"]


@dataclass(frozen=True, slots=True)
class PodState:
    """What the pod has told the cluster, and its copies.

    Attributes:
        pod: The pod.
        copies: Its task copies, in submission order.
        phase: Waiting (no car yet), Running, Ended (status final or pod deleted).
        started_at: When a car first took it (RFC 3339).
        cars: Cars that took it, in order, each once.
        moves: Times a copy moved to another car.
        disagreements: Times its copies' results disagreed.
    """

    pod: Pod
    copies: tuple[Copy, ...]
    phase: Phase = "Waiting"
    started_at: str = ""
    cars: tuple[str, ...] = ()
    moves: int = 0
    disagreements: int = 0

    @property
    def ended(self) -> bool:
        """Whether the pod's outcome is decided (or it is being deleted)."""
        return self.phase == "Ended"

    def copy(self, task_id: str) -> Copy | None:
        """The copy running as ``task_id``."""
        return next((c for c in self.copies if c.task_id == task_id), None)

    @property
    def energy_wh(self) -> float:
        """Energy all copies used."""
        return sum(c.energy_wh for c in self.copies)

    @property
    def energy_modelled(self) -> bool:
        """Whether any copy's energy was modelled."""
        return any(c.energy_modelled for c in self.copies)


Step = tuple[PodState, list[Effect]]


# ---- starting -------------------------------------------------------------------------


def copy_ids(pod: Pod) -> list[str]:
    """The task ids of the pod's copies: its uid alone, or ``<uid>-r<i>``."""
    return [pod.uid] if pod.copies == 1 else [f"{pod.uid}-r{i}" for i in range(pod.copies)]


def _submit_all(state: PodState) -> list[Effect]:
    group = state.pod.uid if state.pod.copies > 1 else ""
    return [
        Submit(c.task_id, group, _slice_of(state.pod, c.task_id))
        for c in state.copies
        if not c.outcome
    ]


def _check_id(pod: Pod) -> str:
    """The task id of a spot-checked unit's check copy ("" when the unit has none)."""
    return f"{pod.uid}-r1" if pod.checked else ""


def _slice_of(pod: Pod, task_id: str) -> tuple[int, int] | None:
    """The items a copy runs when it is not all of the pod's: the check copy's slice."""
    return pod.check_items if task_id == _check_id(pod) else None


def check_slice(
    uid: str, items: tuple[int, int], share: float = SPOT_CHECK_SHARE
) -> tuple[int, int]:
    """The slice of a spot-checked unit its check copy runs: ``share`` of its items (at
    least one), at a position drawn from the pod's uid (a car cannot tell which)."""
    start, end = items
    n = max(end - start, 0)
    length = min(n, max(1, math.ceil(n * share)))
    digest = hashlib.sha256(f"slice:{uid}".encode()).digest()
    offset = int.from_bytes(digest[:8], "big") % (n - length + 1) if n else 0
    return start + offset, start + offset + length


def spot_checked(uid: str, fraction: float) -> bool:
    """Whether the single-copy unit of pod ``uid`` is spot-checked: a hash of its uid
    below ``fraction``, so the same pod decides the same after a restart, and a car
    cannot tell a checked unit from another."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(uid.encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def admit(pod: Pod, *, running_since: str = "") -> Step:
    """A new pod: its copies are submitted. A spot-checked single-copy unit runs as two
    copies on cars of distinct owners, voted on as any redundant unit.

    Args:
        running_since: The pod's ``startTime`` when it is already ``Running`` (the
            gateway restarted under it): it stays Running while its task starts again.
    """
    if pod.copies == 1 and spot_checked(pod.uid, pod.spot_check):
        pod = replace(pod, copies=2, checked=True, check_items=check_slice(pod.uid, pod.items))
    state = PodState(pod=pod, copies=tuple(Copy(t) for t in copy_ids(pod)))
    if running_since:
        state = replace(state, phase="Running", started_at=running_since)
        return state, [
            Log(("parkfleet: gateway restarted; running the task again",)),
            *_submit_all(state),
        ]
    start, end = pod.items
    copies = f" ({pod.copies} copies)" if pod.copies > 1 else ""
    if pod.checked:
        a, b = pod.check_items
        copies = f" (spot check: items {a}..{b - 1} also on a car of another owner)"
    line = f"parkfleet: task {pod.uid} for items {start}..{end - 1} queued on cell {pod.cell}"
    # Pending is written only if no car took the pod meanwhile: most pods go straight
    # to Running, one status write (and its fan-out to every watcher) fewer each.
    return state, [
        Log((line + copies,)),
        *_submit_all(state),
        SchedulePendingCheck(PENDING_AFTER_S),
    ]


def already_done(pod: Pod, items: int, result_name: str, now: datetime.datetime) -> Step:
    """A unit whose result exists already: it succeeds at once, and nothing runs."""
    state = PodState(pod=pod, copies=(), phase="Ended")
    summary = TerminationSummary.of(items, (), 0, 0.0, False, 0, cached=True)
    ts = podstatus.timestamp(now)
    status = podstatus.terminated_status(
        pod.container, pod.image, 0, "Completed", summary.to_json(), ts
    )
    return state, [
        Log((f"parkfleet: unit already done ({result_name})",)),
        CloseLog(),
        PatchStatus(status, final=True),
    ]


def refuse(pod: Pod, reason: str, message: str, now: datetime.datetime) -> Step:
    """A pod no car can run (its spec, its input or its model): it fails at once."""
    ts = podstatus.timestamp(now)
    status = podstatus.terminated_status(
        pod.container,
        pod.image,
        exit_code(reason),
        reason,
        message,
        ts,
        conditions=[podstatus.condition(podstatus.CAR_ASSIGNED, "False", reason, message, ts)],
    )
    return PodState(pod=pod, copies=(), phase="Ended"), [
        PatchStatus(status, final=True),
        PostEvent(reason, message, warning=True),
        CountEnded("Failed", reason, 0.0),
        Log((f"parkfleet: {reason}: {message}",)),
        CloseLog(),
    ]


def deleted(pod: Pod, started_at: str, now: datetime.datetime) -> Step:
    """A pod we ran no task for (from before a restart) whose deletion is requested:
    it ends, as any deleted pod, then goes."""
    return _deletion_requested(PodState(pod=pod, copies=(), started_at=started_at), now)


# ---- the transitions ------------------------------------------------------------------


def step(state: PodState, event: Event, now: datetime.datetime) -> Step:
    """The pod's new state after ``event``, and what to do about it."""
    if isinstance(event, Gone):
        return _gone(state)
    if isinstance(event, DeletionRequested):
        return _deletion_requested(state, now)
    if state.ended:
        return state, []  # late news of copies already cancelled or decided
    if isinstance(event, PendingDue):
        if state.phase != "Waiting":
            return state, []  # a car took it already: Pending would only flicker
        return state, [PatchStatus(podstatus.pending_status(podstatus.timestamp(now)))]
    if isinstance(event, SubmitFailed):
        return _fail(state, REASON_SUBMIT, f"the gateway refused the task: {event.message}", now)
    copy = state.copy(event.task_id)
    if copy is None or copy.outcome:
        return state, []
    tag = f"[copy {state.copies.index(copy)}] " if len(state.copies) > 1 else ""
    if isinstance(event, Accepted):
        return _accepted(state, copy, event, tag, now)
    if isinstance(event, Moved):
        msg = (
            f"moved from car {event.from_car} to car {event.car}, "
            f"resuming at item {event.checkpoint}"
        )
        return replace(state, moves=state.moves + 1), [
            Log((f"parkfleet: {tag}{msg}",)),
            PostEvent("Moved", msg),
        ]
    if isinstance(event, Lost):
        msg = (
            f"car {event.car} left ({event.reason}); the task waits for another car "
            f"of cell {state.pod.cell} from item {event.checkpoint}"
        )
        return state, [Log((f"parkfleet: {tag}{msg}",)), PostEvent("CarLost", msg, warning=True)]
    if isinstance(event, Logged):
        return state, [Log(tuple(f"{tag}{line}" for line in event.lines))]
    if isinstance(event, Succeeded):
        done = replace(
            copy,
            outcome="succeeded",
            items=event.items,
            energy_wh=event.energy_wh,
            energy_modelled=event.energy_modelled,
            outputs=event.outputs,
        )
        state = _with_copy(state, done)
        if any(not c.outcome for c in state.copies):
            return state, []
        return _decide(state, now)
    if isinstance(event, Failed) and _check_dropped(state, event):
        # No car of another owner for the spot check: the unit goes unchecked.
        state = _with_copy(state, replace(copy, outcome="cancelled"))
        effects: list[Effect] = [
            Log((f"parkfleet: {tag}spot check skipped: {event.message}",)),
        ]
        if any(not c.outcome for c in state.copies):
            return state, effects
        decided, more = _decide(state, now)
        return decided, effects + more
    if isinstance(event, Failed):
        state = _with_copy(
            state,
            replace(
                copy,
                outcome="failed",
                energy_wh=event.energy_wh,
                energy_modelled=event.energy_modelled,
            ),
        )
        reason = event.reason or "TaskFailed"
        return _fail(state, reason, event.message, now, cancel=f"copy failed: {reason}")
    # Stopped: a copy we cancelled; its energy still counts.
    stopped = replace(
        copy, outcome="cancelled", energy_wh=event.energy_wh, energy_modelled=event.energy_modelled
    )
    return _with_copy(state, stopped), []


def _check_dropped(state: PodState, event: Failed) -> bool:
    """Whether a failed copy is a spot check to drop: it found no car, and the other
    copy has not failed (it may still run)."""
    if event.task_id != _check_id(state.pod) or event.reason != REASON_NO_CAR:
        return False  # only the check copy may be dropped: the other is the unit
    others = [c for c in state.copies if c.task_id != event.task_id]
    return all(c.outcome != "failed" for c in others) and any(
        c.outcome in ("", "succeeded") for c in others
    )


def _with_copy(state: PodState, copy: Copy) -> PodState:
    return replace(
        state, copies=tuple(copy if c.task_id == copy.task_id else c for c in state.copies)
    )


def _accepted(
    state: PodState, copy: Copy, event: Accepted, tag: str, now: datetime.datetime
) -> Step:
    cars = state.cars if event.car in state.cars or not event.car else (*state.cars, event.car)
    first = state.phase != "Running"
    state = replace(_with_copy(state, replace(copy, car=event.car)), cars=cars)
    skipped: list[Effect] = []
    if first and event.trusted and state.pod.checked and copy.task_id != _check_id(state.pod):
        state, skipped = _skip_check(state, copy.task_id, event.car)
    if not first:
        return state, []
    ts = podstatus.timestamp(now)
    state = replace(state, phase="Running", started_at=ts)
    pod = state.pod
    effects: list[Effect] = [
        Log((f"parkfleet: {tag}running on car {event.car}",)),
        PostEvent("Started", f"running on car {event.car}"),
        PatchStatus(
            podstatus.running_status(pod.container, pod.image, event.car, ts, pod.host_ip, ts)
        ),
    ]
    if pod.created:
        created = datetime.datetime.fromisoformat(pod.created.replace("Z", "+00:00"))
        effects.append(ObserveStart(max((now - created).total_seconds(), 0.0)))
    return state, skipped + effects


def _skip_check(state: PodState, kept: str, car: str) -> Step:
    """Adaptive replication: a spot-checked unit whose first car has a long clean record
    needs no second car; its check copy is cancelled if no car has taken it yet."""
    others = [c for c in state.copies if c.task_id != kept and not c.outcome and not c.car]
    if not others:
        return state, []
    for c in others:
        state = _with_copy(state, replace(c, outcome="cancelled"))
    msg = f"spot check skipped: car {car} has a long clean record"
    return state, [
        Log((f"parkfleet: {msg}",)),
        *(Cancel(c.task_id, "SpotCheckSkipped") for c in others),
    ]


def _decide(state: PodState, now: datetime.datetime) -> Step:
    """Every copy succeeded: the pod succeeds, or its copies vote."""
    if len(state.copies) == 1:
        state, end = _succeed(state, state.copies[0], now)
        return state, [KeptUnchecked(state.cars), *end]
    # Copies dropped (a spot check that found no car) have no say.
    voters = [c for c in state.copies if c.outcome == "succeeded"]
    if len(voters) == 1:
        # Its spot check was dropped or skipped: the one copy is the result, unchecked.
        state, end = _succeed(state, voters[0], now)
        return state, [PromoteResult(voters[0].task_id), KeptUnchecked(state.cars), *end]
    mode, output, tolerance = state.pod.compare
    results = [c.outputs or {} for c in voters]
    name = output or next(iter(results[0]), "")
    # Compared over the items every voter ran: the check copy's slice when it votes.
    compared = state.pod.items
    if any(c.task_id == _check_id(state.pod) for c in voters):
        compared = state.pod.check_items
    arrays = [
        _over(state, c, r[name], compared)
        for c, r in zip(voters, results, strict=True)
        if name in r
    ]
    winner = majority(arrays, mode, tolerance) if len(arrays) == len(results) else None
    if winner is not None and voters[winner].task_id == _check_id(state.pod):
        # The check copy ran a slice only: keep a whole copy that agrees with it.
        winner = next(
            (
                i
                for i, (c, a) in enumerate(zip(voters, arrays, strict=True))
                if c.task_id != _check_id(state.pod) and agree(a, arrays[winner], mode, tolerance)
            ),
            None,
        )
    cars = ", ".join(c.car for c in voters)
    if winner is None and len(state.copies) < state.pod.copies + 2:
        msg = f"results of cars {cars} disagree on {name!r} ({mode}); another car decides"
        # It runs the whole unit: should the first copy lose, its result is the unit's.
        extra = Copy(f"{state.pod.uid}-r{len(state.copies)}")
        state = replace(state, copies=(*state.copies, extra), disagreements=state.disagreements + 1)
        return state, [
            Log((f"parkfleet: {msg}",)),
            PostEvent(REASON_DISAGREE, msg, warning=True),
            Submit(extra.task_id, state.pod.uid),
        ]
    if winner is None:
        return _fail(state, REASON_DISAGREE, f"no majority among {len(voters)} copies", now)
    chosen = voters[winner]
    agreed = [agree(a, arrays[winner], mode, tolerance) for a in arrays]
    odd = [c.car for c, ok in zip(voters, agreed, strict=True) if not ok]
    # Every copy's cars hear the vote (their reputation), before the copies are released.
    effects: list[Effect] = [Verdict(c.task_id, ok) for c, ok in zip(voters, agreed, strict=True)]
    if odd:
        msg = (
            f"kept the result of car {chosen.car}; car(s) {', '.join(odd)} returned "
            f"results that disagree on {name!r}"
        )
        effects += [Log((f"parkfleet: {msg}",)), PostEvent("DisagreementResolved", msg, True)]
    effects.append(PromoteResult(chosen.task_id))
    state, end = _succeed(state, chosen, now)
    return state, effects + end


def _over(
    state: PodState, copy: Copy, array: npt.NDArray[np.generic], items: tuple[int, int]
) -> npt.NDArray[np.generic]:
    """A copy's results for ``items`` (its own range is the slice or the pod's items)."""
    own = _slice_of(state.pod, copy.task_id) or state.pod.items
    if own == items:
        return array
    return array[items[0] - own[0] : items[1] - own[0]]


def _release_all(state: PodState) -> list[Effect]:
    return [Release(c.task_id) for c in state.copies]


def _cancel_live(state: PodState, reason: str) -> list[Effect]:
    return [Cancel(c.task_id, reason) for c in state.copies if not c.outcome]


def _succeed(state: PodState, chosen: Copy, now: datetime.datetime) -> Step:
    state = replace(state, phase="Ended")
    pod, energy = state.pod, state.energy_wh
    human = f"{chosen.items} items on {len(state.cars) or 1} car(s), {energy:.3g} Wh"
    if state.energy_modelled:
        human += " (modelled)"
    summary = TerminationSummary.of(
        chosen.items, state.cars, state.moves, energy, state.energy_modelled, state.disagreements
    )
    ts = podstatus.timestamp(now)
    status = podstatus.terminated_status(
        pod.container, pod.image, 0, "Completed", summary.to_json(), ts, state.started_at
    )
    return state, [
        *_release_all(state),
        Log((f"parkfleet: done: {human}",)),
        CloseLog(),
        PatchStatus(status, final=True),
        CountEnded("Succeeded", "Completed", energy),
        PostEvent("Completed", human),
    ]


def _fail(
    state: PodState,
    reason: str,
    message: str,
    now: datetime.datetime,
    *,
    cancel: str = "",
    event: bool = True,
) -> Step:
    effects: list[Effect] = _cancel_live(state, cancel or reason)
    state = replace(state, phase="Ended")
    pod = state.pod
    ts = podstatus.timestamp(now)
    status = podstatus.terminated_status(
        pod.container, pod.image, exit_code(reason), reason, message, ts, state.started_at
    )
    return state, [
        *effects,
        *_release_all(state),
        Log((f"parkfleet: {reason}: {message}",)),
        CloseLog(),
        PatchStatus(status, final=True),
        CountEnded("Failed", reason, state.energy_wh),
        *([PostEvent(reason, message, warning=True)] if event else []),
    ]


def _deletion_requested(state: PodState, now: datetime.datetime) -> Step:
    """As the kubelet does: stop the containers (cancel the tasks), end the pod, then
    remove the object. The terminal phase comes first: the Job controller lifts its
    finalizer (and replaces the pod) only once a pod is terminal, so a pod deleted while
    Running would stay Terminating."""
    if state.ended:
        return state, [DeletePod()]
    state, effects = _fail(
        state,
        REASON_POD_DELETED,
        "the pod was deleted; its task was cancelled",
        now,
        event=False,
    )
    return state, [*effects, DeletePod()]


def _gone(state: PodState) -> Step:
    effects: list[Effect] = []
    if not state.ended:
        effects += _cancel_live(state, "PodDeleted")
        effects += _release_all(state)
    return replace(state, phase="Ended"), effects

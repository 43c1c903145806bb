"""Tasks: submit -> offered -> running (checkpoints) -> succeeded / failed.

A car that is lost, refuses, or stops for its owner's policy gives the task back; the
task resumes on another car of the same cell with ``attempt + 1`` from the first
item whose result has not reached the sink (at or after its last checkpoint), so the
sink sees every item exactly once. A task no car can take within its grace period
fails with ``NoEligibleCar``; a task that waits behind busy cars able to run it (a ready
unit: see :mod:`parkfleet.controller.jobs`) waits for the next to free.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any, Literal

from parkfleet.contract import DEFAULT_CAR_WAIT_S, REASON_INVALID_INPUT, parse_cell_id
from parkfleet.gateway.departures import DepartureClaims, broke_claim
from parkfleet.gateway.estimate import JobRates, job_key
from parkfleet.gateway.events import EventBus
from parkfleet.gateway.ledger import CREDIT_PER_TASK_HOUR, Ledger
from parkfleet.gateway.metrics import GatewayMetrics
from parkfleet.gateway.offers import InputError, stream_inputs
from parkfleet.gateway.placement import Fit, checkpoint_interval_s, choose_car, fits, stay_fit
from parkfleet.gateway.registry import REASON_NO_TELEMETRY, CarState, Cell, Registry
from parkfleet.gateway.reputation import Reputation
from parkfleet.gateway.results import check_result, check_spec
from parkfleet.gateway.taskstate import (
    REASON_ATTEMPTS_EXHAUSTED,
    REASON_CANCELLED,
    REASON_INPUT_ERROR,
    REASON_NO_ELIGIBLE_CAR,
    REASON_OFFER_TIMEOUT,
    REASON_SINK_ERROR,
    REASON_STALLED,
    Task,
)
from parkfleet.policy import REASON_DRIVING
from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol.chunks import ResultData
from parkfleet.protocol.claims import car_reason, car_text
from parkfleet.protocol.limits import ProtocolViolation
from parkfleet.taskport import EventKind, TaskEvent, TaskSpec

__all__ = ["DEFAULT_MAX_ATTEMPTS", "PLACEMENTS", "Placement", "TaskManager", "stop_grace_s"]

log = logging.getLogger(__name__)

# Cars a task may fail on before it fails: a car can only fail its own attempt, so a
# task moves on, but not forever (a dishonest car, or a task no car can run).
DEFAULT_MAX_ATTEMPTS = 8
# A car that answers Busy is not offered the same task again for this long.
REASON_BUSY = "Busy"
BUSY_RETRY_S = 5.0

# aware: placement weighs the cars' claimed stays against the task's estimated run time
# (``placement.choose_car``); blind: it does not (the ordering before departures counted,
# kept for benchmarks).
Placement = Literal["aware", "blind"]
PLACEMENTS: tuple[Placement, ...] = ("aware", "blind")


def stop_grace_s(telemetry_interval_s: float) -> float:
    """How long a car may still report computing after its owner's policy stopped it
    before it counts as a violation: it stops within one telemetry period, and a report
    in flight may take as long again; at least 5 s (a busy link, a busy gateway)."""
    return max(5.0, 2.0 * telemetry_interval_s)


class TaskManager:
    """Places tasks on cars and follows them to the end.

    Args:
        registry: The connected cars.
        metrics: Where to count.
        bus: Where task events go.
        car_wait_s: Default time a task may wait for a car before failing.
        offer_timeout_s: Time a car has to accept or refuse an offer.
        max_attempts: Attempts of a task that may fail (the car reported a failure, or
            stalled) before it fails ``AttemptsExhausted``. A car that leaves is no
            failure (decision 2): the task simply resumes elsewhere.
        stall_timeout_s: A running task whose car says nothing about it (no progress,
            checkpoint or result) this long moves to another car; 0 never moves it.
        start_timeout_s: The same before the attempt's first checkpoint, progress or
            result: the car may first fetch and load the model, over a slow link.
        reputation: The cars' reputations (a fresh book with the default rule when None).
        ledger: The owner ledger the gateway's own account of each car goes to (None:
            tasks still carry their energy, nothing is kept per car).
        telemetry_interval_s: The cars' telemetry period: a gap in telemetry longer than
            twice it is not counted as time offered.
        placement: ``aware`` (the cars' claimed stays count) or ``blind``.
    """

    def __init__(
        self,
        registry: Registry,
        metrics: GatewayMetrics,
        bus: EventBus,
        car_wait_s: float = DEFAULT_CAR_WAIT_S,
        offer_timeout_s: float = 30.0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        stall_timeout_s: float = 120.0,
        start_timeout_s: float = 900.0,
        reputation: Reputation | None = None,
        ledger: Ledger | None = None,
        telemetry_interval_s: float = 10.0,
        placement: Placement = "aware",
    ) -> None:
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, not {placement!r}")
        self._registry = registry
        self._metrics = metrics
        self._bus = bus
        self.car_wait_s = car_wait_s
        self.offer_timeout_s = offer_timeout_s
        self.max_attempts = max(1, max_attempts)
        self.stall_timeout_s = stall_timeout_s
        self.start_timeout_s = start_timeout_s
        self.reputation = reputation or Reputation()
        self.ledger = ledger
        self.telemetry_interval_s = telemetry_interval_s
        self.placement: Placement = placement
        # Each job's items/s per car as measured here, and whose departure claims count.
        self.rates = JobRates()
        self.claims = DepartureClaims()
        self.tasks: dict[str, Task] = {}
        self._queued: dict[str, Task] = {}
        self._offered: dict[str, Task] = {}
        # The task each car holds, by car id (the car's own record only says "busy").
        self._on_car: dict[str, Task] = {}
        # Per task group (the copies of one redundant unit): owners of the cars that took
        # a copy, and the group's tasks not yet released.
        self._group_owners: dict[str, set[str]] = {}
        self._group_tasks: dict[str, set[str]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self.kick = asyncio.Event()

    # ---- API ---------------------------------------------------------------------

    def submit(self, spec: TaskSpec) -> Task:
        """Queues a task for its cell.

        Raises:
            ValueError: The spec is invalid or the id is taken by a live task.
        """
        check_spec(spec)
        old = self.tasks.get(spec.task_id)
        if old is not None and not old.terminal:
            raise ValueError(f"task {spec.task_id!r} already exists ({old.state})")
        cell = self._registry.cells.get(spec.cell)
        if cell is not None:
            pool = cell.pool
        else:
            try:
                pool = parse_cell_id(spec.cell)[0]
            except ValueError:
                pool = spec.cell  # a cell of no pool (in-process use): its own label
        task = Task(spec, pool)
        for car_id in spec.avoid_cars:
            avoided = self._registry.cars.get(car_id)
            if avoided is not None:
                task.avoid_owners.add(avoided.owner)
        self.tasks[spec.task_id] = task
        if spec.group:
            self._group_tasks.setdefault(spec.group, set()).add(spec.task_id)
        self._enqueue(task)
        return task

    def cancel(self, task_id: str, reason: str) -> bool:
        """Cancels a task; False when unknown or already ended."""
        task = self.tasks.get(task_id)
        if task is None or task.terminal:
            return False
        car = task.car
        if car is not None:
            self._cancel_on_car(task, car, reason)
            self._release(task)
        self._queued.pop(task_id, None)
        self._update_queued_gauge()
        task.state = "Cancelled"
        task.reason = REASON_CANCELLED
        task.message = reason
        self._metrics.task_ended(task.pool, "Cancelled", task.started_at)
        self._emit(task, "cancelled", reason=REASON_CANCELLED, message=reason)
        return True

    def release(self, task_id: str) -> None:
        """Drops an ended task's record; with its group's last task, the group's cars."""
        task = self.tasks.get(task_id)
        if task is None or not task.terminal:
            return
        if task.state == "Succeeded" and task.credit_seconds:
            # A copy whose result was kept without a vote (its check was skipped, or
            # found no car): accepted, so its cars earn their credit now.
            self._grant_credit(task)
        del self.tasks[task_id]
        group = task.spec.group
        members = self._group_tasks.get(group)
        if members is not None:
            members.discard(task_id)
            if not members:
                del self._group_tasks[group]
                self._group_owners.pop(group, None)

    def record_verdict(self, task_id: str, agreed: bool) -> list[str]:
        """Counts the vote on an ended task for (or against) the cars that delivered its
        results; a car past the quarantine threshold takes no more tasks (its stream
        stays open: it is told nothing).

        Returns:
            The cars this verdict quarantined.
        """
        task = self.tasks.get(task_id)
        if task is None:
            return []
        quarantined: list[str] = []
        if agreed:
            self._grant_credit(task)
        else:
            task.credit_seconds.clear()  # copies that disagree earn nothing
        counter = self._metrics.car_agreements if agreed else self._metrics.car_strikes
        for car_id in task.result_cars:
            counter.labels(task.pool).inc()
            before, after = self.reputation.record(car_id, agreed)
            if before == after:
                continue
            car = self._registry.cars.get(car_id)
            if car is not None:
                self._registry.set_reputation(car, after)
            if after == "quarantined":
                agreements, strikes = self.reputation.counts(car_id)
                log.warning(
                    "car %s quarantined: %d of its %d checked results disagreed (last: task %s)",
                    car_id,
                    strikes,
                    agreements + strikes,
                    task_id,
                )
                quarantined.append(car_id)
        return quarantined

    def task_on(self, car: CarState) -> Task | None:
        """The task ``car`` holds (this stream of it), if any."""
        task = self._on_car.get(car.car_id)
        return task if task is not None and task.car is car else None

    async def close(self) -> None:
        """Stops background senders."""
        for t in list(self._background):
            t.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # ---- scheduling ------------------------------------------------------------------

    def schedule(self, now: float | None = None) -> None:
        """Places queued tasks on available cars; fails or re-queues those out of time."""
        now = time.monotonic() if now is None else now
        for task in list(self._offered.values()):
            if now - task.offered_at > self.offer_timeout_s and task.car is not None:
                car = task.car
                self._cancel_on_car(task, car, REASON_OFFER_TIMEOUT)
                task.refused_by.add(car.car_id)
                self._give_back(
                    task, "refused", REASON_OFFER_TIMEOUT, "the car did not answer the offer"
                )
        # A unit that lost its car goes first: it has started (its pod is Running), while
        # a ready unit has not (stable: otherwise in the order queued).
        for task in sorted(self._queued.values(), key=lambda t: t.attempt == 0):
            spec = task.spec
            cell = self._registry.cells.get(spec.cell)
            chosen = None
            if cell is not None and cell.available:
                exclude: set[str] = task.refused_by
                if task.busy_until:
                    task.busy_until = {c: t for c, t in task.busy_until.items() if t > now}
                    exclude = exclude | task.busy_until.keys()
                # Copies of one unit (redundancy) land on cars of distinct owners.
                owners: set[str] = task.avoid_owners
                if spec.group:
                    owners = owners | self._group_owners.get(spec.group, set())
                aware = self.placement == "aware"
                chosen = choose_car(
                    cell.available.values(),
                    spec.runtime,
                    spec.gpu_memory_mib,
                    exclude,
                    owners,
                    stay_s=(lambda car: self._stay_s(car, now)) if aware else None,
                    estimate_s=self._estimate_s(task),
                )
            if chosen is not None:
                self._offer(task, chosen)
                continue
            grace = spec.car_wait_s if spec.car_wait_s is not None else self.car_wait_s
            if now - task.queued_at >= grace:
                if cell is not None and self._waits_for_busy_car(task, cell):
                    # A ready unit behind busy cars that can run it: it waits for the next
                    # of them to free, however long units take; the grace is for a cell
                    # with no car for it at all.
                    task.queued_at = now
                    continue
                del self._queued[spec.task_id]
                self._update_queued_gauge()
                detail = f"no eligible car in cell {spec.cell} took it within {grace:g} s"
                if task.reason:
                    detail += f" (last: {task.reason}: {task.message})"
                self._finish_failed(task, REASON_NO_ELIGIBLE_CAR, detail)

    def _waits_for_busy_car(self, task: Task, cell: Cell) -> bool:
        """Whether an eligible car of the cell, busy now, could take the task when it
        frees (one walk of the cell's cars, once per grace period of a waiting task)."""
        spec = task.spec
        owners = task.avoid_owners
        if spec.group:
            owners = owners | self._group_owners.get(spec.group, set())
        for car in cell.cars.values():
            if not (car.busy and car.eligible and car.reputation != "quarantined"):
                continue
            if car.car_id in task.refused_by or car.owner in owners:
                continue
            if fits(car, spec.runtime, spec.gpu_memory_mib):
                return True
        return False

    def move_stalled(self, now: float | None = None) -> None:
        """Moves running tasks whose car has gone quiet about them to another car.

        A car can stay connected (telemetry flowing) while its task makes no progress: a
        hung runtime, a wedged GPU. Without this the task would hold its unit forever.
        """
        if self.stall_timeout_s <= 0:
            return
        now = time.monotonic() if now is None else now
        for task in list(self.tasks.values()):
            car = task.car
            if task.state != "Running" or car is None:
                continue
            quiet = now - task.heard_at
            if quiet <= (self.stall_timeout_s if task.progressed else self.start_timeout_s):
                continue
            self._cancel_on_car(task, car, REASON_STALLED)
            task.refused_by.add(car.car_id)  # not back to the car that stalled on it
            self._metrics.task_stalls.labels(task.pool).inc()
            self._give_back(
                task,
                "lost",
                REASON_STALLED,
                f"car {car.car_id} sent no progress, checkpoint or result for {quiet:.0f} s",
                failed=True,
            )

    def _enqueue(self, task: Task) -> None:
        task.state = "Queued"
        task.queued_at = time.monotonic()
        self._queued[task.spec.task_id] = task
        self._update_queued_gauge()
        self.kick.set()

    def _update_queued_gauge(self) -> None:
        self._metrics.tasks_queued.set(len(self._queued))

    def _stay_s(self, car: CarState, now: float) -> float | None:
        """The seconds the car claims it will stay; None: no claim, or disregarded."""
        return self.claims.stay_s(car.car_id, car.departs_at, now)

    def _estimate_s(self, task: Task) -> float | None:
        """The task's estimated remaining run time on a car; None before its job's
        first measured attempt."""
        return self.rates.remaining_s(job_key(task.spec), task.spec.item_end - task.delivered)

    def _offer(self, task: Task, car: CarState) -> None:
        del self._queued[task.spec.task_id]
        self._update_queued_gauge()
        now = time.monotonic()
        stay = self._stay_s(car, now)
        fit: Fit = stay_fit(stay, self._estimate_s(task))
        self._metrics.placements.labels(task.pool, fit).inc()
        interval = None
        if fit == "leaves" and stay is not None and self.placement == "aware":
            interval = checkpoint_interval_s(task.spec.checkpoint_interval_s, stay)
        task.claimed_departure = car.departs_at if stay is not None else 0.0
        task.claimed_stay_s = stay or 0.0
        task.attempt += 1
        task.car = car
        task.state = "Offered"
        task.heard_at = time.monotonic()
        task.progressed = False
        task.offered_at = time.monotonic()
        task.cars.append(car.car_id)
        if task.spec.group:
            self._group_owners.setdefault(task.spec.group, set()).add(car.owner)
        self._offered[task.spec.task_id] = task
        self._on_car[car.car_id] = task
        self._registry.set_busy(car, True)
        if task.previous_car:
            task.moves += 1
            self._metrics.task_moves.labels(task.pool).inc()
            self._emit(task, "moved", from_car=task.previous_car, reason=task.reason)
        self._emit(task, "placed")
        self._spawn(self._send_offer(task, car, task.attempt, interval))

    async def _send_offer(
        self, task: Task, car: CarState, attempt: int, checkpoint_s: float | None = None
    ) -> None:
        def current() -> bool:
            return task.attempt == attempt and task.car is car

        try:
            await stream_inputs(car, task.spec, attempt, task.delivered, current, checkpoint_s)
        except InputError as e:
            if current():
                self._cancel_on_car(task, car, REASON_INPUT_ERROR)
                self._release(task)
                # Items that are wrong fail the pod for its input (no retry helps);
                # a source that failed (storage away) may work again on a retry.
                reason = REASON_INVALID_INPUT if e.invalid else REASON_INPUT_ERROR
                self._finish_failed(task, reason, str(e))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the car's stream went away: its handler re-queues
            log.debug("sending task %s to car %s stopped: %r", task.spec.task_id, car.car_id, e)

    # ---- the gateway's own account (the owner ledger) ---------------------------------

    def on_telemetry(self, car: CarState, was_eligible: bool) -> None:
        """Accounts the time since the car's last telemetry: offered when its policy
        allowed work, and its running task's seconds and energy."""
        now = time.monotonic()
        dt = min(now - car.accounted_at, 2.0 * self.telemetry_interval_s)
        car.accounted_at = now
        if was_eligible and dt > 0:
            self._metrics.offered_seconds.labels(car.cell.pool).inc(dt)
            if self.ledger is not None:
                self.ledger.record(car.car_id, car.owner, car.cell.pool, offered_s=dt)
        task = self.task_on(car)
        if task is not None:
            self._accrue(task, now)

    def accounted_today_wh(self, car: CarState) -> float:
        """The energy the ledger counts for the car on its owner's local day."""
        if self.ledger is None:
            return 0.0
        return self.ledger.day_energy(car.car_id, car.local_day)

    def check_stopped(self, car: CarState, kind: str) -> None:
        """Counts a policy violation when the car still reports computing (progress,
        checkpoints: the server passes only those) longer than a grace period after its
        owner's policy said stop; once per stop. The grace: the car stops within one
        telemetry period, and a report in flight may take as long again to arrive."""
        if car.eligible or car.violated or car.reason == REASON_NO_TELEMETRY:
            return
        if time.monotonic() - car.ineligible_since <= stop_grace_s(self.telemetry_interval_s):
            return
        car.violated = True
        self._metrics.policy_violations.labels(car.cell.pool).inc()
        if self.ledger is not None:
            self.ledger.record(car.car_id, car.owner, car.cell.pool, violations=1)
        log.warning(
            "car %s sent %s %.0f s after its owner's policy stopped it (%s): a violation",
            car.car_id,
            kind,
            time.monotonic() - car.ineligible_since,
            car.reason,
        )

    def _accrue(self, task: Task, now: float) -> None:
        """Adds the running attempt's time since its last accounting, and its energy."""
        car = task.car
        if car is None or not task.accrued_at:
            return
        dt = max(0.0, now - task.accrued_at)
        task.accrued_at = now
        if dt <= 0:
            return
        wh = car.power.task_wh(dt)
        task.attempt_seconds += dt
        task.energy_wh += wh
        task.energy_modelled = True
        self._metrics.energy_used(task.pool, wh)
        self._metrics.task_seconds.labels(task.pool).inc(dt)
        if self.ledger is not None:
            self.ledger.record(car.car_id, car.owner, car.cell.pool, task_s=dt, energy_wh=wh)
            self.ledger.add_day_energy(car.car_id, car.local_day, wh)

    def _end_attempt(self, task: Task, car: CarState) -> None:
        """The attempt on ``car`` ended: its last seconds are accounted, and they count
        for credit when it delivered results."""
        self._accrue(task, time.monotonic())
        self.rates.record(job_key(task.spec), task.attempt_items, task.attempt_seconds)
        if task.attempt_items > 0 and task.attempt_seconds > 0:
            _, seconds = task.credit_seconds.get(car.car_id, (car.owner, 0.0))
            # The owner now: the car may be gone (and unregistered) when credit is granted.
            task.credit_seconds[car.car_id] = (car.owner, seconds + task.attempt_seconds)
        task.accrued_at = task.attempt_seconds = 0.0
        task.attempt_items = 0

    def _grant_credit(self, task: Task) -> None:
        """The task's results were accepted: its cars earn credit for their seconds."""
        for car_id, (owner, seconds) in task.credit_seconds.items():
            credit = CREDIT_PER_TASK_HOUR * seconds / 3600.0
            self._metrics.credit.labels(task.pool).inc(credit)
            if self.ledger is not None:
                self.ledger.record(car_id, owner, task.pool, credit=credit)
        task.credit_seconds.clear()

    def _car_energy(self, car: CarState, task: Task, wh: float) -> None:
        """The car's own figure for an attempt: a cross-check of the gateway's."""
        self._metrics.car_energy_used(task.pool, wh)
        if self.ledger is not None:
            self.ledger.record(car.car_id, car.owner, car.cell.pool, car_energy_wh=wh)

    # ---- car side --------------------------------------------------------------------

    def car_lost(self, car: CarState, reason: str, message: str, *, departed: bool = True) -> None:
        """The car's stream ended (or it went silent): its task goes back to the queue.

        Args:
            departed: Whether this counts as leaving (False: the same car connected
                again, or the gateway itself is stopping): a car that leaves holding a
                task well before its claimed departure has its claims disregarded.
        """
        self.on_telemetry(car, car.eligible)  # its last seconds, offered or working
        task = self.task_on(car)
        if task is None:
            return
        if departed:
            self._check_departure(task, car)
        self._give_back(task, "lost", reason, message)

    def car_ineligible(self, car: CarState, reason: str, message: str) -> None:
        """The car's owner policy no longer allows work: stop its task and move it."""
        task = self.task_on(car)
        if task is None:
            return
        if reason == REASON_DRIVING:
            self._check_departure(task, car)
        self._cancel_on_car(task, car, reason)
        self._give_back(task, "lost", reason, message)

    def _check_departure(self, task: Task, car: CarState) -> None:
        """The car left holding ``task``: was that well before the departure it claimed
        when the task was offered?"""
        now = time.monotonic()
        if broke_claim(task.claimed_departure, task.claimed_stay_s, now):
            self.claims.broken(car.car_id, now)
            self._metrics.departure_claims_broken.labels(task.pool).inc()
            log.info(
                "car %s left %.0f s before the departure it claimed (%.0f s stay): its "
                "departure claims are disregarded",
                car.car_id,
                task.claimed_departure - now,
                task.claimed_stay_s,
            )

    def car_available(self) -> None:
        """A car became eligible and idle: try to place queued tasks."""
        if self._queued:
            self.kick.set()

    def _task_for(self, car: CarState, task_id: str, attempt: int) -> Task | None:
        """The task a car message is about; None when the message is stale."""
        task = self.tasks.get(task_id)
        if task is None or car.car_id not in task.cars:
            raise ProtocolViolation(f"unknown task id {task_id!r}: it was never offered to you")
        if task.car is not car or task.attempt != attempt or task.terminal:
            return None
        task.heard_at = time.monotonic()
        return task

    async def on_message(self, car: CarState, kind: str, msg: pb.CarMessage) -> None:
        """Handles a task message from a car.

        Raises:
            ProtocolViolation: The message breaks the protocol; the car's stream closes.
        """
        if kind == "result":
            await self.on_result(car, msg.result)
        elif kind == "checkpoint":
            c = msg.checkpoint
            task = self._task_for(car, c.task_id, c.attempt)
            if task is None:
                return
            if not task.spec.item_start <= c.next_item <= task.delivered:
                raise ProtocolViolation(
                    f"checkpoint at item {c.next_item} of task {c.task_id!r}, but results "
                    f"were delivered up to item {task.delivered} only"
                )
            self._mark_running(task)
            task.progressed = True
            if c.next_item > task.checkpoint:
                task.checkpoint = c.next_item
                self._emit(task, "checkpoint")
        elif kind == "progress":
            p = msg.progress
            task = self._task_for(car, p.task_id, p.attempt)
            if task is None:
                return
            if not task.spec.item_start <= p.items_done <= task.spec.item_end:
                raise ProtocolViolation(
                    f"progress at item {p.items_done} is outside task {p.task_id!r}'s range "
                    f"[{task.spec.item_start}, {task.spec.item_end})"
                )
            self._mark_running(task)
            task.progressed = True
            self._emit(task, "progress", message=f"{p.items_per_second:.1f} items/s")
        elif kind == "accept":
            a = msg.accept
            task = self._task_for(car, a.task_id, a.attempt)
            if task is not None and task.state == "Offered":
                self._mark_running(task)
        elif kind == "refuse":
            r = msg.refuse
            task = self._task_for(car, r.task_id, r.attempt)
            if task is not None:
                reason = car_reason(r.reason)
                if reason == REASON_BUSY:
                    # Still finishing a task the gateway cancelled: it will be free soon.
                    task.busy_until[car.car_id] = time.monotonic() + BUSY_RETRY_S
                else:
                    task.refused_by.add(car.car_id)
                self._give_back(task, "refused", reason, car_text(r.message))
        elif kind == "log":
            lg = msg.log
            task = self._task_for(car, lg.task_id, lg.attempt)
            if task is not None:
                self._emit(task, "log", lines=tuple(lg.lines))
        elif kind == "done":
            await self._on_done(car, msg.done)
        elif kind == "failed":
            f = msg.failed
            task = self._task_for(car, f.task_id, f.attempt)
            # The car's own figure counts even for an attempt the gateway already moved
            # (its policy stopped it, and this is its report): a cross-check of all its time.
            self._car_energy(car, self.tasks[f.task_id], f.energy_wh)
            if task is None:
                return
            if task.spec.item_start <= f.next_item <= task.delivered:
                task.checkpoint = max(task.checkpoint, f.next_item)
            # A fact about this attempt on this car, whatever the car calls it: the task
            # moves on (not back to this car); only the cluster side may fail a job.
            task.refused_by.add(car.car_id)
            self._give_back(task, "lost", car_reason(f.reason), car_text(f.message), failed=True)

    def _mark_running(self, task: Task) -> None:
        if task.state == "Offered":
            task.state = "Running"
            self._offered.pop(task.spec.task_id, None)
            if not task.started_at:
                task.started_at = self._metrics.task_started(task.pool)
            task.accrued_at = time.monotonic()
            task.attempt_seconds = 0.0
            task.attempt_items = 0
            self._emit(task, "accepted")

    async def on_result(self, car: CarState, r: pb.ResultChunk | ResultData) -> None:
        """Hands a car's results to the task's sink, in item order, each item once.

        Raises:
            ProtocolViolation: The results do not fit the task; the car's stream closes.
        """
        task = self._task_for(car, r.task_id, r.attempt)
        if task is None:
            return
        task.progressed = True
        spec = task.spec
        outputs = check_result(spec, r, task.delivered)
        first = r.first_item
        n = len(next(iter(outputs.values())))
        self._mark_running(task)
        skip = task.delivered - first
        if skip >= n:
            return  # all duplicates of results the sink already has
        if skip:
            outputs = {k: v[skip:] for k, v in outputs.items()}
        try:
            await self._deliver(task, task.delivered, outputs)
        except Exception as e:  # a sink's own errors (a full disk, a store away)
            log.warning("sink of task %s failed: %r", spec.task_id, e)
            if task.car is car:
                self._cancel_on_car(task, car, REASON_SINK_ERROR)
                self._release(task)
                self._finish_failed(task, REASON_SINK_ERROR, f"writing results failed: {e!r}")
            return
        task.delivered += n - skip
        task.attempt_items += n - skip
        if self.ledger is not None:
            self.ledger.record(car.car_id, car.owner, car.cell.pool, items=n - skip)
        if car.car_id not in task.result_cars:
            task.result_cars.append(car.car_id)
        self._metrics.result_items.labels(task.pool).inc(n - skip)

    async def _on_done(self, car: CarState, d: pb.TaskDone) -> None:
        task = self._task_for(car, d.task_id, d.attempt)
        if task is None:
            self._car_energy(car, self.tasks[d.task_id], d.energy_wh)
            return
        if task.delivered < task.spec.item_end:
            raise ProtocolViolation(
                f"task {d.task_id!r} reported done, but results were delivered up to item "
                f"{task.delivered} of {task.spec.item_end}"
            )
        self._car_energy(car, task, d.energy_wh)
        await self._all_delivered(task)
        task.checkpoint = task.spec.item_end
        self._release(task)
        await self._finish_succeeded(task)

    # ---- where results go: what a different strategy (tests/bench) may change -----------

    async def _deliver(self, task: Task, first: int, outputs: Mapping[str, Any]) -> None:
        """Hands results for items from ``first`` on to the task's sink."""
        await task.spec.sink.write(first, outputs)

    async def _all_delivered(self, task: Task) -> None:
        """Every result was delivered and the car said done; the sink completes next."""

    def _left_car(self, task: Task) -> None:
        """The task left its car; the next car resumes at ``task.delivered``."""

    # ---- transitions ------------------------------------------------------------------

    def _release(self, task: Task) -> None:
        car = task.car
        self._offered.pop(task.spec.task_id, None)
        if car is not None:
            self._end_attempt(task, car)
            task.car = None
            task.previous_car = car.car_id
            if self._on_car.get(car.car_id) is task:
                del self._on_car[car.car_id]
                self._registry.set_busy(car, False)
                if car.eligible:
                    self.car_available()

    def _give_back(
        self, task: Task, kind: EventKind, reason: str, message: str, *, failed: bool = False
    ) -> None:
        """The task left its car (lost, refused, policy): queue it again, or finish it."""
        from_car = task.car.car_id if task.car is not None else ""
        self._release(task)
        self._left_car(task)
        task.reason = reason
        task.message = message
        self._emit(task, kind, from_car=from_car, reason=reason, message=message)
        if failed:
            task.failures += 1
        if task.delivered >= task.spec.item_end:
            # Every result already reached the sink; only the car's "done" was missing.
            self._spawn(self._finish_succeeded(task))
        elif task.failures >= self.max_attempts:
            self._metrics.task_attempts_exhausted.labels(task.pool).inc()
            self._finish_failed(
                task,
                REASON_ATTEMPTS_EXHAUSTED,
                f"{task.failures} cars did not finish it (last: {reason}: {message})",
            )
        else:
            self._enqueue(task)

    async def _finish_succeeded(self, task: Task) -> None:
        if task.terminal:
            return
        task.state = "Succeeded"
        task.reason = task.message = ""
        try:
            await task.spec.sink.complete()
        except Exception as e:
            self._finish_failed(task, REASON_SINK_ERROR, f"completing results failed: {e!r}")
            return
        self._metrics.task_ended(task.pool, "Succeeded", task.started_at)
        if not task.spec.group:
            self._grant_credit(task)  # a copy of a redundant unit: when the copies agree
        self._emit(task, "succeeded")

    def _finish_failed(self, task: Task, reason: str, message: str) -> None:
        task.state = "Failed"
        task.reason = reason
        task.message = message
        self._metrics.task_ended(task.pool, "Failed", task.started_at)
        self._emit(task, "failed", reason=reason, message=message)

    def _cancel_on_car(self, task: Task, car: CarState, reason: str) -> None:
        cancel = pb.GatewayMessage(
            cancel=pb.TaskCancel(task_id=task.spec.task_id, attempt=task.attempt, reason=reason)
        )
        self._spawn(self._send_quietly(car, cancel))

    @staticmethod
    async def _send_quietly(car: CarState, msg: pb.GatewayMessage) -> None:
        try:
            await car.send(msg)
        except Exception as e:  # the car is gone; nothing to cancel any more
            log.debug("cancel to car %s not sent: %r", car.car_id, e)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    def _emit(self, task: Task, kind: EventKind, **extra: Any) -> None:
        fields: Mapping[str, Any] = {
            "task_id": task.spec.task_id,
            "cell": task.spec.cell,
            "attempt": task.attempt,
            "car_id": task.car.car_id if task.car is not None else task.previous_car,
            "items_done": task.delivered - task.spec.item_start,
            "checkpoint": task.checkpoint,
            "energy_wh": task.energy_wh,
            "energy_modelled": task.energy_modelled,
            **extra,
        }
        self._bus.publish(TaskEvent(kind=kind, **fields))

"""Units run again when a car that delivered them unchecked is quarantined.

A unit whose result was kept as one car set delivered it, compared with nothing (one
copy, or a spot check dropped or skipped), is remembered with those cars
(:class:`UncheckedUnits`, bounded: the most recent ``DEFAULT_MAX_UNITS``). Once one of
them is quarantined — or if one already is when the unit ends — :class:`Redoer` runs
the unit again on a car of another owner and compares the two results the way the pod
compares copies:

- they agree: the result stands (``ResultConfirmed``);
- they disagree: the unit's file is replaced, atomically, by the new result
  (``ResultReplaced``, a Warning). The quarantined car's word counts for nothing
  against a car in good standing; the new result is itself unchecked, remembered
  with its car;
- the run fails: the file stays as it was (``ResultRedoFailed``, a Warning).

Each outcome is an Event on the unit's pod (posted even when the pod is gone) and
``parkfleet_results_redone_total{pool,outcome}``. Kept in memory: a node agent restart
forgets what it had not yet redone (the gateway's reputations are in memory too).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parkfleet.nodeagent.compare import agree
from parkfleet.nodeagent.lifecycle import Pod
from parkfleet.nodeagent.metrics import NodeAgentMetrics
from parkfleet.nodeagent.posting import EventPoster
from parkfleet.nodeagent.resultobject import ResultObject
from parkfleet.nodeagent.resultspool import ResultSpool
from parkfleet.nodeagent.taskio import ResultFile
from parkfleet.taskport import TaskEvent, TaskPort, TaskSpec

__all__ = ["DEFAULT_MAX_UNITS", "REDO_OUTCOMES", "Redoer", "Unchecked", "UncheckedUnits"]

log = logging.getLogger(__name__)

DEFAULT_MAX_UNITS = 10_000  # units remembered; a spec and a pod's facts each
REDO_OUTCOMES = ("confirmed", "replaced", "failed")
REASON_CONFIRMED = "ResultConfirmed"
REASON_REPLACED = "ResultReplaced"
REASON_REDO_FAILED = "ResultRedoFailed"
_ENDS = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class Unchecked:
    """A unit whose result no second car checked.

    Attributes:
        pod: The unit's pod (its Events, its pool, how its results compare).
        spec: Its task (inputs and model; the id and sink are set per run).
        result: Its result file (and its job, which the file keeps naming when replaced).
        cars: The cars that delivered that result.
        runs: How many times it was run again already (task ids stay unique).
    """

    pod: Pod
    spec: TaskSpec
    result: ResultFile | ResultObject
    cars: tuple[str, ...]
    runs: int = 0


class UncheckedUnits:
    """The most recent unchecked units, by the cars that delivered them.

    Args:
        max_units: Units kept at most; the oldest is forgotten first.
    """

    def __init__(self, max_units: int = DEFAULT_MAX_UNITS) -> None:
        self.max_units = max(1, max_units)
        self._units: OrderedDict[str, Unchecked] = OrderedDict()
        self._by_car: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._units)

    def add(self, unit: Unchecked) -> None:
        """Remembers ``unit`` (replacing what was kept for its pod)."""
        uid = unit.pod.uid
        self._drop(uid)
        self._units[uid] = unit
        for car in unit.cars:
            self._by_car.setdefault(car, set()).add(uid)
        while len(self._units) > self.max_units:
            self._drop(next(iter(self._units)))

    def take(self, car: str) -> list[Unchecked]:
        """Forgets and returns the units ``car`` delivered, oldest first."""
        uids = self._by_car.get(car, set())
        units = [u for uid, u in self._units.items() if uid in uids]
        for unit in units:
            self._drop(unit.pod.uid)
        return units

    def _drop(self, uid: str) -> None:
        unit = self._units.pop(uid, None)
        if unit is None:
            return
        for car in unit.cars:
            uids = self._by_car.get(car)
            if uids is not None:
                uids.discard(uid)
                if not uids:
                    del self._by_car[car]


@dataclass
class _Run:
    unit: Unchecked
    bad_car: str
    sink: ResultSpool
    cars: list[str] = dataclasses.field(default_factory=list)


class Redoer:
    """Runs unchecked units again once a car that delivered them is quarantined.

    Args:
        port: The gateway.
        poster: Posts the Events.
        spool_root: Where a run's results wait until they are compared.
        metrics: Counts the outcomes (``parkfleet_results_redone_total``).
        max_units: Unchecked units remembered at most.
    """

    def __init__(
        self,
        port: TaskPort,
        poster: EventPoster,
        spool_root: Path,
        metrics: NodeAgentMetrics,
        max_units: int = DEFAULT_MAX_UNITS,
    ) -> None:
        self.port = port
        self.poster = poster
        self.spool_root = spool_root
        self.metrics = metrics
        self.units = UncheckedUnits(max_units)
        self.runs: dict[str, _Run] = {}  # task id -> run
        self._background: set[asyncio.Task[None]] = set()

    def kept(self, unit: Unchecked) -> None:
        """A unit's result was kept unchecked: remembered, or run again at once if one
        of its cars is quarantined already (it finished a task it held then)."""
        bad = next((c for c in unit.cars if self.port.quarantined(c)), None)
        if bad is None:
            self.units.add(unit)
        else:
            self._spawn(self._start(unit, bad))

    def quarantined(self, car: str) -> None:
        """``car`` was quarantined: every unit it delivered unchecked runs again."""
        for unit in self.units.take(car):
            self._spawn(self._start(unit, car))

    async def _start(self, unit: Unchecked, bad_car: str) -> None:
        task_id = f"{unit.pod.uid}-redo{unit.runs}"
        sink = ResultSpool(None, self.spool_root / task_id)
        spec = dataclasses.replace(
            unit.spec, task_id=task_id, sink=sink, group="", avoid_cars=unit.cars
        )
        self.runs[task_id] = _Run(unit, bad_car, sink)
        log.info("unit %s: car %s is quarantined; running it again", unit.pod.key, bad_car)
        try:
            await self.port.submit(spec)
        except ValueError as exc:
            run = self.runs.pop(task_id)
            msg = (
                f"car {bad_car} was quarantined; the gateway refused to run this unit again "
                f"({exc}): its result stays as that car delivered it"
            )
            await self._end(run, task_id, "failed", msg)

    async def on_event(self, event: TaskEvent) -> bool:
        """Takes a task event; False when it is not about a run of ours."""
        run = self.runs.get(event.task_id)
        if run is None:
            return False
        if event.kind == "accepted" and event.car_id and event.car_id not in run.cars:
            run.cars.append(event.car_id)
        if event.kind not in _ENDS:
            return True
        del self.runs[event.task_id]
        # Compared and saved in the background: the caller's other events do not wait.
        self._spawn(self._finished(run, event))
        return True

    async def _finished(self, run: _Run, event: TaskEvent) -> None:
        if event.kind == "succeeded":
            try:
                await self._compare(run, event.task_id)
            except Exception:
                log.exception("unit %s: cannot compare its results", run.unit.pod.key)
                msg = f"car {run.bad_car} was quarantined; the new results could not be read"
                await self._end(run, event.task_id, "failed", msg)
            return
        why = event.reason or event.kind
        if event.message:
            why += f": {event.message}"
        msg = (
            f"car {run.bad_car} was quarantined; running this unit again failed ({why}): "
            "its result stays as that car delivered it"
        )
        await self._end(run, event.task_id, "failed", msg)

    async def _compare(self, run: _Run, task_id: str) -> None:
        unit = run.unit
        mode, output, tolerance = unit.pod.compare
        new = await run.sink.arrays()
        name = output or next(iter(new), "")
        old = await unit.result.read_output(name)
        fresh = new.get(name)
        cars = ", ".join(run.cars) or "another car"
        if old is not None and fresh is not None and agree(fresh, old, mode, tolerance):
            msg = (
                f"car {run.bad_car} was quarantined; car {cars} ran this unit again and "
                f"agrees with its result on {name!r}: it stands"
            )
            await self._end(run, task_id, "confirmed", msg)
            return
        await run.sink.save(unit.result)
        msg = (
            f"car {run.bad_car} was quarantined; car {cars} ran this unit again and "
            f"disagrees on {name!r}: the unit's result is now car {cars}'s"
        )
        await self._end(run, task_id, "replaced", msg)
        self.kept(dataclasses.replace(unit, cars=tuple(run.cars), runs=unit.runs + 1))

    async def _end(self, run: _Run, task_id: str, outcome: str, message: str) -> None:
        unit = run.unit
        self.port.release(task_id)
        await run.sink.discard()
        self.metrics.results_redone.labels(unit.pod.pool, outcome).inc()
        reason = {
            "confirmed": REASON_CONFIRMED,
            "replaced": REASON_REPLACED,
        }.get(outcome, REASON_REDO_FAILED)
        (log.info if outcome == "confirmed" else log.warning)("unit %s: %s", unit.pod.key, message)
        ref = unit.pod.ref
        await self.poster.post(ref, reason, message, warning=outcome != "confirmed")

    async def settle(self) -> None:
        """Waits until the background work started so far (submissions, comparisons,
        saves, Events) is done."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # The loop keeps only weak references to tasks: these stay until they end.
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

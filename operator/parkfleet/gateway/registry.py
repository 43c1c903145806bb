"""The registry of connected cars, grouped by cell, with their latest telemetry.

Per-car state is one slotted object (tens of thousands live in one process); shared
values such as runtime sets and policies are interned. Each cell keeps the set of
cars that could take a task right now (eligible and idle), so placement never scans
a whole cell.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, TypeVar

import grpc

from parkfleet.energymodel import CarPower
from parkfleet.gateway.metrics import CellGauges, GatewayMetrics
from parkfleet.gateway.reputation import ReputationState
from parkfleet.policy import Conditions, Eligibility, Policy, Verdict
from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol.claims import clamped_free_memory
from parkfleet.protocol.consent import ConsentName

__all__ = ["REASON_NO_TELEMETRY", "CarState", "Cell", "Registry"]

REASON_NO_TELEMETRY = "NoTelemetry"

_T = TypeVar("_T")


class CarState:
    """One connected car."""

    __slots__ = (
        "accounted_at",
        "attributes",
        "busy",
        "car_id",
        "cell",
        "cert_expires_at",
        "cert_issued_at",
        "close_code",
        "close_details",
        "close_reason",
        "connected_at",
        "consent",
        "context",
        "departs_at",
        "eligibility",
        "eligible",
        "free_gpu_memory_mib",
        "gpu_count",
        "gpu_memory_mib",
        "handler",
        "idle_since",
        "ineligible_since",
        "last_seen",
        "link_quality",
        "local_day",
        "lock",
        "owner",
        "owner_policy",
        "power",
        "reason",
        "reputation",
        "runtimes",
        "soc_percent",
        "violated",
    )

    def __init__(
        self,
        car_id: str,
        cell: Cell,
        context: grpc.aio.ServicerContext[Any, Any] | None,
        handler: asyncio.Task[Any] | None,
        gpu_count: int,
        gpu_memory_mib: int,
        runtimes: frozenset[str],
        eligibility: Eligibility,
    ) -> None:
        self.car_id = car_id
        self.cell = cell
        self.context = context
        # The stream handler's task: cancelling it (after setting close_code) closes
        # the car's stream with that status.
        self.handler = handler
        self.gpu_count = gpu_count
        self.gpu_memory_mib = gpu_memory_mib
        self.runtimes = runtimes
        self.eligibility = eligibility
        # The owner's own policy, kept so that a new pool floor can be applied to it.
        self.owner_policy = eligibility.policy
        # Certificate attributes as sorted pairs (interned: cars share them).
        self.attributes: tuple[tuple[str, str], ...] = ()
        # Who owns the car (its certificate's): copies of one unit go to distinct owners.
        self.owner = car_id
        # Its certificate's issue and expiry (unix seconds: revocation and expiry are
        # checked against them) and when its stream began (the maximum stream age).
        self.cert_issued_at = 0.0
        self.cert_expires_at = math.inf
        self.connected_at = time.time()
        # Set before the car is added (the gateway's record of it outlives its streams);
        # a quarantined car is never a placement candidate.
        self.reputation: ReputationState = "new"
        # The owner's consent as last reported (set before the car is added, too).
        self.consent: ConsentName = "active"
        self.eligible = False
        self.reason = REASON_NO_TELEMETRY
        self.free_gpu_memory_mib = 0
        self.soc_percent = 0.0
        self.link_quality = 0.0
        # When the car claims it will drive off (monotonic; 0: it claims nothing).
        self.departs_at = 0.0
        self.last_seen = time.monotonic()
        self.idle_since = self.last_seen  # when it last became a placement candidate
        # Holding a task (offered or running); which one is the task manager's to know.
        self.busy = False
        # The ledger's view: the car's declared power model, when its time was last
        # accounted (monotonic), its owner's local day (from its last telemetry), since
        # when it is ineligible (monotonic; 0: eligible) and whether a violation of that
        # stop was counted.
        self.power = CarPower(0.0, 0.0, 1.0)
        self.accounted_at = self.last_seen
        self.local_day = 0
        self.ineligible_since = self.last_seen
        self.violated = False
        self.lock: asyncio.Lock | None = None
        self.close_code: grpc.StatusCode | None = None
        self.close_details = ""
        self.close_reason = ""

    async def send(self, msg: pb.GatewayMessage | bytes) -> None:
        """Writes one message to the car; concurrent writers take turns.

        Args:
            msg: A message, or one already encoded (``parkfleet.protocol.chunks``).
        """
        if self.context is None:
            raise ConnectionError(f"car {self.car_id} has no stream")
        if self.lock is None:
            # Created on first use: most cars never have concurrent writers.
            self.lock = asyncio.Lock()
        async with self.lock:
            await self.context.write(msg)

    def close(self, code: grpc.StatusCode, reason: str, details: str) -> None:
        """Closes the car's stream with a status (from outside its handler).

        Args:
            code: The status the car sees.
            reason: A CamelCase reason for metrics and task events.
            details: The status message the car sees.
        """
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            self.close_details = details
        if self.handler is not None and not self.handler.done():
            self.handler.cancel()


class Cell:
    """The cars of one cell and its counters."""

    __slots__ = ("available", "busy", "cars", "eligible", "gauges", "id", "pool")

    def __init__(self, cell_id: str, pool: str, gauges: CellGauges) -> None:
        self.id = cell_id
        self.pool = pool
        self.cars: dict[str, CarState] = {}
        # Eligible and idle: the placement candidates.
        self.available: dict[str, CarState] = {}
        self.eligible = 0
        self.busy = 0
        self.gauges = gauges


class Registry:
    """Connected cars by id and by cell.

    Args:
        metrics: Where cell gauges live.
    """

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self.cars: dict[str, CarState] = {}
        self.cells: dict[str, Cell] = {}
        self._interned: dict[Any, Any] = {}
        self._by_reputation: dict[tuple[str, str], Any] = {}
        self._paused: dict[str, Any] = {}

    def intern(self, value: _T) -> _T:
        """One shared instance per distinct hashable value (runtime sets, policies)."""
        got: _T = self._interned.setdefault(value, value)
        return got

    def cell(self, cell_id: str, pool: str) -> Cell:
        """The cell, created on first use."""
        cell = self.cells.get(cell_id)
        if cell is None:
            cell = self.cells[cell_id] = Cell(
                cell_id, pool, CellGauges(self._metrics, pool, cell_id)
            )
            # A pool's violation count exists at 0 (dashboards and alerts read "none").
            self._metrics.policy_violations.labels(pool)
        return cell

    def add(self, car: CarState) -> CarState | None:
        """Registers a car; returns the car it replaces (same id, older stream), if any."""
        old = self.cars.get(car.car_id)
        if old is not None:
            self.remove(old)
        self.cars[car.car_id] = car
        car.cell.cars[car.car_id] = car
        car.cell.gauges.connected.inc()
        self._reputation_gauge(car.cell.pool, car.reputation).inc()
        if car.consent == "paused":
            self._paused_gauge(car.cell.pool).inc()
        return old

    def remove(self, car: CarState) -> bool:
        """Unregisters a car; False when it was not (or no longer) registered."""
        if self.cars.get(car.car_id) is not car:
            return False
        del self.cars[car.car_id]
        cell = car.cell
        del cell.cars[car.car_id]
        cell.available.pop(car.car_id, None)
        cell.gauges.connected.dec()
        self._reputation_gauge(cell.pool, car.reputation).dec()
        if car.consent == "paused":
            self._paused_gauge(cell.pool).dec()
        if car.eligible:
            cell.eligible -= 1
            cell.gauges.eligible.dec()
        if car.busy:
            cell.busy -= 1
            cell.gauges.busy.dec()
        return True

    def move(self, car: CarState, cell: Cell) -> None:
        """Moves a connected car to another cell (its pool's cells changed)."""
        if not self.is_current(car) or car.cell is cell:
            car.cell = cell
            return
        old = car.cell
        del old.cars[car.car_id]
        old.available.pop(car.car_id, None)
        old.gauges.connected.dec()
        cell.cars[car.car_id] = car
        cell.gauges.connected.inc()
        if old.pool != cell.pool:
            self._reputation_gauge(old.pool, car.reputation).dec()
            self._reputation_gauge(cell.pool, car.reputation).inc()
            if car.consent == "paused":
                self._paused_gauge(old.pool).dec()
                self._paused_gauge(cell.pool).inc()
        if car.eligible:
            old.eligible -= 1
            old.gauges.eligible.dec()
            cell.eligible += 1
            cell.gauges.eligible.inc()
        if car.busy:
            old.busy -= 1
            old.gauges.busy.dec()
            cell.busy += 1
            cell.gauges.busy.inc()
        car.cell = cell
        self._refresh_available(car)

    def is_current(self, car: CarState) -> bool:
        """Whether ``car`` is the registered stream for its id."""
        return self.cars.get(car.car_id) is car

    def update_telemetry(
        self, car: CarState, t: pb.Telemetry, accounted_today_wh: float = 0.0
    ) -> Verdict | None:
        """Takes a telemetry message; returns the new verdict when eligibility changed.

        Args:
            car: The car.
            t: Its telemetry.
            accounted_today_wh: The energy the gateway's ledger counts for the car today:
                the daily budget takes the larger of it and the car's own figure.
        """
        car.last_seen = time.monotonic()
        car.free_gpu_memory_mib = clamped_free_memory(t.free_gpu_memory_mib, car.gpu_memory_mib)
        car.soc_percent = t.soc_percent
        car.link_quality = t.link_quality
        stay = t.expected_stay_s if t.state == pb.PARKED else 0.0
        car.departs_at = car.last_seen + stay if stay > 0 else 0.0
        conditions = Conditions.from_telemetry(t)
        if accounted_today_wh > conditions.energy_used_today_wh:
            conditions = replace(conditions, energy_used_today_wh=accounted_today_wh)
        verdict = car.eligibility.update(conditions)
        if verdict.eligible == car.eligible and verdict.reason == car.reason:
            return None
        was = car.eligible
        car.eligible = verdict.eligible
        car.reason = verdict.reason
        if was != verdict.eligible:
            car.ineligible_since = 0.0 if verdict.eligible else car.last_seen
            car.violated = False
        if was != verdict.eligible and self.is_current(car):
            cell = car.cell
            if verdict.eligible:
                cell.eligible += 1
                cell.gauges.eligible.inc()
            else:
                cell.eligible -= 1
                cell.gauges.eligible.dec()
            self._refresh_available(car)
        return verdict

    def set_policy(self, car: CarState, policy: Policy) -> None:
        """Replaces a car's policy (e.g. a new pool floor); hysteresis state restarts."""
        car.eligibility = Eligibility(self.intern(policy))

    def set_busy(self, car: CarState, busy: bool) -> None:
        """Marks the car busy (it holds a task) or idle."""
        before = car.busy
        car.busy = after = busy
        if before != after and self.is_current(car):
            delta = 1 if after else -1
            car.cell.busy += delta
            car.cell.gauges.busy.inc(delta)
            self._refresh_available(car)

    def set_reputation(self, car: CarState, state: ReputationState) -> None:
        """Records the car's new reputation state (a quarantined car takes no task)."""
        if state == car.reputation:
            return
        if self.is_current(car):
            self._reputation_gauge(car.cell.pool, car.reputation).dec()
            self._reputation_gauge(car.cell.pool, state).inc()
        car.reputation = state
        if self.is_current(car):
            self._refresh_available(car)

    def set_consent(self, car: CarState, consent: ConsentName) -> None:
        """Records the owner's new consent (its eligibility follows from telemetry)."""
        if self.is_current(car) and (car.consent == "paused") != (consent == "paused"):
            self._paused_gauge(car.cell.pool).inc(1 if consent == "paused" else -1)
        car.consent = consent

    def _paused_gauge(self, pool: str) -> Any:
        child = self._paused.get(pool)
        if child is None:
            child = self._paused[pool] = self._metrics.cars_paused.labels(pool)
        return child

    def _reputation_gauge(self, pool: str, state: str) -> Any:
        child = self._by_reputation.get((pool, state))
        if child is None:
            child = self._by_reputation[pool, state] = self._metrics.cars_by_reputation.labels(
                pool, state
            )
        return child

    def _refresh_available(self, car: CarState) -> None:
        if car.eligible and not car.busy and car.reputation != "quarantined":
            if car.car_id not in car.cell.available:
                car.idle_since = time.monotonic()
            car.cell.available[car.car_id] = car
        else:
            car.cell.available.pop(car.car_id, None)

    def silent_since(self, deadline: float) -> Iterator[CarState]:
        """Cars whose last telemetry (or hello) is older than ``deadline`` (monotonic)."""
        return (car for car in self.cars.values() if car.last_seen < deadline)

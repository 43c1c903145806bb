"""The gateway's record of one task, and the reasons a task ends or moves."""

from __future__ import annotations

import time

from parkfleet.gateway.registry import CarState
from parkfleet.taskport import TaskSpec, TaskState, TaskStatus

__all__ = [
    "REASON_ATTEMPTS_EXHAUSTED",
    "REASON_CANCELLED",
    "REASON_INPUT_ERROR",
    "REASON_NO_ELIGIBLE_CAR",
    "REASON_OFFER_TIMEOUT",
    "REASON_SINK_ERROR",
    "REASON_STALLED",
    "Task",
]

REASON_NO_ELIGIBLE_CAR = "NoEligibleCar"
REASON_ATTEMPTS_EXHAUSTED = "AttemptsExhausted"
REASON_OFFER_TIMEOUT = "OfferTimeout"
REASON_INPUT_ERROR = "InputError"
REASON_SINK_ERROR = "SinkError"
REASON_CANCELLED = "Cancelled"
REASON_STALLED = "TaskStalled"
_TERMINAL: frozenset[TaskState] = frozenset({"Succeeded", "Failed", "Cancelled"})


class Task:
    """The gateway's state of one task."""

    __slots__ = (
        "accrued_at",
        "attempt",
        "attempt_items",
        "attempt_seconds",
        "avoid_owners",
        "busy_until",
        "car",
        "cars",
        "checkpoint",
        "claimed_departure",
        "claimed_stay_s",
        "credit_seconds",
        "delivered",
        "energy_modelled",
        "energy_wh",
        "failures",
        "heard_at",
        "message",
        "moves",
        "offered_at",
        "pool",
        "previous_car",
        "progressed",
        "queued_at",
        "reason",
        "refused_by",
        "result_cars",
        "spec",
        "started_at",
        "state",
    )

    def __init__(self, spec: TaskSpec, pool: str) -> None:
        self.spec = spec
        self.pool = pool
        self.state: TaskState = "Queued"
        self.attempt = 0
        self.car: CarState | None = None
        # First item still to do according to the car's last checkpoint.
        self.checkpoint = spec.item_start
        # First item whose result has not reached the sink; resume point.
        self.delivered = spec.item_start
        self.queued_at = time.monotonic()
        self.offered_at = 0.0
        self.heard_at = 0.0  # the car's last message about this attempt
        self.progressed = False  # this attempt has checkpointed, progressed or delivered
        self.started_at = 0.0  # first acceptance by a car (metrics: task duration)
        # Cars not to offer it to: they refused, failed or stalled on it, or its spec
        # avoids them...
        self.refused_by: set[str] = set(spec.avoid_cars)
        # ...and owners none of whose cars to offer it to (those of the cars the spec
        # avoids, connected when it was submitted).
        self.avoid_owners: set[str] = set()
        # Cars that answered Busy (still finishing a cancelled task): not offered this task
        # again until then (monotonic time).
        self.busy_until: dict[str, float] = {}
        self.reason = ""
        self.message = ""
        # The gateway's own account (the ledger's): energy of the seconds the task ran,
        # from each car's declared power model; always modelled.
        self.energy_wh = 0.0
        self.energy_modelled = False
        # The running attempt: when its time was last accounted (monotonic; 0 when not
        # running), its seconds and the items it delivered.
        self.accrued_at = 0.0
        self.attempt_seconds = 0.0
        self.attempt_items = 0
        # Seconds of the attempts that delivered results, per car: their credit once the
        # task's results are accepted.
        self.credit_seconds: dict[str, tuple[str, float]] = {}
        self.cars: list[str] = []
        # Cars whose results reached the sink (the verdict on the task is on them).
        self.result_cars: list[str] = []
        self.moves = 0
        # Attempts that failed (the car said so, or stalled); a car that left is no failure.
        self.failures = 0
        self.previous_car = ""
        # What the attempt's car claimed at the offer: when it would leave (monotonic;
        # 0: no claim) and how long it would stay (the departure check: departures.py).
        self.claimed_departure = 0.0
        self.claimed_stay_s = 0.0

    @property
    def terminal(self) -> bool:
        """Whether the task has ended."""
        return self.state in _TERMINAL

    def status(self) -> TaskStatus:
        """A snapshot."""
        return TaskStatus(
            task_id=self.spec.task_id,
            cell=self.spec.cell,
            state=self.state,
            attempt=self.attempt,
            car_id=self.car.car_id if self.car is not None else "",
            items_done=self.delivered - self.spec.item_start,
            checkpoint=self.checkpoint,
            cars=tuple(self.cars),
            moves=self.moves,
            reason=self.reason,
            message=self.message,
            energy_wh=self.energy_wh,
            energy_modelled=self.energy_modelled,
        )

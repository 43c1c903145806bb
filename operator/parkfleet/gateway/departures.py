"""Cars' departure claims and the check on them. Pure logic, no I/O.

A car says how long it expects to stay parked (``Telemetry.expected_stay_s``, from its
owner's schedule). Placement counts that claim only coarsely (``placement.stay_fit``),
and the gateway checks it where it matters: a car that drives off, or is lost, while
holding a task well before the departure it claimed when the task was offered has broken
its claim, and its claims are disregarded from then on (its stay counts as unknown) for
``DISREGARD_S``. The record is kept by car id, so it outlives the car's streams (a
reconnect does not clear it); it does not outlive the gateway process.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

__all__ = [
    "DISREGARD_S",
    "EARLY_FRACTION",
    "EARLY_SLACK_S",
    "MAX_CARS",
    "DepartureClaims",
    "broke_claim",
]

# "Well before": earlier than the claimed departure by more than this share of the
# stay claimed at the offer, and by more than EARLY_SLACK_S (an owner's schedule is
# not to the minute; a car that leaves a little early is no liar).
EARLY_FRACTION: Final[float] = 0.5
EARLY_SLACK_S: Final[float] = 120.0
DISREGARD_S: Final[float] = 7 * 86_400.0  # a week: the schedule's own period
MAX_CARS: Final[int] = 1_000_000  # cars remembered as disregarded, oldest dropped first


def broke_claim(claimed_departure: float, claimed_stay_s: float, left_at: float) -> bool:
    """Whether a car that claimed (at the offer) to stay ``claimed_stay_s`` more seconds,
    i.e. until ``claimed_departure`` (monotonic; 0: no claim), and left at ``left_at``
    left well before it."""
    if claimed_departure <= 0:
        return False
    early = claimed_departure - left_at
    return early > max(EARLY_SLACK_S, EARLY_FRACTION * claimed_stay_s)


class DepartureClaims:
    """Which cars' departure claims count.

    Args:
        disregard_s: How long a broken claim disregards the car's claims.
        max_cars: Cars remembered.
    """

    def __init__(self, disregard_s: float = DISREGARD_S, max_cars: int = MAX_CARS) -> None:
        self.disregard_s = disregard_s
        self._max = max(1, max_cars)
        self._until: OrderedDict[str, float] = OrderedDict()

    def disregarded(self, car_id: str, now: float) -> bool:
        """Whether the car's claims are disregarded at ``now`` (monotonic)."""
        until = self._until.get(car_id)
        if until is None:
            return False
        if until <= now:
            del self._until[car_id]
            return False
        return True

    def stay_s(self, car_id: str, departs_at: float, now: float) -> float | None:
        """The seconds the car claims it stays from ``now``; None when it claims nothing
        (``departs_at`` 0) or its claims are disregarded."""
        if departs_at <= 0 or self.disregarded(car_id, now):
            return None
        return max(0.0, departs_at - now)

    def broken(self, car_id: str, now: float) -> None:
        """The car broke a claim: its claims are disregarded from ``now`` on."""
        self._until.pop(car_id, None)
        self._until[car_id] = now + self.disregard_s
        while len(self._until) > self._max:
            self._until.popitem(last=False)

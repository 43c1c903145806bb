"""Energy a task costs the car's owner: measured when the car can, modelled otherwise.

A car with a power sensor gives a ``PowerReader``: what the car draws for the task now, in
watts at the car (awake base and GPU). The meter integrates it over time (trapezoids
between samples) and adds the charging losses. Without one, energy is modelled by
``parkfleet.energymodel.CarPower`` (awake base + GPU under load, at the socket) times the
task's wall-clock time, and the result says it was modelled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from parkfleet.energymodel import CarPower

__all__ = ["DailyEnergy", "EnergyMeter", "EnergyReading", "PowerReader"]

log = logging.getLogger(__name__)

# Returns the car's draw for the task in watts now (at the car, before charging losses), or
# None when the sensor has no value.
PowerReader = Callable[[], "float | None"]


@dataclass(frozen=True)
class EnergyReading:
    """Energy used so far.

    Attributes:
        wh: Watt-hours at the socket.
        modelled: True when computed from the car's power model x time, not measured.
        seconds: Time the meter ran.
    """

    wh: float
    modelled: bool
    seconds: float


class EnergyMeter:
    """Integrates the energy of one task.

    Args:
        power: The car's power model: used when nothing is measured, and its charging
            efficiency turns a measured draw into energy at the socket.
        reader: Measured power, when the car has it.
        clock: Monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        power: CarPower,
        reader: PowerReader | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._power = power
        self._reader = reader
        self._clock = clock
        self._start = clock()
        self._last_t = self._start
        self._last_w: float | None = None
        self._measured_j = 0.0
        self._failed_reads = False
        self.sample()

    def sample(self) -> None:
        """Takes a power sample (call it every few seconds while the task runs)."""
        now = self._clock()
        if self._reader is None:
            self._last_t = now
            return
        try:
            watts = self._reader()
        except Exception as e:  # a flaky sensor must not fail the task: energy is modelled
            if not self._failed_reads:  # once per task: a sensor that fails, fails often
                log.warning(
                    "power sensor failed, this task's energy is modelled: %r",
                    e,
                    exc_info=not isinstance(e, OSError | ValueError),  # a bug: in full
                )
            watts = None
        if watts is None:
            self._failed_reads = True
        elif self._last_w is not None:
            dt = now - self._last_t
            self._measured_j += dt * (watts + self._last_w) / 2.0
        self._last_w = watts if watts is not None else self._last_w
        self._last_t = now

    def reading(self) -> EnergyReading:
        """Samples once more and returns the energy so far."""
        self.sample()
        elapsed = max(0.0, self._clock() - self._start)
        if self._reader is not None and not self._failed_reads and self._last_w is not None:
            wh = self._measured_j / 3600.0 / self._power.charging_efficiency
            return EnergyReading(wh, False, elapsed)
        return EnergyReading(self._power.task_wh(elapsed), True, elapsed)


def _utc_day(unix_time_ms: int) -> int:
    return unix_time_ms // 86_400_000


class DailyEnergy:
    """Energy the agent spent today (the owner's daily budget counts it), by local day.

    Args:
        local_day: The owner's day at an instant (``Policy.local_day``: its time zone).
    """

    def __init__(self, local_day: Callable[[int], int] = _utc_day) -> None:
        self._local_day = local_day
        self._day = -1
        self._wh = 0.0

    def _on_day_of(self, unix_time_ms: int) -> None:
        """Moves the count to the local day of ``unix_time_ms`` (a new day starts at 0)."""
        day = self._local_day(unix_time_ms)
        if day != self._day:
            self._day, self._wh = day, 0.0

    def add(self, wh: float, unix_time_ms: int) -> None:
        """Adds energy spent at ``unix_time_ms``."""
        self._on_day_of(unix_time_ms)
        self._wh += max(0.0, wh)

    def today(self, unix_time_ms: int) -> float:
        """Returns Wh spent on the local day of ``unix_time_ms``."""
        return self._wh if self._local_day(unix_time_ms) == self._day else 0.0

    def seed(self, wh: float, unix_time_ms: int) -> None:
        """Starts the local day of ``unix_time_ms`` from at least ``wh`` (the gateway's
        own count, told on connect: this count lives in memory and restarts at 0)."""
        self._on_day_of(unix_time_ms)
        self._wh = max(self._wh, wh if wh > 0 else 0.0)

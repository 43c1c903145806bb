"""Energy a task costs the car: measured when the car can, modelled otherwise.

A car with a power sensor gives a ``PowerReader`` (watts now); the meter integrates it over
time (trapezoids between samples). Without one, energy is the GPU's nominal power times the
task's time, and the result says it was modelled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DailyEnergy", "EnergyMeter", "EnergyReading", "PowerReader"]

log = logging.getLogger(__name__)

# Returns the GPU's draw in watts now, or None when the sensor has no value.
PowerReader = Callable[[], "float | None"]


@dataclass(frozen=True)
class EnergyReading:
    """Energy used so far.

    Attributes:
        wh: Watt-hours.
        modelled: True when computed from nominal power x time rather than measured.
        seconds: Time the meter ran.
    """

    wh: float
    modelled: bool
    seconds: float


class EnergyMeter:
    """Integrates the energy of one task.

    Args:
        gpu_power_w: Nominal GPU draw under load, used when nothing is measured.
        reader: Measured power, when the car has it.
        clock: Monotonic seconds (injectable for tests; the simulator's runs faster).
    """

    def __init__(
        self,
        gpu_power_w: float,
        reader: PowerReader | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._power_w = max(0.0, gpu_power_w)
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
            return EnergyReading(self._measured_j / 3600.0, False, elapsed)
        return EnergyReading(self._power_w * elapsed / 3600.0, True, elapsed)


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

    def add(self, wh: float, unix_time_ms: int) -> None:
        """Adds energy spent at ``unix_time_ms``."""
        day = self._local_day(unix_time_ms)
        if day != self._day:
            self._day, self._wh = day, 0.0
        self._wh += max(0.0, wh)

    def today(self, unix_time_ms: int) -> float:
        """Returns Wh spent on the local day of ``unix_time_ms``."""
        return self._wh if self._local_day(unix_time_ms) == self._day else 0.0

"""Sensors driven by a trace and a sped-up clock: what a simulated car's agent reads."""

from __future__ import annotations

import time
from collections.abc import Callable

from parkfleet.policy import check_time_zone, utc_offset_minutes_at
from parkfleet.sim.traces import CarTrace
from parkfleet.vehicle.sensors import SensorReading

__all__ = ["SimClock", "TraceSensors"]

# 1970-01-05 was a Monday: traces' day 0 is a Monday.
_MONDAY_MS = 4 * 86_400_000


class SimClock:
    """Simulated wall time: starts at ``start_unix_ms`` and runs ``speed`` times faster.

    Args:
        start_unix_ms: Simulated time at creation.
        speed: How many simulated seconds pass per real second.
        monotonic: Real monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        start_unix_ms: int,
        speed: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.start_unix_ms = start_unix_ms
        self.speed = speed
        self._monotonic = monotonic
        self._t0 = monotonic()

    def unix_ms(self) -> int:
        """Simulated Unix time in milliseconds."""
        return self.start_unix_ms + int((self._monotonic() - self._t0) * self.speed * 1000.0)


class TraceSensors:
    """Readings from a car's trace at the simulated time.

    Args:
        trace: The car's availability trace.
        clock: The simulation's clock.
        utc_offset_minutes: The car's fixed offset from UTC (traces are in local time).
        time_zone: The car's IANA zone; when set it wins over ``utc_offset_minutes`` and
            the trace follows its offset at each simulated instant (summer time included).
        gpu_memory_mib: GPU memory free when idle.
        busy: Tells whether the car is running a task now (its GPU is warmer then).
    """

    def __init__(
        self,
        trace: CarTrace,
        clock: SimClock,
        utc_offset_minutes: int = 0,
        time_zone: str = "",
        gpu_memory_mib: int = 8192,
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        self._trace = trace
        self._clock = clock
        self._offset_minutes = utc_offset_minutes
        self._time_zone = time_zone
        check_time_zone(time_zone)  # an unknown zone fails here, not on a read
        self._memory = gpu_memory_mib
        self._busy = busy

    def read(self) -> SensorReading:
        """The trace's state now."""
        now_ms = self._clock.unix_ms()
        period_ms = self._trace.days * 86_400_000
        offset = utc_offset_minutes_at(now_ms, self._time_zone, self._offset_minutes)
        local_s = ((now_ms + offset * 60_000 - _MONDAY_MS) % period_ms) / 1000.0
        busy = self._busy()
        state = self._trace.state_at(local_s, busy=busy)
        return SensorReading(
            parked=state.parked,
            plugged_in=state.plugged_in,
            soc_percent=state.soc_percent,
            gpu_temp_c=state.gpu_temp_c,
            free_gpu_memory_mib=self._memory // 4 if busy else self._memory,
            # Home Wi-Fi when parked, cellular when driving.
            link_quality=0.9 if state.parked else 0.5,
            unix_time_ms=now_ms,
        )

"""Sensors driven by a trace and a sped-up clock: what a simulated car's agent reads."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from parkfleet.policy import check_time_zone, utc_offset_minutes_at
from parkfleet.sim.traces import CarTrace
from parkfleet.vehicle.sensors import SensorReading

__all__ = ["SimClock", "TraceSensors", "trace_time_s"]

# 1970-01-05 was a Monday: traces' day 0 is a Monday.
_MONDAY_MS = 4 * 86_400_000


def trace_time_s(unix_ms: int, trace: CarTrace, utc_offset_minutes: int = 0) -> float:
    """Where in its trace a car is at simulated ``unix_ms`` (local seconds since the
    trace's first Monday midnight, wrapped), for a car ``utc_offset_minutes`` off UTC."""
    period_ms = trace.days * 86_400_000
    return ((unix_ms + utc_offset_minutes * 60_000 - _MONDAY_MS) % period_ms) / 1000.0


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
        departure_noise: The trace is the car's schedule: while parked it reports the
            time to its next drive (``expected_stay_s``, in real seconds: trace seconds
            over the clock's speed), off by up to this fraction of the stay's length,
            drawn once per stay (an owner's schedule is not exact); negative: report none.
        noise_seed: Seeds that draw (the car's own).
    """

    def __init__(
        self,
        trace: CarTrace,
        clock: SimClock,
        utc_offset_minutes: int = 0,
        time_zone: str = "",
        gpu_memory_mib: int = 8192,
        busy: Callable[[], bool] = lambda: False,
        departure_noise: float = 0.0,
        noise_seed: str = "",
    ) -> None:
        self._trace = trace
        self._clock = clock
        self._offset_minutes = utc_offset_minutes
        self._time_zone = time_zone
        check_time_zone(time_zone)  # an unknown zone fails here, not on a read
        self._memory = gpu_memory_mib
        self._busy = busy
        self._noise = departure_noise
        self._noise_seed = noise_seed
        self._noise_of: tuple[int, float] = (-1, 0.0)  # (drive segment, its draw)

    def read(self) -> SensorReading:
        """The trace's state now."""
        now_ms = self._clock.unix_ms()
        offset = utc_offset_minutes_at(now_ms, self._time_zone, self._offset_minutes)
        local_s = trace_time_s(now_ms, self._trace, offset)
        busy = self._busy()
        state = self._trace.state_at(local_s, busy=busy)
        return SensorReading(
            expected_stay_s=self._expected_stay_s(local_s) if state.parked else 0.0,
            parked=state.parked,
            plugged_in=state.plugged_in,
            soc_percent=state.soc_percent,
            gpu_temp_c=state.gpu_temp_c,
            free_gpu_memory_mib=self._memory // 4 if busy else self._memory,
            # Home Wi-Fi when parked, cellular when driving.
            link_quality=0.9 if state.parked else 0.5,
            unix_time_ms=now_ms,
        )

    def _expected_stay_s(self, local_s: float) -> float:
        if self._noise < 0:
            return 0.0
        true_s, drive = self._trace.departure_in(local_s)
        if drive < 0:
            return 0.0
        if self._noise > 0:
            if self._noise_of[0] != drive:
                u = random.Random(f"{self._noise_seed}:departure:{drive}").uniform(-1.0, 1.0)
                self._noise_of = (drive, u)
            stay = self._trace.segments[drive - 1].end_s - self._trace.segments[drive - 1].start_s
            true_s += self._noise * self._noise_of[1] * stay
        return max(0.0, true_s) / self._clock.speed

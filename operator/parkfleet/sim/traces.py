"""Availability traces: when a simulated car drives, parks, charges; its battery and GPU.

A trace is a seeded, plausible sequence of segments over whole local days:

- about three cars in four commute: out around 07:45, back around 17:30 (each ±40-50 min),
  half an hour's drive each way, sometimes an evening errand;
- the others run one or two errands during the day; weekends (days 5 and 6) are errands;
- about 72 % of cars have a charger at home and plug in on ~92 % of evenings, so roughly
  two thirds of the fleet is plugged in at night; a few charge at work;
- the battery drains while driving (~7 kW), charges when plugged (7 kW home, 11 kW work),
  and barely moves while parked; a car below 20 % stops at a fast charger on its next
  drive; the GPU follows the ambient temperature, warmer on drives
  and under load.

The ``stays`` scenario is for benchmarks of departures: every car alternates parked,
plugged-in stays (uniform around ``mean_stay_s``) with short drives, at its own phase, so
departures are spread over any stretch of time rather than bunched at commuting hours.

Times are seconds since local midnight of day 0; ``state_at`` wraps after the last day. A
trace is also the car's schedule: ``departure_in`` says when its current stay ends.
"""

from __future__ import annotations

import bisect
import functools
import math
import random
from dataclasses import dataclass

__all__ = [
    "CarTrace",
    "Segment",
    "TraceState",
    "fleet_traces",
    "generate_trace",
    "parked_trace",
    "stays_trace",
]

DAY_S = 86_400.0
_HOUR = 3600.0
_DRIVE_KW = 7.0
_HOME_CHARGE_KW = 7.0
_WORK_CHARGE_KW = 11.0
_PARKED_DRAIN_KW = 0.03  # the car's own sleep draw


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of time in one state.

    Attributes:
        start_s: Start, seconds since local midnight of day 0.
        end_s: End (exclusive).
        driving: True while driving.
        plugged_in: True while charging (never while driving).
        charge_kw: Charger power while plugged in.
    """

    start_s: float
    end_s: float
    driving: bool
    plugged_in: bool
    charge_kw: float = 0.0


@dataclass(frozen=True, slots=True)
class TraceState:
    """A car's state at one instant of its trace."""

    parked: bool
    plugged_in: bool
    soc_percent: float
    gpu_temp_c: float


@dataclass(frozen=True)
class CarTrace:
    """One car's days.

    Attributes:
        segments: Contiguous segments covering ``[0, days * DAY_S)``.
        soc_start: State of charge at the start of each segment.
        battery_kwh: Usable battery capacity.
        days: Days covered.
        ambient_c: Mean ambient temperature (the GPU's floor follows a daily swing around it).
    """

    segments: tuple[Segment, ...]
    soc_start: tuple[float, ...]
    battery_kwh: float
    days: int
    ambient_c: float

    @functools.cached_property
    def _starts(self) -> list[float]:
        return [s.start_s for s in self.segments]

    def _index(self, t_s: float) -> tuple[int, float]:
        t = t_s % (self.days * DAY_S)
        i = max(0, bisect.bisect_right(self._starts, t) - 1)
        return i, t

    def departure_in(self, t_s: float) -> tuple[float, int]:
        """Seconds from ``t_s`` until the car next drives off, and that drive's segment
        index; (0, -1) while driving or when the trace never drives."""
        i, t = self._index(t_s)
        if self.segments[i].driving:
            return 0.0, -1
        period = self.days * DAY_S
        n = len(self.segments)
        for k in range(1, n + 1):
            j = (i + k) % n
            if self.segments[j].driving:
                start = self.segments[j].start_s + (period if j <= i else 0.0)
                return start - t, j
        return 0.0, -1

    def parked_plugged_s(self, start_s: float, end_s: float) -> float:
        """Seconds within ``[start_s, end_s)`` (trace time, wrapping) the car was parked
        and plugged in: what a fleet could offer of it under a plugged-in-only policy."""
        period = self.days * DAY_S
        total = 0.0
        t = start_s
        while t < end_s:
            i, local = self._index(t)
            seg = self.segments[i]
            seg_end = seg.end_s if i + 1 < len(self.segments) else period
            step = min(end_s - t, max(1e-9, seg_end - local))
            if not seg.driving and seg.plugged_in:
                total += step
            t += step
        return total

    def state_at(self, t_s: float, busy: bool = False) -> TraceState:
        """The car's state at ``t_s`` (wrapping after the last day).

        Args:
            t_s: Seconds since local midnight of day 0.
            busy: Whether the GPU is running a task (it runs warmer).
        """
        i, t = self._index(t_s)
        seg = self.segments[i]
        soc = _advance(self.soc_start[i], seg, t - seg.start_s, self.battery_kwh)
        hour = (t % DAY_S) / _HOUR
        # Coolest around 05:00, warmest around 15:00.
        ambient = self.ambient_c + 6.0 * math.sin((hour - 9.0) / 24.0 * 2.0 * math.pi)
        gpu = ambient + 8.0 + (15.0 if seg.driving else 0.0) + (25.0 if busy else 0.0)
        return TraceState(not seg.driving, seg.plugged_in, soc, gpu)

    def fraction(self, predicate: str) -> float:
        """Share of the trace's time spent ``"driving"`` or ``"plugged_in"``."""
        total = self.days * DAY_S
        spent = sum(s.end_s - s.start_s for s in self.segments if getattr(s, predicate))
        return spent / total


def _rate_percent_per_s(seg: Segment, battery_kwh: float) -> float:
    if seg.driving:
        kw = -_DRIVE_KW
    elif seg.plugged_in:
        kw = seg.charge_kw
    else:
        kw = -_PARKED_DRAIN_KW
    return kw / battery_kwh * 100.0 / _HOUR


def _advance(soc: float, seg: Segment, dt: float, battery_kwh: float) -> float:
    return min(100.0, max(0.0, soc + _rate_percent_per_s(seg, battery_kwh) * dt))


def _clock(rng: random.Random, mean_h: float, sd_h: float, lo_h: float, hi_h: float) -> float:
    return min(hi_h, max(lo_h, rng.gauss(mean_h, sd_h))) * _HOUR


def _drive_s(rng: random.Random, mean_min: float) -> float:
    return max(5.0, rng.gauss(mean_min, mean_min / 3.0)) * 60.0


def _day_trips(rng: random.Random, commuter: bool, weekend: bool) -> list[tuple[float, float, str]]:
    """(depart, arrive back, where) trips of one day, in local seconds of that day."""
    trips: list[tuple[float, float, str]] = []
    if commuter and not weekend:
        leave = _clock(rng, 7.75, 0.7, 5.5, 10.0)
        back = _clock(rng, 17.5, 0.8, 15.0, 20.5)
        trips.append((leave, back, "work"))
        if rng.random() < 0.3:
            out = back + _drive_s(rng, 30) + rng.uniform(0.5, 2.0) * _HOUR
            if out < 22.0 * _HOUR:
                trips.append((out, out + rng.uniform(0.6, 1.5) * _HOUR, "errand"))
    else:
        for _ in range(rng.choice((1, 1, 2))):
            out = rng.uniform(9.0, 18.0) * _HOUR
            trips.append((out, out + rng.uniform(0.75, 2.5) * _HOUR, "errand"))
        trips.sort()
        merged: list[tuple[float, float, str]] = []
        for trip in trips:
            if merged and trip[0] < merged[-1][1] + 0.5 * _HOUR:
                continue  # overlapping errands: keep the first
            merged.append(trip)
        trips = merged
    return trips


def generate_trace(rng: random.Random, days: int = 1) -> CarTrace:
    """Draws one car's trace.

    Args:
        rng: The car's own seeded random source.
        days: Days to cover (day 0 is a Monday).

    Returns:
        The trace.
    """
    commuter = rng.random() < 0.75
    home_charger = rng.random() < 0.72
    work_charger = commuter and rng.random() < 0.15
    battery_kwh = rng.uniform(55.0, 85.0)
    segments: list[Segment] = []

    def park(start: float, end: float, plugged: bool, kw: float) -> None:
        if end > start:
            segments.append(Segment(start, end, False, plugged, kw if plugged else 0.0))

    home_plugged = home_charger and rng.random() < 0.92
    t = 0.0
    for day in range(days):
        base = day * DAY_S
        for depart, back, where in _day_trips(rng, commuter, day % 7 >= 5):
            depart, back = base + depart, base + back
            if depart < t:
                continue
            park(t, depart, home_plugged, _HOME_CHARGE_KW)
            there = depart + _drive_s(rng, 30 if where == "work" else 20)
            leave = max(there + 600.0, back - _drive_s(rng, 30 if where == "work" else 20))
            segments.append(Segment(depart, there, True, False))
            park(there, leave, where == "work" and work_charger, _WORK_CHARGE_KW)
            arrive = leave + (there - depart)
            segments.append(Segment(leave, arrive, True, False))
            t = arrive
            home_plugged = home_charger and rng.random() < 0.92
    park(t, days * DAY_S, home_plugged, _HOME_CHARGE_KW)
    # A trip that ran past the last midnight is cut there (the trace wraps).
    end = days * DAY_S
    segments = [
        Segment(s.start_s, min(s.end_s, end), s.driving, s.plugged_in, s.charge_kw)
        for s in segments
        if s.start_s < end
    ]

    soc = rng.uniform(35.0, 90.0)
    soc_start: list[float] = []
    for seg in segments:
        if seg.driving and soc < 20.0:
            soc = min(95.0, soc + rng.uniform(50.0, 70.0))  # a fast-charge stop on the way
        soc_start.append(soc)
        soc = _advance(soc, seg, seg.end_s - seg.start_s, battery_kwh)
    return CarTrace(
        segments=tuple(segments),
        soc_start=tuple(soc_start),
        battery_kwh=battery_kwh,
        days=days,
        ambient_c=rng.uniform(8.0, 24.0),
    )


def parked_trace(rng: random.Random, days: int = 1) -> CarTrace:
    """A car that stays parked and plugged in: for tests that need every car eligible."""
    return CarTrace(
        segments=(Segment(0.0, days * DAY_S, False, True, _HOME_CHARGE_KW),),
        soc_start=(rng.uniform(70.0, 90.0),),
        battery_kwh=rng.uniform(55.0, 85.0),
        days=days,
        ambient_c=rng.uniform(8.0, 24.0),
    )


def stays_trace(
    rng: random.Random, days: int = 1, mean_stay_s: float = 400.0, mean_drive_s: float = 60.0
) -> CarTrace:
    """A car that parks (plugged in) for ``mean_stay_s`` ±50 % at a time, between drives
    of ``mean_drive_s`` ±50 %, at a phase of its own: departures spread over any window."""
    period = days * DAY_S
    segments: list[Segment] = []
    t = 0.0
    stay = rng.uniform(0.0, 1.5 * mean_stay_s)  # the first stay began before midnight
    while t < period:
        end = min(period, t + stay)
        segments.append(Segment(t, end, False, True, _HOME_CHARGE_KW))
        t = end
        if t >= period:
            break
        end = min(period, t + rng.uniform(0.5, 1.5) * mean_drive_s)
        segments.append(Segment(t, end, True, False))
        t = end
        stay = rng.uniform(0.5, 1.5) * mean_stay_s
    soc = rng.uniform(60.0, 90.0)
    battery_kwh = rng.uniform(55.0, 85.0)
    soc_start: list[float] = []
    for seg in segments:
        soc_start.append(soc)
        soc = _advance(soc, seg, seg.end_s - seg.start_s, battery_kwh)
    return CarTrace(tuple(segments), tuple(soc_start), battery_kwh, days, rng.uniform(8.0, 24.0))


SCENARIOS = ("day", "parked", "stays")


def fleet_traces(
    seed: int,
    cars: int,
    days: int = 1,
    scenario: str = "day",
    mean_stay_s: float = 400.0,
    mean_drive_s: float = 60.0,
) -> list[CarTrace]:
    """Traces for a fleet; car ``i``'s trace depends only on ``seed`` and ``i``.

    Args:
        seed: The fleet's seed.
        cars: How many.
        days: Days each trace covers.
        scenario: ``day`` (a realistic week of commutes and charging), ``parked``
            (every car parked and plugged in all along) or ``stays`` (short stays and
            drives, each car at its own phase: ``stays_trace``).
        mean_stay_s: ``stays``: the mean parked stay.
        mean_drive_s: ``stays``: the mean drive between stays.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {SCENARIOS}, not {scenario!r}")
    if scenario == "stays":
        return [
            stays_trace(random.Random(f"{seed}:{i}"), days, mean_stay_s, mean_drive_s)
            for i in range(cars)
        ]
    make = parked_trace if scenario == "parked" else generate_trace
    return [make(random.Random(f"{seed}:{i}"), days) for i in range(cars)]

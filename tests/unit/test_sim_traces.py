"""Availability traces: seeded, and a plausible day for a fleet."""

from __future__ import annotations

import random
import statistics
from dataclasses import replace

from parkfleet.sim.sensors import SimClock, TraceSensors
from parkfleet.sim.traces import DAY_S, fleet_traces, generate_trace
from parkfleet.vehicle.sensors import SensorReading

HOUR = 3600.0


def test_same_seed_same_traces_other_seed_differs() -> None:
    assert fleet_traces(7, 20, 2) == fleet_traces(7, 20, 2)
    assert fleet_traces(7, 20, 2) != fleet_traces(8, 20, 2)


def test_segments_are_contiguous_and_never_charge_while_driving() -> None:
    for i in range(50):
        trace = generate_trace(random.Random(i), days=7)
        assert trace.segments[0].start_s == 0.0
        assert trace.segments[-1].end_s == 7 * DAY_S
        for a, b in zip(trace.segments, trace.segments[1:], strict=False):
            assert a.end_s == b.start_s
            assert a.start_s < a.end_s
        assert not any(s.driving and s.plugged_in for s in trace.segments)


def test_a_fleet_day_is_plausible() -> None:
    traces = fleet_traces(1, 300, 7)
    tuesday = 1 * DAY_S

    def share(hour: float, attr: str) -> float:
        return statistics.mean(getattr(t.state_at(tuesday + hour * HOUR), attr) for t in traces)

    assert 0.5 <= share(3, "plugged_in") <= 0.8  # most plug in at night
    assert share(3, "parked") == 1.0  # nobody drives at 3 am
    assert share(8, "parked") < 0.95  # the morning commute
    assert statistics.mean(t.fraction("driving") for t in traces) < 0.1  # mostly parked
    socs = [t.state_at(h * HOUR).soc_percent for t in traces for h in range(0, 168, 7)]
    assert min(socs) >= 0.0
    assert max(socs) <= 100.0
    assert statistics.mean(socs) > 40.0


def test_battery_charges_when_plugged_and_drains_when_driving() -> None:
    trace = generate_trace(random.Random(3), days=7)
    for seg, soc in zip(trace.segments, trace.soc_start, strict=True):
        mid = (seg.start_s + seg.end_s) / 2
        later = trace.state_at(mid).soc_percent
        if seg.driving:
            assert later <= soc + 1e-9 or soc < 20.0  # (a fast-charge stop may come first)
        elif seg.plugged_in:
            assert later >= soc


def test_sim_clock_and_sensors_speed_up_time() -> None:
    t = [0.0]
    clock = SimClock(start_unix_ms=4 * 86_400_000, speed=60.0, monotonic=lambda: t[0])
    trace = generate_trace(random.Random(5), days=7)
    sensors = TraceSensors(trace, clock)
    first = sensors.read()
    t[0] = 60.0  # one real minute = one simulated hour
    assert sensors.read().unix_time_ms - first.unix_time_ms == 3_600_000
    busy = TraceSensors(trace, clock, busy=lambda: True).read()
    assert busy.gpu_temp_c > sensors.read().gpu_temp_c


def test_trace_sensors_read_the_trace_in_the_car_zone() -> None:
    # A car reads its trace at its own local time: the offset of its zone at that instant.
    trace = generate_trace(random.Random(5), days=7)
    jan, jul = 1_768_435_200_000, 1_784_073_600_000  # 2026-01-15, 2026-07-15 00:00 UTC
    hour, minute = 3_600_000, 60_000

    def read(at_ms: int, time_zone: str = "") -> SensorReading:
        clock = SimClock(at_ms, monotonic=lambda: 0.0)
        return replace(TraceSensors(trace, clock, time_zone=time_zone).read(), unix_time_ms=0)

    for day, new_york in ((jan, -5 * hour), (jul, -4 * hour)):
        for h in range(0, 24, 3):
            local = read(day + h * hour)  # a UTC car at h:00
            assert read(day + h * hour - new_york, "America/New_York") == local
            assert read(day + h * hour - 330 * minute, "Asia/Kolkata") == local
    # Not trivially equal: the GPU follows the day's ambient swing.
    assert read(jan + 3 * hour) != read(jan + 15 * hour)

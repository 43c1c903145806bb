"""The owner's departure schedule: parsing, seconds to the next departure in the owner's
own time zone (summer time included), the policy file, the sensors that report it, and
the simulator's traces as schedules."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pytest

from parkfleet.policy import Policy
from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.sim.sensors import SimClock, TraceSensors
from parkfleet.sim.traces import DAY_S, fleet_traces, parked_trace
from parkfleet.vehicle.departures import (
    DepartureSchedule,
    ScheduledSensors,
    schedule_from_mapping,
)
from parkfleet.vehicle.link import _telemetry
from parkfleet.vehicle.policyfile import load_owner_settings, load_policy
from parkfleet.vehicle.sensors import SensorReading, StaticSensors

WEEKDAYS = {"mon-fri": ["07:45", "17:30"], "sat": "10:00"}


def ms(year: int, month: int, day: int, hour: int, minute: int = 0) -> int:
    """A UTC instant in ms."""
    return int(dt.datetime(year, month, day, hour, minute, tzinfo=dt.UTC).timestamp() * 1000)


def test_next_departure_in_the_owners_zone() -> None:
    s = schedule_from_mapping(WEEKDAYS, Policy(time_zone="Europe/Berlin"))
    # Friday 2026-12-04 08:00 UTC is 09:00 in Berlin (winter): next is 17:30 local.
    assert s.seconds_to_next(ms(2026, 12, 4, 8)) == 8.5 * 3600
    # Friday 17:30 local passed a minute ago at 16:31 UTC: Saturday 10:00 local is next.
    assert s.seconds_to_next(ms(2026, 12, 4, 16, 31)) == pytest.approx((16 * 60 + 29) * 60)
    # Saturday 10:00 local passed: no Sunday departure, Monday 07:45 local.
    assert s.seconds_to_next(ms(2026, 12, 5, 9, 30)) == pytest.approx(
        (14 * 60 + 30 + 24 * 60 + 6 * 60 + 45) * 60
    )


def test_summer_time_moves_the_departure_in_utc() -> None:
    s = schedule_from_mapping({"daily": "08:00"}, Policy(time_zone="Europe/Berlin"))
    # 06:00 UTC: in winter 07:00 local (1 h to go), in summer 08:00 local (just passed).
    assert s.seconds_to_next(ms(2026, 1, 15, 6)) == 3600
    assert s.seconds_to_next(ms(2026, 7, 15, 6)) == 24 * 3600
    # Across the spring change (2026-03-29 02:00 -> 03:00): from Saturday 07:00 UTC
    # (08:00 local, just departed) to Sunday 08:00 local = 06:00 UTC, 23 h later.
    assert s.seconds_to_next(ms(2026, 3, 28, 7)) == 23 * 3600


def test_a_fixed_offset_without_a_zone() -> None:
    s = schedule_from_mapping({"daily": "08:00"}, Policy(utc_offset_minutes=-300))
    assert s.seconds_to_next(ms(2026, 7, 15, 12)) == 3600  # 07:00 at UTC-5


def test_an_empty_schedule_says_unknown() -> None:
    assert DepartureSchedule().seconds_to_next(ms(2026, 7, 15, 12)) == 0.0
    assert not schedule_from_mapping(None, Policy())


def test_ranges_wrap_and_daily_covers_the_week() -> None:
    s = schedule_from_mapping({"fri-mon": "09:00"}, Policy())
    assert [bool(d) for d in s.times] == [True, False, False, False, True, True, True]
    assert all(schedule_from_mapping({"daily": ["01:00"]}, Policy()).times)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"someday": "08:00"}, "departures key 'someday'"),
        ({"mon": "8"}, "departure time '8' is not HH:MM"),
        ({"mon": "24:00"}, "departure time '24:00'"),
        ({"mon": "07:5"}, "departure time '07:5'"),
        (["mon"], "departures must map weekdays to times"),
    ],
)
def test_a_bad_schedule_names_the_value(data: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        schedule_from_mapping(data, Policy())  # type: ignore[arg-type]


def test_the_policy_file_holds_the_schedule_but_the_policy_does_not(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "time_zone: America/New_York\nmin_soc_percent: 40\ndepartures:\n  mon-fri: ['07:45']\n"
    )
    policy, schedule = load_owner_settings(path)
    assert policy == Policy(time_zone="America/New_York", min_soc_percent=40.0)
    assert load_policy(path) == policy
    assert schedule.time_zone == "America/New_York"
    assert schedule.times[0] == (dt.time(7, 45),)
    # What the gateway is told of the policy has no schedule in it.
    assert "departure" not in str(policy.to_proto()).lower()


def test_scheduled_sensors_report_the_next_departure_only_while_parked() -> None:
    schedule = schedule_from_mapping({"daily": "08:00"}, Policy())
    now = ms(2026, 7, 15, 7)

    class At(StaticSensors):
        def read(self) -> SensorReading:
            return SensorReading(parked=self.parked, unix_time_ms=now)

        parked = True

    sensors = At()
    assert ScheduledSensors(sensors, schedule).read().expected_stay_s == 3600
    sensors.parked = False
    assert ScheduledSensors(sensors, schedule).read().expected_stay_s == 0.0
    # The telemetry carries it, bounded, and nothing while driving.
    t = _telemetry(SensorReading(expected_stay_s=1e12), 0.0, pb.CONSENT_ACTIVE)
    assert t.expected_stay_s == 7 * 86_400
    t = _telemetry(SensorReading(parked=False, expected_stay_s=60), 0.0, pb.CONSENT_ACTIVE)
    assert t.expected_stay_s == 0.0


def test_a_trace_is_its_cars_schedule() -> None:
    (trace,) = fleet_traces(3, 1, 1, "stays", mean_stay_s=400, mean_drive_s=60)
    first_drive = next(s for s in trace.segments if s.driving)
    assert trace.departure_in(first_drive.start_s - 10) == pytest.approx((10.0, 1))
    assert trace.departure_in(first_drive.start_s + 1)[0] == 0.0  # driving
    # The last stay wraps to the first drive of the (repeating) trace.
    last = trace.segments[-1]
    if not last.driving:
        assert trace.departure_in(DAY_S - 1)[0] == pytest.approx(1 + first_drive.start_s)
    assert parked_trace(random.Random(1)).departure_in(5.0) == (0.0, -1)  # never leaves


def test_stays_spread_departures_and_count_the_parked_seconds() -> None:
    traces = fleet_traces(0, 50, 1, "stays", mean_stay_s=400, mean_drive_s=60)
    departures = [t.departure_in(0.0)[0] for t in traces]
    assert len({round(d) for d in departures}) > 40  # spread, not bunched
    share = sum(t.parked_plugged_s(0, DAY_S) for t in traces) / (50 * DAY_S)
    assert share == pytest.approx(400 / 460, abs=0.03)
    # Wrapping windows count too.
    t = traces[0]
    assert t.parked_plugged_s(DAY_S - 100, DAY_S + 100) == pytest.approx(
        t.parked_plugged_s(DAY_S - 100, DAY_S) + t.parked_plugged_s(0, 100)
    )


def test_trace_sensors_report_the_departure_in_real_seconds_with_noise() -> None:
    (trace,) = fleet_traces(3, 1, 1, "stays", mean_stay_s=400, mean_drive_s=60)
    first_drive = next(s for s in trace.segments if s.driving)
    # 1970-01-05 (a Monday) at the trace's time first_drive - 100 s, at 10x speed.
    start_ms = int((4 * DAY_S + first_drive.start_s - 100) * 1000)
    clock = SimClock(start_ms, speed=10.0, monotonic=lambda: 0.0)
    assert TraceSensors(trace, clock).read().expected_stay_s == pytest.approx(10.0, abs=1e-3)
    assert TraceSensors(trace, clock, departure_noise=-1).read().expected_stay_s == 0.0
    noisy = [
        TraceSensors(trace, clock, departure_noise=0.5, noise_seed=str(i)).read() for i in range(20)
    ]
    stay = first_drive.start_s - trace.segments[0].start_s
    assert len({round(r.expected_stay_s, 3) for r in noisy}) > 10
    assert all(0 <= r.expected_stay_s <= (100 + 0.5 * stay) / 10 for r in noisy)
    # One draw per stay: the same car reads the same claimed departure twice.
    sensors = TraceSensors(trace, clock, departure_noise=0.5, noise_seed="x")
    assert sensors.read().expected_stay_s == sensors.read().expected_stay_s

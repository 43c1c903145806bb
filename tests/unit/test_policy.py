"""Owner policy: eligibility rules, hysteresis, wire form, pool floor."""

from __future__ import annotations

import pytest

from parkfleet.policy import (
    Conditions,
    Eligibility,
    Policy,
    check_time_zone,
    local_hour,
    utc_offset_minutes_at,
)
from parkfleet.protocol import carlink_pb2 as pb

HOUR_MS = 3_600_000
MIN_MS = 60_000
# 2026-01-15 and 2026-07-15, 00:00 UTC: winter and summer time in New York and Berlin.
JAN_MS = 1_768_435_200_000
JUL_MS = 1_784_073_600_000


def cond(**kw: object) -> Conditions:
    base: dict[str, object] = {
        "parked": True,
        "plugged_in": True,
        "soc_percent": 80.0,
        "gpu_temp_c": 40.0,
        "energy_used_today_wh": 0.0,
        "unix_time_ms": 12 * HOUR_MS,
    }
    base.update(kw)
    return Conditions(**base)  # type: ignore[arg-type]


def test_default_policy_allows_parked_plugged_car() -> None:
    v = Eligibility(Policy()).update(cond())
    assert v.eligible
    assert v.reason == ""


@pytest.mark.parametrize(
    ("policy", "conditions", "reason"),
    [
        (Policy(), cond(parked=False), "Driving"),
        (Policy(), cond(plugged_in=False), "NotPluggedIn"),
        (Policy(min_soc_percent=60), cond(soc_percent=59.9), "BatteryLow"),
        (Policy(blocked_hours=((7, 9),)), cond(unix_time_ms=8 * HOUR_MS), "BlockedHours"),
        (Policy(daily_energy_wh=100), cond(energy_used_today_wh=100), "EnergyBudgetSpent"),
        (Policy(max_gpu_temp_c=80), cond(gpu_temp_c=85), "GpuTooHot"),
    ],
)
def test_each_rule_has_its_reason(policy: Policy, conditions: Conditions, reason: str) -> None:
    v = Eligibility(policy).update(conditions)
    assert not v.eligible
    assert v.reason == reason
    assert v.message


def test_unplugged_allowed_when_policy_says_so() -> None:
    assert Eligibility(Policy(only_while_plugged_in=False)).update(cond(plugged_in=False)).eligible


def test_thermal_hysteresis() -> None:
    e = Eligibility(Policy(max_gpu_temp_c=80))
    assert e.update(cond(gpu_temp_c=79.9)).eligible
    hot = e.update(cond(gpu_temp_c=80))
    assert hot.reason == "GpuTooHot"
    assert "resumes at 75 C" in hot.message
    # Cooler than the limit, but not by the margin: still stopped (no flapping).
    assert e.update(cond(gpu_temp_c=79)).reason == "GpuTooHot"
    assert e.update(cond(gpu_temp_c=75.1)).reason == "GpuTooHot"
    # Tracked during a drive too, like the battery.
    assert e.update(cond(parked=False, gpu_temp_c=90)).reason == "Driving"
    assert e.update(cond(gpu_temp_c=76)).reason == "GpuTooHot"
    assert e.update(cond(gpu_temp_c=75)).eligible
    assert e.update(cond(gpu_temp_c=79)).eligible  # below the limit again: works
    assert Eligibility(Policy()).update(cond(gpu_temp_c=120)).eligible  # 0: no limit


def test_battery_hysteresis() -> None:
    e = Eligibility(Policy(min_soc_percent=60, resume_soc_percent=65))
    assert e.update(cond(soc_percent=61)).eligible
    assert e.update(cond(soc_percent=59)).reason == "BatteryLow"
    assert e.update(cond(soc_percent=62)).reason == "BatteryLow"  # not yet back at 65
    assert e.update(cond(soc_percent=64.9)).reason == "BatteryLow"
    assert e.update(cond(soc_percent=65)).eligible
    assert e.update(cond(soc_percent=61)).eligible  # above min again: keeps working


def test_hysteresis_tracks_battery_while_driving() -> None:
    e = Eligibility(Policy(min_soc_percent=60, resume_soc_percent=65))
    assert e.update(cond(parked=False, soc_percent=50)).reason == "Driving"
    assert e.update(cond(soc_percent=62)).reason == "BatteryLow"


def test_resume_below_min_uses_min() -> None:
    e = Eligibility(Policy(min_soc_percent=60, resume_soc_percent=10))
    assert not e.update(cond(soc_percent=50)).eligible
    assert e.update(cond(soc_percent=60)).eligible


@pytest.mark.parametrize(
    ("window", "hour", "blocked"),
    [
        ((7, 9), 6, False),
        ((7, 9), 7, True),
        ((7, 9), 8, True),
        ((7, 9), 9, False),
        ((22, 6), 23, True),
        ((22, 6), 0, True),
        ((22, 6), 5, True),
        ((22, 6), 6, False),
        ((22, 6), 12, False),
        ((0, 24), 23, True),
        ((5, 5), 5, False),
    ],
)
def test_blocked_hours_windows(window: tuple[int, int], hour: int, blocked: bool) -> None:
    p = Policy(blocked_hours=(window,))
    assert p.in_blocked_hours(hour * HOUR_MS + 59_000) is blocked


def test_blocked_hours_use_owner_local_time() -> None:
    # 06:30 UTC is 08:30 at UTC+2: inside 7..9.
    p = Policy(blocked_hours=((7, 9),), utc_offset_minutes=120)
    assert p.in_blocked_hours(6 * HOUR_MS + 30 * 60_000)
    assert local_hour(0, -60) == 23


def test_blocked_hours_follow_the_owner_zone_and_its_summer_time() -> None:
    p = Policy(blocked_hours=((7, 9),), time_zone="America/New_York")
    assert p.in_blocked_hours(JAN_MS + 12 * HOUR_MS + 30 * MIN_MS)  # 07:30 EST
    assert not p.in_blocked_hours(JAN_MS + 11 * HOUR_MS + 30 * MIN_MS)  # 06:30 EST
    assert p.in_blocked_hours(JUL_MS + 11 * HOUR_MS + 30 * MIN_MS)  # 07:30 EDT
    assert p.in_blocked_hours(JUL_MS + 12 * HOUR_MS + 30 * MIN_MS)  # 08:30 EDT
    assert not p.in_blocked_hours(JUL_MS + 13 * HOUR_MS + 30 * MIN_MS)  # 09:30 EDT
    assert p.utc_offset_minutes_at(JAN_MS) == -300
    assert p.utc_offset_minutes_at(JUL_MS) == -240
    # The zone wins over a fixed offset.
    zoned = Policy(blocked_hours=((7, 9),), time_zone="UTC", utc_offset_minutes=-300)
    assert not zoned.in_blocked_hours(JAN_MS + 12 * HOUR_MS + 30 * MIN_MS)


def test_blocked_hours_in_a_half_hour_zone() -> None:
    p = Policy(blocked_hours=((7, 9),), time_zone="Asia/Kolkata")  # UTC+05:30
    assert not p.in_blocked_hours(JAN_MS + 1 * HOUR_MS + 29 * MIN_MS)  # 06:59
    assert p.in_blocked_hours(JAN_MS + 1 * HOUR_MS + 30 * MIN_MS)  # 07:00
    assert p.in_blocked_hours(JAN_MS + 3 * HOUR_MS + 29 * MIN_MS)  # 08:59
    assert not p.in_blocked_hours(JAN_MS + 3 * HOUR_MS + 30 * MIN_MS)  # 09:00
    assert utc_offset_minutes_at(JUL_MS, "Asia/Kolkata") == 330


def test_blocked_verdict_says_the_local_hour() -> None:
    p = Policy(blocked_hours=((7, 9),), time_zone="America/New_York")
    v = Eligibility(p).update(cond(unix_time_ms=JUL_MS + 11 * HOUR_MS + 30 * MIN_MS))
    assert v.reason == "BlockedHours"
    assert v.message == "local hour 7 is blocked by the owner"
    assert Eligibility(p).update(cond(unix_time_ms=JAN_MS + 11 * HOUR_MS + 30 * MIN_MS)).eligible


def test_local_day_turns_at_the_owner_midnight() -> None:
    p = Policy(time_zone="Europe/Berlin")  # UTC+2 in July
    day = JUL_MS // (24 * HOUR_MS)
    assert p.local_day(JUL_MS - 2 * HOUR_MS - 1) == day - 1  # 23:59:59.999 local
    assert p.local_day(JUL_MS - 2 * HOUR_MS) == day  # 00:00 local
    assert Policy(utc_offset_minutes=60).local_day(JAN_MS - HOUR_MS) == JAN_MS // (24 * HOUR_MS)
    assert Policy().local_day(JAN_MS - 1) == JAN_MS // (24 * HOUR_MS) - 1


def test_unknown_zone_is_a_clear_error() -> None:
    for bad in ("Mars/Olympus_Mons", "America", "../etc/passwd", "/etc/localtime"):
        with pytest.raises(ValueError, match=r"time_zone '.*' is not a known IANA time zone"):
            check_time_zone(bad)
        with pytest.raises(ValueError, match="time_zone"):
            Policy(time_zone=bad)
    check_time_zone("")
    check_time_zone("Europe/Berlin")


def test_zone_offset_of_a_car_clock_past_datetime_range() -> None:
    # A car's clock is a claim: any int64 instant must give an answer, not an error.
    p = Policy(blocked_hours=((7, 9),), time_zone="America/New_York")
    for at in (2**63 - 1, -(2**63)):
        assert p.utc_offset_minutes_at(at) in range(-600, 0)
        p.in_blocked_hours(at)


def test_proto_round_trip() -> None:
    p = Policy(
        only_while_plugged_in=False,
        min_soc_percent=60,
        resume_soc_percent=65,
        blocked_hours=((7, 9), (22, 6)),
        daily_energy_wh=500,
        max_gpu_temp_c=85,
        utc_offset_minutes=-300,
        time_zone="America/New_York",
    )
    assert p.to_proto().time_zone == "America/New_York"
    assert Policy.from_proto(p.to_proto()) == p
    assert Policy.from_proto(pb.OwnerPolicy()) == Policy(only_while_plugged_in=False)


def test_to_proto_rounds_thresholds_up() -> None:
    assert Policy(min_soc_percent=59.5).to_proto().min_soc_percent == 60


def test_stricter_never_looser() -> None:
    owner = Policy(
        only_while_plugged_in=False,
        min_soc_percent=50,
        resume_soc_percent=55,
        blocked_hours=((7, 9),),
        daily_energy_wh=0,
        max_gpu_temp_c=90,
        utc_offset_minutes=60,
        time_zone="Asia/Tokyo",
    )
    floor = Policy(
        only_while_plugged_in=True,
        min_soc_percent=40,
        resume_soc_percent=70,
        blocked_hours=((7, 9), (1, 2)),
        daily_energy_wh=300,
        max_gpu_temp_c=0,
        time_zone="Europe/Berlin",
    )
    s = owner.stricter(floor)
    assert s.only_while_plugged_in
    assert s.min_soc_percent == 50
    assert s.effective_resume_soc_percent == 70
    assert s.blocked_hours == ((7, 9), (1, 2))
    assert s.daily_energy_wh == 300
    assert s.max_gpu_temp_c == 90
    assert s.utc_offset_minutes == 60
    assert s.time_zone == "Asia/Tokyo"  # the owner's: the floor's windows are read in it
    # A floor looser than the owner changes nothing.
    assert owner.stricter(Policy(only_while_plugged_in=False)) == owner


def test_conditions_from_telemetry() -> None:
    t = pb.Telemetry(
        state=pb.PARKED,
        plugged_in=True,
        soc_percent=70,
        gpu_temp_c=50,
        energy_used_today_wh=12,
        unix_time_ms=42,
    )
    c = Conditions.from_telemetry(t)
    assert c == Conditions(True, True, 70, 50, 12, 42)
    assert not Conditions.from_telemetry(pb.Telemetry(state=pb.DRIVING)).parked

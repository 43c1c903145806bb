"""Owner policy: eligibility rules, hysteresis, wire form, pool floor."""

from __future__ import annotations

import pytest

from parkfleet.policy import Conditions, Eligibility, Policy, local_hour
from parkfleet.protocol import carlink_pb2 as pb

HOUR_MS = 3_600_000


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


def test_proto_round_trip() -> None:
    p = Policy(
        only_while_plugged_in=False,
        min_soc_percent=60,
        resume_soc_percent=65,
        blocked_hours=((7, 9), (22, 6)),
        daily_energy_wh=500,
        max_gpu_temp_c=85,
        utc_offset_minutes=-300,
    )
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
    )
    floor = Policy(
        only_while_plugged_in=True,
        min_soc_percent=40,
        resume_soc_percent=70,
        blocked_hours=((7, 9), (1, 2)),
        daily_energy_wh=300,
        max_gpu_temp_c=0,
    )
    s = owner.stricter(floor)
    assert s.only_while_plugged_in
    assert s.min_soc_percent == 50
    assert s.effective_resume_soc_percent == 70
    assert s.blocked_hours == ((7, 9), (1, 2))
    assert s.daily_energy_wh == 300
    assert s.max_gpu_temp_c == 90
    assert s.utc_offset_minutes == 60
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

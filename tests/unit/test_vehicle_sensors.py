"""Sensor sources and the owner's policy file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parkfleet.vehicle.policyfile import load_policy, policy_from_mapping
from parkfleet.vehicle.sensors import FileSensors, MutableSensors, parse_sensor_spec


def test_spec_overrides_defaults() -> None:
    r = parse_sensor_spec("plugged_in=false, soc_percent=55, state=driving")
    assert not r.plugged_in
    assert not r.parked
    assert r.soc_percent == 55.0
    with pytest.raises(ValueError, match="unknown"):
        parse_sensor_spec("warp_drive=1")


def test_file_sensors_follow_the_file_and_survive_garbage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "sensors.json"
    path.write_text(json.dumps({"plugged_in": True, "soc_percent": 70}))
    sensors = FileSensors(path)
    assert sensors.read().plugged_in
    path.write_text(json.dumps({"plugged_in": False, "soc_percent": 70}))
    import os

    os.utime(path, ns=(1, 10**18))  # a distinct mtime even on coarse clocks
    assert not sensors.read().plugged_in
    path.write_text("{not json")
    os.utime(path, ns=(1, 2 * 10**18))
    assert not sensors.read().plugged_in  # last good reading kept
    assert not sensors.read().plugged_in
    path.write_text("[1, 2]")  # not a mapping
    os.utime(path, ns=(1, 3 * 10**18))
    assert not sensors.read().plugged_in
    said = [r.getMessage() for r in caplog.records if "keeping the last reading" in r.getMessage()]
    assert len(said) == 2  # once per distinct problem, not once per read


def test_mutable_sensors() -> None:
    s = MutableSensors()
    s.set(plugged_in=False)
    assert not s.read().plugged_in
    assert s.read().unix_time_ms > 0


def test_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "only_while_plugged_in: true\nmin_soc_percent: 60\nresume-soc-percent: 65\n"
        'blocked_hours: ["7-9", [22, 6]]\ndaily_energy_wh: 2000\n'
    )
    p = load_policy(path)
    assert p.min_soc_percent == 60
    assert p.resume_soc_percent == 65
    assert p.blocked_hours == ((7, 9), (22, 6))
    with pytest.raises(ValueError, match="out of range"):
        policy_from_mapping({"blocked_hours": ["25-3"]})
    with pytest.raises(ValueError, match="unknown"):
        policy_from_mapping({"max_speed": 3})


def test_policy_file_time_zone(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text('blocked_hours: ["7-9"]\ntime_zone: Europe/Berlin\n')
    p = load_policy(path)
    assert p.time_zone == "Europe/Berlin"
    assert p.in_blocked_hours(1_784_073_600_000 + 5 * 3_600_000)  # 05:00 UTC, 07:00 CEST
    assert policy_from_mapping({"time-zone": "UTC"}).time_zone == "UTC"
    with pytest.raises(ValueError, match=r"policy key 'time_zone': time_zone 'Berlin' is not"):
        policy_from_mapping({"time_zone": "Berlin"})
    with pytest.raises(ValueError, match="'time_zone': 60 is not a zone name"):
        policy_from_mapping({"time_zone": 60})

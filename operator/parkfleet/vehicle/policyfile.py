"""The owner's policy as a YAML file on the car.

Example::

    only_while_plugged_in: true
    min_soc_percent: 60
    resume_soc_percent: 65
    blocked_hours: ["7-9", [17, 19]]
    daily_energy_wh: 2000
    max_gpu_temp_c: 85
    time_zone: Europe/Berlin
    departures:
      mon-fri: ["07:45", "17:30"]
      sat: "10:00"

``time_zone`` is an IANA zone: blocked hours and the daily budget's day follow it, summer
time included. Without it, ``utc_offset_minutes: 60`` gives a fixed offset instead.

A car stopped for its battery resumes at ``resume_soc_percent``; one stopped for heat
resumes 5 C below ``max_gpu_temp_c`` (``parkfleet.policy.THERMAL_RESUME_MARGIN_C``).

``departures`` is the owner's usual departure times (``parkfleet.vehicle.departures``):
not part of the policy the gateway is told, only the seconds to the next one while parked.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from parkfleet.policy import Policy, check_time_zone
from parkfleet.vehicle.departures import DepartureSchedule, schedule_from_mapping

__all__ = ["load_owner_settings", "load_policy", "policy_from_mapping"]

# Keys of the file that are not the policy (they stay on the car).
_SCHEDULE_KEY = "departures"

_FIELDS = {
    "only_while_plugged_in": bool,
    "min_soc_percent": float,
    "resume_soc_percent": float,
    "daily_energy_wh": float,
    "max_gpu_temp_c": float,
    "utc_offset_minutes": int,
}


def _window(value: Any) -> tuple[int, int]:
    if isinstance(value, str):
        start, sep, end = value.partition("-")
        if not sep:
            raise ValueError(f"blocked hour window {value!r} is not START-END")
        pair = (int(start), int(end))
    elif isinstance(value, list | tuple) and len(value) == 2:
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"blocked hour window {value!r} is not START-END or [start, end]")
    if not (0 <= pair[0] <= 23 and 1 <= pair[1] <= 24):
        raise ValueError(f"blocked hour window {pair} out of range (start 0..23, end 1..24)")
    return pair


def policy_from_mapping(data: Mapping[str, Any]) -> Policy:
    """Builds a policy from a mapping (keys as in ``Policy``, dashes allowed).

    Raises:
        ValueError: An unknown key or a malformed value.
    """
    values: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key == _SCHEDULE_KEY:
            continue  # the schedule: schedule_from_mapping
        if key == "blocked_hours":
            values[key] = tuple(_window(w) for w in (value or ()))
        elif key == "time_zone":
            if not isinstance(value, str):
                raise ValueError(f"policy key {raw_key!r}: {value!r} is not a zone name")
            try:
                check_time_zone(value)
            except ValueError as e:
                raise ValueError(f"policy key {raw_key!r}: {e}") from None
            values[key] = value
        elif key in _FIELDS:
            values[key] = _FIELDS[key](value)
        else:
            raise ValueError(f"unknown policy key {raw_key!r}")
    return Policy(**values)


def load_owner_settings(path: Path) -> tuple[Policy, DepartureSchedule]:
    """Reads a policy YAML file: the policy and the owner's departure schedule.

    Raises:
        ValueError: The file is not a mapping or has a bad key or value.
    """
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the policy must be a mapping")
    policy = policy_from_mapping(data)
    return policy, schedule_from_mapping(data.get(_SCHEDULE_KEY), policy)


def load_policy(path: Path) -> Policy:
    """Reads a policy YAML file's policy (``load_owner_settings`` without the schedule).

    Raises:
        ValueError: The file is not a mapping or has a bad key or value.
    """
    return load_owner_settings(path)[0]

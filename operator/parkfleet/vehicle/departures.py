"""The owner's departure schedule: when the car usually leaves, and how long it stays.

The schedule lives in the owner's policy file, next to the policy (``policyfile.py``)::

    departures:
      mon-fri: ["07:45", "17:30"]
      sat: "10:00"
    time_zone: Europe/Berlin

Keys are weekdays (``mon`` .. ``sun``), ranges of them (``mon-fri``, ``fri-mon`` wraps) or
``daily``; values are local ``HH:MM`` times (one, or a list). Local time is the policy's
``time_zone`` at each date, summer time included, else its fixed ``utc_offset_minutes``.

The schedule itself never leaves the car: while parked the agent reports only the seconds
to its next departure (``Telemetry.expected_stay_s``), which placement counts coarsely.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from parkfleet.policy import Policy, owner_tz
from parkfleet.vehicle.sensors import SensorReading, Sensors

__all__ = ["DepartureSchedule", "ScheduledSensors", "schedule_from_mapping"]

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class DepartureSchedule:
    """Usual departures per weekday, in the owner's local time.

    Attributes:
        times: Seven tuples (Monday first) of local departure times, sorted.
        time_zone: The owner's IANA zone ("" = the fixed offset).
        utc_offset_minutes: The fixed offset used when ``time_zone`` is empty.
    """

    times: tuple[tuple[dt.time, ...], ...] = ((),) * 7
    time_zone: str = ""
    utc_offset_minutes: int = 0

    def __bool__(self) -> bool:
        return any(self.times)

    def seconds_to_next(self, unix_time_ms: int) -> float:
        """Seconds from ``unix_time_ms`` to the next scheduled departure; 0 when the
        schedule is empty (unknown)."""
        if not self:
            return 0.0
        tz = owner_tz(self.time_zone, self.utc_offset_minutes)
        now_s = unix_time_ms / 1000.0
        today = dt.datetime.fromtimestamp(now_s, tz=tz).date()
        # Today's departures still ahead, then the next days'; a week later is the latest.
        for offset in range(8):
            day = today + dt.timedelta(days=offset)
            for at in self.times[day.weekday()]:
                instant = dt.datetime.combine(day, at, tzinfo=tz).timestamp()
                if instant > now_s:
                    return instant - now_s
        return 0.0  # unreachable: a non-empty schedule has a departure within 8 days


def _days(key: str) -> list[int]:
    key = key.strip().lower()
    if key == "daily":
        return list(range(7))
    first, sep, last = key.partition("-")
    if first not in _DAYS or (sep and last not in _DAYS):
        raise ValueError(f"departures key {key!r} is not a weekday (mon..sun), a range or daily")
    a = _DAYS.index(first)
    b = _DAYS.index(last) if sep else a
    return [(a + i) % 7 for i in range((b - a) % 7 + 1)]


def _time(value: Any) -> dt.time:
    text = str(value).strip()
    hour, sep, minute = text.partition(":")
    try:
        if not sep or len(minute) != 2:
            raise ValueError
        return dt.time(int(hour), int(minute))
    except ValueError:
        raise ValueError(f"departure time {value!r} is not HH:MM (00:00 to 23:59)") from None


def schedule_from_mapping(data: Mapping[str, Any] | None, policy: Policy) -> DepartureSchedule:
    """The schedule of a policy file's ``departures`` mapping, in the policy's local time.

    Raises:
        ValueError: A key is not a weekday, range or ``daily``, or a time is not HH:MM.
    """
    per_day: list[set[dt.time]] = [set() for _ in range(7)]
    if data is not None and not isinstance(data, Mapping):
        raise ValueError(f"departures must map weekdays to times, not {data!r}")
    for key, value in (data or {}).items():
        values = value if isinstance(value, list | tuple) else [value]
        times = [_time(v) for v in values]
        for d in _days(str(key)):
            per_day[d].update(times)
    return DepartureSchedule(
        tuple(tuple(sorted(s)) for s in per_day), policy.time_zone, policy.utc_offset_minutes
    )


class ScheduledSensors:
    """Sensors whose readings carry the time to the owner's next departure while parked
    (a reading that already says, e.g. from the car's own navigation, keeps its figure)."""

    def __init__(self, sensors: Sensors, schedule: DepartureSchedule) -> None:
        self._sensors = sensors
        self._schedule = schedule

    def read(self) -> SensorReading:
        """The wrapped reading, with ``expected_stay_s`` from the schedule when parked."""
        reading = self._sensors.read()
        if not reading.parked or reading.expected_stay_s > 0 or not self._schedule:
            return reading
        return replace(
            reading, expected_stay_s=self._schedule.seconds_to_next(reading.unix_time_ms)
        )

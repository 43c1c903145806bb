"""The e2e stack's simulated fleets start at a fixed hour that no simulated owner blocks.

Started at the wall clock's hour, a fleet's cars offered fewer GPUs between 07:00 and
09:00 (a fifth of the simulated owners block those hours), and tests that wait for every
car's GPUs failed at that time of day only. Owners block hours in their own time zones,
so the fixed hour must be clear of every zone's window on every day the stack may run:
it uses today's date, so the year ahead is checked, summer time included.
"""

from __future__ import annotations

import inspect
import random
import time

from parkfleet.devstack import DevStack
from parkfleet.policy import Policy
from parkfleet.sim.fleet import OWNER_TIME_ZONES, owner_policy

DAY_MS = 86_400_000
HOUR_MS = 3_600_000


def _drawn(count: int) -> list[Policy]:
    return [owner_policy(random.Random(f"0:policy:{i}")) for i in range(count)]


def test_owners_live_in_several_zones() -> None:
    zones = {p.time_zone for p in _drawn(2000)}
    assert zones == set(OWNER_TIME_ZONES)
    # At least one zone is off the whole hour, one follows summer time.
    jan, jul = 0, 181 * DAY_MS
    offsets = {
        z: (
            Policy(time_zone=z).utc_offset_minutes_at(jan),
            Policy(time_zone=z).utc_offset_minutes_at(jul),
        )
        for z in zones
    }
    assert any(a % 60 for a, _ in offsets.values())
    assert any(a != b for a, b in offsets.values())


def test_stack_fleets_start_outside_every_window_simulated_owners_block() -> None:
    hour = inspect.signature(DevStack.start_fleet).parameters["start_hour"].default
    assert hour is not None, "the stack's fleets must not start at the wall clock's hour"
    drawn = _drawn(2000)
    assert any(p.blocked_hours for p in drawn), "the draw no longer blocks hours: revisit"
    # Owners differ only in what is checked here by their windows and zones.
    distinct = {(p.blocked_hours, p.time_zone, p.utc_offset_minutes): p for p in drawn}
    today = int(time.time() * 1000) // DAY_MS
    for day in range(today, today + 366):
        start_ms = day * DAY_MS + int(hour * HOUR_MS)
        # A test runs minutes; its fleet's clock runs at speed 1 (or a little faster).
        for minutes in range(0, 3 * 60, 5):
            at = start_ms + minutes * 60_000
            blocked = [k for k, p in distinct.items() if p.in_blocked_hours(at)]
            assert not blocked, f"day {day}, {hour:g}:00 UTC + {minutes} min: {blocked} block it"


def test_a_fleet_started_at_noon_utc_would_offer_fewer_cars() -> None:
    # What the fixed hour avoids: 12:30 UTC in January is 07:30 in New York, where some
    # of the first simulated owners block the hour (12:00 UTC was the default before zones).
    at = 12 * HOUR_MS + 30 * 60_000
    drawn = _drawn(200)
    assert sum(p.in_blocked_hours(at) for p in drawn) >= 1
    assert all(p.time_zone == "America/New_York" for p in drawn if p.in_blocked_hours(at))

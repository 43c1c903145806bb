"""The e2e stack's simulated fleets start at a fixed hour that no simulated owner blocks.

Started at the wall clock's hour, a fleet's cars offered fewer GPUs between 07:00 and
09:00 UTC (a fifth of the simulated owners block those hours), and tests that wait for
every car's GPUs failed at that time of day only.
"""

from __future__ import annotations

import inspect
import random

from parkfleet.devstack import DevStack
from parkfleet.sim.fleet import owner_policy


def test_stack_fleets_start_outside_every_window_simulated_owners_block() -> None:
    hour = inspect.signature(DevStack.start_fleet).parameters["start_hour"].default
    assert hour is not None, "the stack's fleets must not start at the wall clock's hour"
    start_ms = int(hour * 3_600_000)
    drawn = [owner_policy(random.Random(f"0:policy:{i}")) for i in range(2000)]
    assert any(p.blocked_hours for p in drawn), "the draw no longer blocks hours: revisit"
    # A test runs minutes; its fleet's clock runs at speed 1 (or a little faster).
    for minutes in range(0, 3 * 60, 5):
        at = start_ms + minutes * 60_000
        blocked = [i for i, p in enumerate(drawn) if p.in_blocked_hours(at)]
        assert not blocked, f"{len(blocked)} owners block {hour:g}:00 + {minutes} min"


def test_a_fleet_started_in_the_blocked_hours_would_offer_fewer_cars() -> None:
    # What the fixed hour avoids: at 08:00 UTC the first 8 simulated owners block one car.
    drawn = [owner_policy(random.Random(f"0:policy:{i}")) for i in range(8)]
    assert sum(p.in_blocked_hours(8 * 3_600_000) for p in drawn) >= 1

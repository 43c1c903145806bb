"""Reconnect backoff: jittered, exponential, capped, bounded."""

from __future__ import annotations

import random

from parkfleet.backoff import Backoff


def test_delays_grow_exponentially_within_the_cap() -> None:
    b = Backoff(base_s=1.0, cap_s=8.0, floor_s=0.0, rng=random.Random(1))
    ceilings = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    for ceiling in ceilings:
        delay = b.next_delay()
        assert delay is not None
        assert 0.0 <= delay <= ceiling


def test_jitter_spreads_a_fleet() -> None:
    delays = {Backoff(base_s=1.0, rng=random.Random(i)).next_delay() for i in range(50)}
    assert len(delays) > 40  # not in lockstep


def test_floor_keeps_a_minimum_delay() -> None:
    b = Backoff(base_s=0.001, floor_s=0.05, rng=random.Random(0))
    assert all((b.next_delay() or 0) >= 0.05 for _ in range(10))


def test_bounded_attempts_then_none_and_reset() -> None:
    b = Backoff(max_attempts=3, rng=random.Random(0))
    assert [b.next_delay() is not None for _ in range(4)] == [True, True, True, False]
    b.reset()
    assert b.next_delay() is not None


def test_huge_attempt_counts_do_not_overflow() -> None:
    b = Backoff(base_s=1.0, cap_s=5.0, rng=random.Random(0))
    b.attempts = 10_000
    delay = b.next_delay()
    assert delay is not None
    assert delay <= 5.0

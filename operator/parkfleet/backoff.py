"""Jittered exponential backoff: a car reconnecting to its gateway, a node agent's watch
retrying the API server.

"Full jitter": each delay is uniform in [0, min(cap, base * 2**n)], so a fleet that lost its
gateway at the same instant does not come back in lockstep.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass
class Backoff:
    """Delays between reconnect attempts.

    Attributes:
        base_s: Upper bound of the first delay.
        cap_s: Upper bound of any delay.
        max_attempts: Attempts allowed before ``next_delay`` returns None (None = unbounded).
        floor_s: Lower bound of any delay, so a broken gateway is never hammered.
        rng: Random source (inject a seeded one for repeatable tests).
    """

    base_s: float = 0.5
    cap_s: float = 30.0
    max_attempts: int | None = None
    floor_s: float = 0.05
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def next_delay(self) -> float | None:
        """Returns the delay before the next attempt, or None when attempts are spent."""
        if self.max_attempts is not None and self.attempts >= self.max_attempts:
            return None
        ceiling = min(self.cap_s, self.base_s * (2.0 ** min(self.attempts, 62)))
        self.attempts += 1
        return max(self.floor_s, self.rng.uniform(0.0, ceiling))

    def reset(self) -> None:
        """Starts over after a connection that worked."""
        self.attempts = 0

    async def wait(self) -> None:
        """Sleeps the next delay (the cap once attempts are spent)."""
        delay = self.next_delay()
        await asyncio.sleep(self.cap_s if delay is None else delay)

"""A ticker on the running event loop: its largest gap shows whether something blocked it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from typing import Any

__all__ = ["SLOW_HASH_S", "LoopTicks", "slow_sha256"]

# How long slow_sha256 takes, whatever the input.
SLOW_HASH_S = 2.0


def slow_sha256(data: bytes = b"") -> Any:
    """hashlib.sha256, as slow as hashing a few GB on a car's CPU.

    With SHA-NI a test machine hashes ~1.5 GB/s, so a real file large enough to show a
    blocked loop would not fit it. Like hashlib's, the wait holds no GIL.
    """
    time.sleep(SLOW_HASH_S)
    return hashlib.sha256(data)


class LoopTicks:
    """Ticks every 10 ms on the running loop until stopped; records the largest gap."""

    def __init__(self) -> None:
        self.count = 0
        self.largest_gap_s = 0.0
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            self.largest_gap_s = max(self.largest_gap_s, now - last)
            self.count += 1
            last = now

    async def stop(self) -> None:
        """Stops ticking."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

"""Task log lines per pod, kept in memory for ``kubectl logs`` (and ``-f``)."""

from __future__ import annotations

import asyncio
import datetime
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["LogStore", "result_lines"]

MAX_LINES_PER_POD = 5000
MAX_RESULT_LOG_ITEMS = 64  # per chunk: a log is for people, the result file is for data


@dataclass
class _PodLog:
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_LINES_PER_POD))
    written: int = 0  # total lines ever written, so followers survive truncation
    closed: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class LogStore:
    """Bounded log buffers, one per pod (``namespace/name``)."""

    def __init__(self) -> None:
        self._pods: dict[str, _PodLog] = {}

    def _get(self, key: str) -> _PodLog:
        log = self._pods.get(key)
        if log is None:
            log = self._pods[key] = _PodLog()
        return log

    def write(self, key: str, *lines: str) -> None:
        """Appends lines, each stamped with the current UTC time (like a kubelet does)."""
        log = self._get(key)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for line in lines:
            log.lines.append(f"{stamp} {line}")
        log.written += len(lines)
        log.changed.set()
        log.changed = asyncio.Event()

    def close(self, key: str) -> None:
        """No more lines will come (the task ended): followers finish."""
        log = self._get(key)
        log.closed = True
        log.changed.set()

    def drop(self, key: str) -> None:
        """Forgets a pod's log (the pod is gone)."""
        log = self._pods.pop(key, None)
        if log is not None:
            log.closed = True
            log.changed.set()

    def has(self, key: str) -> bool:
        """Whether there is a log for the pod."""
        return key in self._pods

    def lines(self, key: str, *, timestamps: bool = False, tail: int | None = None) -> list[str]:
        """The lines kept so far."""
        log = self._pods.get(key)
        if log is None:
            return []
        out = list(log.lines)
        if tail is not None:
            out = out[-tail:] if tail > 0 else []
        return out if timestamps else [line.split(" ", 1)[1] for line in out]

    async def follow(
        self, key: str, *, timestamps: bool = False, tail: int | None = None
    ) -> AsyncIterator[str]:
        """The kept lines, then new ones as they come, until the task ends."""
        log = self._get(key)
        for line in self.lines(key, timestamps=timestamps, tail=tail):
            yield line
        seen = log.written
        while not log.closed:
            await log.changed.wait()
            new = log.written - seen
            if new > 0:
                fresh = list(log.lines)[-min(new, len(log.lines)) :]
                for line in fresh:
                    yield line if timestamps else line.split(" ", 1)[1]
                seen = log.written


def result_lines(first: int, outputs: Mapping[str, npt.NDArray[np.generic]]) -> list[str]:
    """Readable lines for a result chunk: one per item, the first few outputs of each."""
    if not outputs:
        return []
    n = len(next(iter(outputs.values())))
    lines = []
    for i in range(min(n, MAX_RESULT_LOG_ITEMS)):
        parts = []
        for name, array in outputs.items():
            value = array[i]
            if np.ndim(value) == 0:
                parts.append(f"{name}={value.item()}")
            else:
                flat = np.ravel(value)
                shown = ", ".join(f"{x:.4g}" for x in flat[:4])
                parts.append(f"{name}=[{shown}{', ...' if flat.size > 4 else ''}]")
        lines.append(f"item {first + i}: " + " ".join(parts))
    if n > MAX_RESULT_LOG_ITEMS:
        lines.append(f"... {n - MAX_RESULT_LOG_ITEMS} more items in this chunk")
    return lines

"""In-memory inputs and results for a task (tests, benchmarks, small in-process jobs)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import numpy as np

__all__ = ["ArrayInput", "MemorySink"]


class ArrayInput:
    """An :class:`InputSource` over an in-memory array, or named arrays of a model of
    several inputs (item ``i`` is ``array[i - base]``)."""

    def __init__(self, array: np.ndarray | Mapping[str, np.ndarray], base: int = 0) -> None:
        self.array = array
        self.base = base

    def read(self, start: int, end: int) -> np.ndarray | dict[str, np.ndarray]:
        """Items ``[start, end)``."""
        rows = slice(start - self.base, end - self.base)
        if isinstance(self.array, np.ndarray):
            return self.array[rows]
        return {name: a[rows] for name, a in self.array.items()}


class MemorySink:
    """A :class:`ResultSink` that keeps results in memory (tests, small jobs)."""

    def __init__(self) -> None:
        self.chunks: list[tuple[int, dict[str, np.ndarray]]] = []
        self.completed = asyncio.Event()

    async def write(self, first_item: int, outputs: Mapping[str, np.ndarray]) -> None:
        """Keeps a copy of the chunk."""
        self.chunks.append((first_item, {k: np.array(v) for k, v in outputs.items()}))

    async def complete(self) -> None:
        """Marks the results complete."""
        self.completed.set()

    def items(self) -> list[int]:
        """Every item number written, in the order written."""
        out: list[int] = []
        for first, outputs in self.chunks:
            n = len(next(iter(outputs.values())))
            out.extend(range(first, first + n))
        return out

    def output(self, name: str) -> np.ndarray:
        """One output over all items written, concatenated."""
        return np.concatenate([outputs[name] for _, outputs in self.chunks])

"""The gateway's in-process API types: what a task is, what happens to it, capacity."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

__all__ = [
    "ArrayInput",
    "CellCapacity",
    "EventKind",
    "InputSource",
    "MemorySink",
    "ModelRef",
    "ResultSink",
    "TaskEvent",
    "TaskSpec",
    "TaskState",
    "TaskStatus",
]

TaskState = Literal["Queued", "Offered", "Running", "Succeeded", "Failed", "Cancelled"]
EventKind = Literal[
    "placed",
    "accepted",
    "refused",
    "progress",
    "checkpoint",
    "moved",
    "log",
    "lost",
    "succeeded",
    "failed",
    "cancelled",
]


class InputSource(Protocol):
    """Where a task's inputs come from."""

    def read(self, start: int, end: int) -> np.ndarray | Awaitable[np.ndarray]:
        """Items ``[start, end)`` as one array whose first dimension is the item.

        May return the array or an awaitable of it (do slow I/O asynchronously).
        """
        ...


class ResultSink(Protocol):
    """Where a task's results go; sees every item exactly once, in order."""

    async def write(self, first_item: int, outputs: Mapping[str, np.ndarray]) -> None:
        """Takes outputs for items starting at ``first_item`` (first dim = items).

        The arrays may be read-only views; copy them to keep them past the call.
        """
        ...

    async def complete(self) -> None:
        """Called once, after the last item's outputs were written."""
        ...


class ArrayInput:
    """An :class:`InputSource` over an in-memory array (item ``i`` is ``array[i - base]``)."""

    def __init__(self, array: np.ndarray, base: int = 0) -> None:
        self.array = array
        self.base = base

    def read(self, start: int, end: int) -> np.ndarray:
        """Items ``[start, end)``."""
        return self.array[start - self.base : end - self.base]


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


@dataclass(frozen=True)
class ModelRef:
    """A model by content hash.

    Attributes:
        sha256: Hex digest; the car verifies it before loading.
        uri: ``"gateway:"`` (fetched through the gateway's model store) or a
            ``file://`` / ``http(s)://`` URL the car fetches directly.
        size_bytes: Size, when known (0 otherwise).
    """

    sha256: str
    uri: str = "gateway:"
    size_bytes: int = 0


@dataclass(frozen=True)
class TaskSpec:
    """A task: a range of items of one model, to run on one car of one cell.

    Attributes:
        task_id: Unique id (e.g. the pod's uid).
        cell: The cell that runs it.
        runtime: A runtime cars announce, e.g. ``"onnxruntime"``.
        model: The model.
        input_name: The model's input.
        output_names: The model outputs to return.
        batch_size: Items per inference call on the car.
        item_start: First item.
        item_end: One past the last item.
        inputs: Where inputs come from.
        sink: Where results go.
        gpu_memory_mib: GPU memory the task needs.
        checkpoint_interval_s: How often the car checkpoints.
        grace_s: How long the task may wait for a car before failing with
            ``NoEligibleCar``; None takes the gateway's default.
        group: Tasks of one group (copies of a redundant unit) run on distinct cars.
    """

    task_id: str
    cell: str
    runtime: str
    model: ModelRef
    input_name: str
    output_names: tuple[str, ...]
    batch_size: int
    item_start: int
    item_end: int
    inputs: InputSource = field(repr=False, compare=False)
    sink: ResultSink = field(repr=False, compare=False)
    gpu_memory_mib: int = 0
    checkpoint_interval_s: float = 5.0
    grace_s: float | None = None
    group: str = ""


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """Something that happened to a task.

    Attributes:
        kind: placed, accepted, refused, progress, checkpoint, moved, log, lost,
            succeeded, failed or cancelled.
        task_id: The task.
        cell: Its cell.
        attempt: The attempt it concerns (0 before the first placement).
        car_id: The car concerned (for ``moved``: the new car).
        from_car: For ``moved`` and ``lost``: the car the task left.
        items_done: Items whose results reached the sink.
        checkpoint: The last checkpoint (first item still to do).
        reason: CamelCase reason for refused, lost, failed, cancelled, moved.
        message: Human-readable detail.
        lines: Log lines (``log``).
        energy_wh: Energy the car reported (``succeeded`` / ``failed``).
        energy_modelled: Whether that energy was modelled rather than measured.
    """

    kind: EventKind
    task_id: str
    cell: str
    attempt: int = 0
    car_id: str = ""
    from_car: str = ""
    items_done: int = 0
    checkpoint: int = 0
    reason: str = ""
    message: str = ""
    lines: tuple[str, ...] = ()
    energy_wh: float = 0.0
    energy_modelled: bool = False


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """A snapshot of a task.

    Attributes:
        task_id: The task.
        cell: Its cell.
        state: Queued, Offered, Running, Succeeded, Failed or Cancelled.
        attempt: Current attempt (0 before the first placement).
        car_id: The car holding it now ("" when none).
        items_done: Items whose results reached the sink.
        checkpoint: The last checkpoint (first item still to do).
        cars: Every car that held it, in order.
        moves: How many times it moved to another car.
        reason: Why it failed or was cancelled.
        message: Detail.
        energy_wh: Energy reported for it across attempts.
        energy_modelled: Whether any of that energy was modelled.
    """

    task_id: str
    cell: str
    state: TaskState
    attempt: int
    car_id: str
    items_done: int
    checkpoint: int
    cars: tuple[str, ...]
    moves: int
    reason: str
    message: str
    energy_wh: float
    energy_modelled: bool


@dataclass(frozen=True, slots=True)
class CellCapacity:
    """What a cell can take now.

    Attributes:
        cell: The cell id.
        pool: Its pool.
        cars_connected: Cars with an open stream.
        cars_eligible: Cars the owner policy allows to work now.
        cars_busy: Cars running (or offered) a task.
        gpus_allocatable: GPUs of eligible, idle cars.
        max_gpu_memory_mib: Largest GPU memory among eligible, idle cars.
        runtimes: Runtimes offered by eligible, idle cars.
    """

    cell: str
    pool: str
    cars_connected: int
    cars_eligible: int
    cars_busy: int
    gpus_allocatable: int
    max_gpu_memory_mib: int
    runtimes: frozenset[str]

"""Sending a task to a car: the offer, then its inputs as size-bounded chunks.

Inputs travel only inside the car's mTLS stream (decision 5). Chunks are as large as
the tensor bound allows (whole batches when possible) and each is encoded straight to
the wire and freed before the next is read, so a task holds at most one chunk.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np

from parkfleet.gateway.registry import CarState
from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol.chunks import encode_input
from parkfleet.protocol.limits import MAX_TENSOR_BYTES
from parkfleet.taskport import TaskSpec

__all__ = ["InputError", "offer_message", "read_items", "stream_inputs"]


class InputError(Exception):
    """The task's input source failed or returned something that is not its items."""


def offer_message(spec: TaskSpec, attempt: int, resume_from: int) -> pb.GatewayMessage:
    """The ``TaskOffer`` of one attempt, resuming at item ``resume_from``."""
    return pb.GatewayMessage(
        offer=pb.TaskOffer(
            task_id=spec.task_id,
            attempt=attempt,
            runtime=spec.runtime,
            model=pb.ModelRef(
                uri=spec.model.uri, sha256=spec.model.sha256, size_bytes=spec.model.size_bytes
            ),
            input_name=spec.input_name,
            output_names=list(spec.output_names),
            batch_size=spec.batch_size,
            item_start=spec.item_start,
            item_end=spec.item_end,
            resume_from=resume_from,
            gpu_memory_mib=spec.gpu_memory_mib,
            checkpoint_interval_s=spec.checkpoint_interval_s,
        )
    )


async def read_items(spec: TaskSpec, start: int, end: int) -> np.ndarray:
    """Items ``[start, end)`` of the task's input.

    Raises:
        InputError: The source failed, or returned something else than those items.
    """
    try:
        got = spec.inputs.read(start, end)
        array = await got if inspect.isawaitable(got) else got
    except Exception as e:  # a source's own errors (a file gone, a bad format) are the input's
        raise InputError(str(e) or repr(e)) from e
    if not isinstance(array, np.ndarray):
        raise InputError(f"input source returned {type(array).__name__}, not an array")
    if array.ndim < 1 or array.shape[0] != end - start:
        raise InputError(f"input source returned shape {array.shape} for items [{start}, {end})")
    return array


async def stream_inputs(
    car: CarState, spec: TaskSpec, attempt: int, start: int, current: Callable[[], bool]
) -> None:
    """Sends the offer, then items ``[start, item_end)`` to ``car``.

    Args:
        current: Whether the attempt still holds the car; sending stops when not.

    Raises:
        InputError: The input source failed (the task cannot run anywhere).
        Exception: Whatever the car's stream raises when it went away.
    """
    await car.send(offer_message(spec, attempt, start))
    step = spec.batch_size
    sized = False
    while start < spec.item_end and current():
        n = min(step, spec.item_end - start)
        array = await read_items(spec, start, start + n)
        if not current():
            return
        msg = encode_input(
            spec.task_id, attempt, start, start + n == spec.item_end, spec.input_name, array
        )
        if not sized:
            per_item = max(1, array.nbytes // n)
            step = max(1, MAX_TENSOR_BYTES // per_item)
            if step >= spec.batch_size:
                step -= step % spec.batch_size
            sized = True
        await car.send(msg)
        del msg  # freed before the next chunk is encoded, so that one can reuse the memory
        start += n

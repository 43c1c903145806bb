"""Sending a task to a car: the offer, then its inputs as size-bounded chunks.

Inputs travel only inside the car's mTLS stream (decision 5). Chunks are as large as
the tensor bound allows (whole batches when possible) and each is encoded straight to
the wire and freed before the next is read, so a task holds at most one chunk. A chunk
carries one tensor per model input; when an input varies in length (a text's tokens),
chunks are one batch each, as the source padded them, so that padding stays per batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

import numpy as np

from parkfleet.gateway.registry import CarState
from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol.chunks import encode_input
from parkfleet.protocol.limits import MAX_TENSOR_BYTES
from parkfleet.taskport import InvalidItems, TaskSpec

__all__ = ["InputError", "offer_message", "read_items", "stream_inputs"]


class InputError(Exception):
    """The task's input source failed or returned something that is not its items.

    Attributes:
        invalid: The items themselves are wrong (:class:`~parkfleet.taskport.InvalidItems`):
            no retry can help. Otherwise the source may succeed later (storage away).
    """

    def __init__(self, message: str, *, invalid: bool = False) -> None:
        super().__init__(message)
        self.invalid = invalid


def offer_message(
    spec: TaskSpec, attempt: int, resume_from: int, checkpoint_interval_s: float | None = None
) -> pb.GatewayMessage:
    """The ``TaskOffer`` of one attempt, resuming at item ``resume_from``, checkpointing
    every ``checkpoint_interval_s`` (None: the spec's)."""
    if checkpoint_interval_s is None:
        checkpoint_interval_s = spec.checkpoint_interval_s
    return pb.GatewayMessage(
        offer=pb.TaskOffer(
            task_id=spec.task_id,
            attempt=attempt,
            runtime=spec.runtime,
            model=pb.ModelRef(
                uri=spec.model.uri, sha256=spec.model.sha256, size_bytes=spec.model.size_bytes
            ),
            input_name=spec.input_name,
            input_names=list(spec.input_names) if len(spec.input_names) > 1 else [],
            output_names=list(spec.output_names),
            batch_size=spec.batch_size,
            item_start=spec.item_start,
            item_end=spec.item_end,
            resume_from=resume_from,
            gpu_memory_mib=spec.gpu_memory_mib,
            checkpoint_interval_s=checkpoint_interval_s,
        )
    )


async def read_items(spec: TaskSpec, start: int, end: int) -> dict[str, np.ndarray]:
    """Items ``[start, end)`` of the task's input, by input name (in the model's order).

    Raises:
        InputError: The source failed, or returned something else than those items of
            the task's inputs.
    """
    try:
        got = spec.inputs.read(start, end)
        items = await got if inspect.isawaitable(got) else got
    except InvalidItems as e:  # a line that is no text, no list of numbers: the input's fault
        raise InputError(str(e), invalid=True) from e
    except Exception as e:  # a source's own errors (a file gone, storage away) are the input's
        raise InputError(str(e) or repr(e)) from e
    names = spec.input_names
    if isinstance(items, np.ndarray):
        if len(names) > 1:
            raise InputError(
                f"input source returned one array; the model takes inputs {', '.join(names)}"
            )
        arrays = {names[0]: items}
    elif isinstance(items, Mapping):
        missing = [n for n in names if n not in items]
        if missing:
            raise InputError(
                f"input source gave no input {missing[0]!r} (the model takes "
                f"{', '.join(names)}; the source gave {', '.join(map(str, items)) or 'none'})"
            )
        # More than the model takes (a tokenizer's token_type_ids) stays on the gateway.
        arrays = {n: items[n] for n in names}
    else:
        raise InputError(
            f"input source returned {type(items).__name__}, not an array or named arrays"
        )
    declared = {s.name: s for s in spec.input_specs}
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray):
            raise InputError(f"input {name!r}: the source returned {type(array).__name__}")
        if array.ndim < 1 or array.shape[0] != end - start:
            raise InputError(
                f"input {name!r}: the source returned shape {array.shape} for items "
                f"[{start}, {end})"
            )
        want = declared[name].dtype if name in declared else ""
        if want and array.dtype != np.dtype(want):
            raise InputError(f"input {name!r} is {array.dtype.name}; the model takes {want}")
    return arrays


async def stream_inputs(
    car: CarState,
    spec: TaskSpec,
    attempt: int,
    start: int,
    current: Callable[[], bool],
    checkpoint_interval_s: float | None = None,
) -> None:
    """Sends the offer, then items ``[start, item_end)`` to ``car``.

    Args:
        current: Whether the attempt still holds the car; sending stops when not.
        checkpoint_interval_s: The offer's checkpoint interval (None: the spec's).

    Raises:
        InputError: The input source failed (the task cannot run anywhere).
        Exception: Whatever the car's stream raises when it went away.
    """
    await car.send(offer_message(spec, attempt, start, checkpoint_interval_s))
    step = spec.batch_size
    # Inputs of variable length come one batch per read: the source pads each read.
    sized = spec.padded_per_batch or getattr(spec.inputs, "padded", False) is True
    while start < spec.item_end and current():
        n = min(step, spec.item_end - start)
        arrays = await read_items(spec, start, start + n)
        if not current():
            return
        per_item = max(1, sum(a.nbytes for a in arrays.values()) // n)
        # All of a chunk's tensors share one message: together they keep the tensor bound.
        fits = max(1, MAX_TENSOR_BYTES // per_item)
        for first in range(0, n, fits):
            count = min(fits, n - first)
            (name, array), *more = (
                (k, v[first : first + count] if count < n else v) for k, v in arrays.items()
            )
            if first and not current():
                return
            at = start + first
            msg = encode_input(
                spec.task_id, attempt, at, at + count == spec.item_end, name, array, more
            )
            await car.send(msg)
            del msg  # freed before the next chunk is encoded, so that one can reuse the memory
        if not sized:
            step = fits
            if step >= spec.batch_size:
                step -= step % spec.batch_size
            sized = True
        start += n

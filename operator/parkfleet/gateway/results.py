"""Checks on what reaches the gateway's side of a task: its spec, a car's result chunks.

Pure functions. A result chunk that does not fit its task raises
:class:`~parkfleet.protocol.limits.ProtocolViolation`, which closes the car's stream.
"""

from __future__ import annotations

import math
import re

import numpy as np

from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol.chunks import ResultData
from parkfleet.protocol.limits import MAX_NAMES, ProtocolViolation, check_text, tensor_from_proto
from parkfleet.taskport import OutputSpec, TaskSpec

__all__ = ["MAX_RESULT_ITEM_BYTES", "check_result", "check_spec"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# One item's result for one output, where the model leaves its shape open: a bound on what
# a car can make the gateway store per item (1-item results of [1, 10**6] floats are 4 MB).
MAX_RESULT_ITEM_BYTES = 1024 * 1024


def check_spec(spec: TaskSpec) -> None:
    """Refuses a spec the gateway cannot run.

    Raises:
        ValueError: Every problem found, in one message.
    """
    problems = []
    if not spec.task_id:
        problems.append("task_id is empty")
    try:
        check_text(spec.task_id, "task_id")
    except ProtocolViolation as e:
        problems.append(str(e))
    if not spec.cell:
        problems.append("cell is empty")
    if not spec.runtime:
        problems.append("runtime is empty")
    if not _SHA256.match(spec.model.sha256):
        problems.append(f"model sha256 {spec.model.sha256!r} is not 64 lowercase hex digits")
    if not spec.input_name:
        problems.append("input_name is empty")
    names = spec.input_names
    if len(names) > MAX_NAMES:
        problems.append(f"the model has {len(names)} inputs, the car link carries {MAX_NAMES}")
    if len(set(names)) != len(names) or "" in names:
        problems.append(f"input names {list(names)} are not distinct names")
    if not spec.output_names:
        problems.append("output_names is empty")
    if spec.batch_size < 1:
        problems.append(f"batch_size {spec.batch_size} < 1")
    if not 0 <= spec.item_start < spec.item_end:
        problems.append(f"item range [{spec.item_start}, {spec.item_end}) is empty or negative")
    if spec.gpu_memory_mib < 0:
        problems.append("gpu_memory_mib < 0")
    if problems:
        raise ValueError(f"task {spec.task_id!r}: " + "; ".join(problems))


def check_result(
    spec: TaskSpec, r: pb.ResultChunk | ResultData, delivered: int
) -> dict[str, np.ndarray]:
    """The outputs of a result chunk for the items from ``r.first_item`` on.

    Args:
        delivered: The first item whose result the sink does not have yet.

    Raises:
        ProtocolViolation: Outputs not asked for, missing or repeated, disagreeing on
            the number of items, outside the task's range, or leaving a gap.
    """
    outputs: dict[str, np.ndarray] = {}
    declared = {o.name: o for o in spec.output_specs}
    n = -1
    for t in r.outputs:
        if t.name not in spec.output_names:
            raise ProtocolViolation(f"result output {t.name!r} was not asked for")
        if t.name in outputs:
            raise ProtocolViolation(f"result output {t.name!r} appears twice")
        array = tensor_from_proto(t)
        if array.ndim < 1:
            raise ProtocolViolation(f"result output {t.name!r} is a scalar, not items")
        if t.name in declared:
            _check_declared(array, declared[t.name])
        if n == -1:
            n = array.shape[0]
        elif array.shape[0] != n:
            raise ProtocolViolation("result outputs disagree on the number of items")
        outputs[t.name] = array
    if len(outputs) != len(spec.output_names):
        missing = sorted(set(spec.output_names) - outputs.keys())
        raise ProtocolViolation(f"result lacks outputs {missing}")
    first = r.first_item
    if n < 1 or first < spec.item_start or first + n > spec.item_end:
        raise ProtocolViolation(
            f"result for items [{first}, {first + n}) is outside task {r.task_id!r}'s "
            f"range [{spec.item_start}, {spec.item_end})"
        )
    if first > delivered:
        raise ProtocolViolation(
            f"result starts at item {first} but item {delivered} is next: "
            "results must come in order without gaps"
        )
    return outputs


def _check_declared(array: np.ndarray, out: OutputSpec) -> None:
    """Refuses results whose type or item shape is not what the model declares."""
    if out.dtype and array.dtype != np.dtype(out.dtype):
        raise ProtocolViolation(
            f"result output {out.name!r} is {array.dtype.name}; the model gives {out.dtype}"
        )
    shape = array.shape[1:]
    if len(shape) != len(out.item_shape) or any(
        want is not None and got != want for got, want in zip(shape, out.item_shape, strict=True)
    ):
        declared = [d if d is not None else "?" for d in out.item_shape]
        raise ProtocolViolation(
            f"result output {out.name!r} has items of shape {list(shape)}; the model "
            f"declares {declared}"
        )
    item_bytes = math.prod(shape) * array.itemsize
    if item_bytes > MAX_RESULT_ITEM_BYTES:
        raise ProtocolViolation(
            f"result output {out.name!r} has {item_bytes} bytes per item, the limit is "
            f"{MAX_RESULT_ITEM_BYTES}"
        )

"""Tensor-carrying messages of the car link, encoded and decoded with one copy of the payload.

Input chunks (gateway → car) and result chunks (car → gateway) carry almost all of a
task's bytes. Built as protobuf objects, a payload is copied into the tensor field, then
into the serialized message, then into Python bytes; parsed, it is copied into the
message, then again by every read of ``data``. Each copy lands in fresh memory (a chunk
is megabytes), so the page faults cost more than the copies themselves.

Here protobuf still encodes and parses the small fields; only the ``bytes data`` of each
tensor is placed (encoding: one copy, into the message's bytes) or viewed (decoding: no
copy) directly. The wire format is exactly protobuf's — a length-delimited field is its
tag, a varint length and the bytes, and fields may come in any order — so either end
may be a plain protobuf peer. Anything the fast decoder does not expect (another
message kind, a group, a repeated sub-message that protobuf would merge) is handed to
protobuf, so the result is always what protobuf would have parsed.

Neither path expands anything before it is counted: the fast decoder reads at most
``MAX_FIELDS`` fields, ``MAX_DIMS`` dims and ``MAX_NAMES`` outputs (or inputs), checks
each length against its buffer and each text's size before decoding it; a message handed to
protobuf that is large enough to hold more than ``MAX_FIELDS`` fields is walked (the same
count, packed dims by their length) before protobuf parses it. Whatever a peer sends, a
decoder returns a message or raises
:class:`~parkfleet.protocol.limits.ProtocolViolation`, which closes that peer's stream.

The transport uses :func:`serialize` (messages, or bytes from the encoders) and the
``decode_*`` functions as the stream's serializer and deserializer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from google.protobuf.message import DecodeError

from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol.limits import (
    MAX_DIMS,
    MAX_FIELDS,
    MAX_ID_CHARS,
    MAX_NAMES,
    ProtocolViolation,
    check_text,
    wire_tensor,
)

__all__ = [
    "InputData",
    "ResultData",
    "WireTensor",
    "decode_car_message",
    "decode_gateway_message",
    "encode_input",
    "encode_result",
    "serialize",
]

_LEN = 2  # wire type of length-delimited fields
_VARINT = 0


def _number(message: Any, name: str) -> int:
    """A field's number, from the generated descriptors (never spelled out here)."""
    return int(message.DESCRIPTOR.fields_by_name[name].number)


_GW_INPUT = _number(pb.GatewayMessage, "input")
_CAR_RESULT = _number(pb.CarMessage, "result")
_IN_TASK_ID = _number(pb.InputChunk, "task_id")
_IN_ATTEMPT = _number(pb.InputChunk, "attempt")
_IN_FIRST = _number(pb.InputChunk, "first_item")
_IN_TENSOR = _number(pb.InputChunk, "tensor")
_IN_LAST = _number(pb.InputChunk, "last")
_IN_MORE = _number(pb.InputChunk, "more")
_RES_TASK_ID = _number(pb.ResultChunk, "task_id")
_RES_ATTEMPT = _number(pb.ResultChunk, "attempt")
_RES_FIRST = _number(pb.ResultChunk, "first_item")
_RES_OUTPUTS = _number(pb.ResultChunk, "outputs")
_T_NAME = _number(pb.NamedTensor, "name")
_T_DTYPE = _number(pb.NamedTensor, "dtype")
_T_DIMS = _number(pb.NamedTensor, "dims")
_T_DATA = _number(pb.NamedTensor, "data")


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(field: int) -> bytes:
    return _varint(field << 3 | _LEN)


_INPUT_TAG = _tag(_GW_INPUT)
_RESULT_TAG = _tag(_CAR_RESULT)


# ---- encoding --------------------------------------------------------------------


def _tensor_parts(name: str, array: np.ndarray) -> tuple[list[bytes | memoryview], int]:
    """A NamedTensor's wire bytes as parts (the payload a view of ``array``), and their size.

    Raises:
        ProtocolViolation: As :func:`~parkfleet.protocol.limits.tensor_to_proto`.
    """
    wire, little = wire_tensor(name, array)
    head = pb.NamedTensor(name=name, dtype=wire, dims=list(array.shape)).SerializeToString()
    if little.nbytes == 0:
        return [head], len(head)  # proto3 leaves an empty bytes field out
    data = little.reshape(-1).view(np.uint8).data
    length = _varint(len(data))
    tag = _tag(_T_DATA)
    return [head, tag, length, data], len(head) + len(tag) + len(length) + len(data)


def _tensor_fields(
    field: int, tensors: Sequence[tuple[str, np.ndarray]]
) -> tuple[list[bytes | memoryview], int]:
    """Repeated ``NamedTensor`` field ``field`` on the wire as parts, and their size."""
    tag = _tag(field)
    parts: list[bytes | memoryview] = []
    size = 0
    for name, array in tensors:
        tensor, tensor_size = _tensor_parts(name, array)
        length = _varint(tensor_size)
        parts += [tag, length, *tensor]
        size += len(tag) + len(length) + tensor_size
    return parts, size


def encode_input(
    task_id: str,
    attempt: int,
    first_item: int,
    last: bool,
    name: str,
    array: np.ndarray,
    more: Sequence[tuple[str, np.ndarray]] = (),
) -> bytes:
    """``GatewayMessage(input=InputChunk(...))`` on the wire; each payload is copied once.

    Args:
        name: The first input's name (``tensor``).
        array: Its items.
        more: The task's other inputs (``more``), same items, in the offer's order.

    Raises:
        ProtocolViolation: A tensor's dtype, dims or size are out of bounds, or there are
            more than ``MAX_NAMES`` inputs.
    """
    if len(more) >= MAX_NAMES:
        raise ProtocolViolation(f"input chunk has {len(more) + 1} inputs, limit {MAX_NAMES}")
    # Fields in number order, as protobuf writes them: the bytes are the same too.
    head = pb.InputChunk(
        task_id=task_id, attempt=attempt, first_item=first_item
    ).SerializeToString()
    tensor, tensor_size = _tensor_fields(_IN_TENSOR, [(name, array)])
    tail = pb.InputChunk(last=last).SerializeToString()
    others, others_size = _tensor_fields(_IN_MORE, more)
    body_size = len(head) + tensor_size + len(tail) + others_size
    return b"".join([_tag(_GW_INPUT), _varint(body_size), head, *tensor, tail, *others])


def encode_result(
    task_id: str, attempt: int, first_item: int, outputs: Sequence[tuple[str, np.ndarray]]
) -> bytes:
    """``CarMessage(result=ResultChunk(...))`` on the wire; each output is copied once.

    Raises:
        ProtocolViolation: An output's dtype, dims or size are out of bounds.
    """
    head = pb.ResultChunk(
        task_id=task_id, attempt=attempt, first_item=first_item
    ).SerializeToString()
    body, body_size = _tensor_fields(_RES_OUTPUTS, outputs)
    return b"".join([_tag(_CAR_RESULT), _varint(len(head) + body_size), head, *body])


def serialize(message: pb.CarMessage | pb.GatewayMessage | bytes) -> bytes:
    """The stream's serializer: messages are serialized, encoded chunks pass as they are."""
    if isinstance(message, bytes):
        return message
    return message.SerializeToString()


# ---- decoding --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WireTensor:
    """A received ``NamedTensor`` whose ``data`` views the message's bytes.

    Same fields as the message; decode it with
    :func:`~parkfleet.protocol.limits.tensor_from_proto`, which checks them.
    """

    name: str
    dtype: int
    dims: tuple[int, ...]
    data: memoryview


@dataclass(frozen=True, slots=True)
class InputData:
    """A received ``InputChunk`` (same fields), its tensors viewing the message's bytes."""

    task_id: str
    attempt: int
    first_item: int
    tensor: WireTensor
    last: bool
    more: tuple[WireTensor, ...] = ()


@dataclass(frozen=True, slots=True)
class ResultData:
    """A received ``ResultChunk`` (same fields), its tensors viewing the message's bytes."""

    task_id: str
    attempt: int
    first_item: int
    outputs: tuple[WireTensor, ...]

    def validate(self) -> str:
        """The checks :func:`~parkfleet.protocol.limits.validate_car_message` makes.

        Returns:
            ``"result"``, the message kind.

        Raises:
            ProtocolViolation: The task id or the number of outputs is out of bounds.
        """
        if not self.task_id:
            raise ProtocolViolation("result.task_id is empty")
        check_text(self.task_id, "result.task_id")
        if not self.outputs:
            raise ProtocolViolation("result carries no outputs")
        if len(self.outputs) > MAX_NAMES:
            raise ProtocolViolation(f"result has {len(self.outputs)} outputs")
        return "result"


class _Unexpected(Exception):
    """Not the simple shape the fast decoder reads: protobuf parses it instead."""


# A varint is at most 10 bytes (64 bits, 7 a byte), a field's key at most 5 (32 bits);
# protobuf refuses longer ones.
_MAX_VARINT_BYTES = 10
_MAX_KEY_BYTES = 5
_MAX_FIELD_NUMBER = (1 << 29) - 1
_U64 = 0xFFFF_FFFF_FFFF_FFFF
# UTF-8 takes at most 4 bytes a character: longer text is refused before it is decoded.
_MAX_ID_BYTES = 4 * MAX_ID_CHARS
# Each field takes 2 bytes or more, so a message this small holds at most MAX_FIELDS
# fields (or packed elements): protobuf may parse it without counting first.
_COUNT_ABOVE = 2 * MAX_FIELDS
# The car link's packed repeated fields, and how many elements each may hold.
_PACKED_LIMITS = {pb.NamedTensor.DESCRIPTOR.fields_by_name["dims"]: MAX_DIMS}


class _Budget:
    """The fields one decode may still read: ``MAX_FIELDS`` in all, at every level."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_FIELDS


def _malformed(what: str) -> ProtocolViolation:
    return ProtocolViolation(f"malformed message: {what}")


def _read_varint(
    buf: memoryview, pos: int, end: int, max_bytes: int = _MAX_VARINT_BYTES
) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it; never reads past ``max_bytes``."""
    result = 0
    shift = 0
    stop = min(end, pos + max_bytes)
    while pos < stop:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & _U64, pos
        shift += 7
    raise _malformed(f"a varint is cut off or longer than {max_bytes} bytes")


def _fields(
    buf: memoryview, pos: int, end: int, budget: _Budget
) -> Iterator[tuple[int, int, int, int]]:
    """The fields in ``buf[pos:end]`` as (number, wire type, value or start, end).

    Each field is checked (key, length inside the buffer) and counted against ``budget``
    before it is yielded, so no message makes a decoder loop more than ``MAX_FIELDS``
    times.

    Raises:
        ProtocolViolation: Malformed (protobuf refuses it too) or too many fields.
        _Unexpected: A group, left to protobuf.
    """
    while pos < end:
        budget.left -= 1
        if budget.left < 0:
            raise ProtocolViolation(f"message has more than {MAX_FIELDS} fields")
        key, pos = _read_varint(buf, pos, end, _MAX_KEY_BYTES)
        number, wire = key >> 3, key & 7
        if not 0 < number <= _MAX_FIELD_NUMBER:
            raise _malformed(f"field number {number}")
        if wire == _VARINT:
            value, pos = _read_varint(buf, pos, end)
            yield number, wire, value, pos
        elif wire == _LEN:
            size, pos = _read_varint(buf, pos, end)
            if size > end - pos:
                raise _malformed(f"field {number} of {size} bytes runs past its message")
            yield number, wire, pos, pos + size
            pos += size
        elif wire == 1 or wire == 5:  # fixed64, fixed32: unknown fields, skipped
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise _malformed(f"field {number} runs past its message")
        elif wire == 3 or wire == 4:  # groups (proto2): protobuf decides
            raise _Unexpected
        else:
            raise _malformed(f"wire type {wire}")


def _text(buf: memoryview, start: int, end: int, field: str) -> str:
    if end - start > _MAX_ID_BYTES:
        raise ProtocolViolation(
            f"{field} is {end - start} bytes, the limit is {MAX_ID_CHARS} characters"
        )
    try:
        text = str(buf[start:end], "utf-8")
    except UnicodeDecodeError:
        raise _Unexpected from None  # protobuf says why
    check_text(text, field)
    return text


def _one_more_dim(name: str, dims: list[int]) -> None:
    """Refuses a dim beyond ``MAX_DIMS`` before it is read: the list never grows past it."""
    if len(dims) == MAX_DIMS:
        raise ProtocolViolation(f"tensor {name!r} has more than {MAX_DIMS} dims")


def _tensor(buf: memoryview, start: int, end: int, budget: _Budget) -> WireTensor:
    name = ""
    dtype = 0
    dims: list[int] = []
    data = buf[0:0]
    for number, wire, a, b in _fields(buf, start, end, budget):
        if number == _T_NAME and wire == _LEN:
            name = _text(buf, a, b, "tensor name")
        elif number == _T_DTYPE and wire == _VARINT:
            v = a & 0xFFFF_FFFF  # an int32 enum, sign-extended to 64 bits on the wire
            dtype = v - (1 << 32) if v >= 1 << 31 else v
        elif number == _T_DIMS and wire == _VARINT:
            _one_more_dim(name, dims)
            dims.append(a)
        elif number == _T_DIMS and wire == _LEN:  # packed
            if b - a > _MAX_VARINT_BYTES * MAX_DIMS:  # more values than MAX_DIMS for sure
                raise ProtocolViolation(f"tensor {name!r} has more than {MAX_DIMS} dims")
            pos = a
            while pos < b:
                _one_more_dim(name, dims)
                v, pos = _read_varint(buf, pos, b)
                dims.append(v)
        elif number == _T_DATA and wire == _LEN:
            data = buf[a:b]
        elif number in (_T_NAME, _T_DTYPE, _T_DATA):
            raise _Unexpected
    return WireTensor(name=name, dtype=dtype, dims=tuple(dims), data=data)


def _body(buf: memoryview, tag: bytes, budget: _Budget) -> tuple[int, int]:
    """The message's one top-level field (the oneof body), or :class:`_Unexpected`.

    ``tag`` is the body's expected key; anything else goes to protobuf at once, which
    keeps other messages (telemetry, most of them) off the fast decoder.
    """
    if buf[: len(tag)] != tag:
        raise _Unexpected
    fields = _fields(buf, 0, len(buf), budget)
    _, _, start, end = next(fields)
    if next(fields, None) is not None:
        raise _Unexpected  # a repeated body, which protobuf merges
    return start, end


def _input(buf: memoryview) -> InputData:
    budget = _Budget()
    start, end = _body(buf, _INPUT_TAG, budget)
    task_id = ""
    attempt = first_item = 0
    last = False
    tensor: WireTensor | None = None
    more: list[WireTensor] = []
    for number, wire, a, b in _fields(buf, start, end, budget):
        if number == _IN_TASK_ID and wire == _LEN:
            task_id = _text(buf, a, b, "input.task_id")
        elif number == _IN_ATTEMPT and wire == _VARINT:
            attempt = a & 0xFFFF_FFFF
        elif number == _IN_FIRST and wire == _VARINT:
            first_item = a
        elif number == _IN_LAST and wire == _VARINT:
            last = a != 0
        elif number == _IN_TENSOR and wire == _LEN and tensor is None:
            tensor = _tensor(buf, a, b, budget)
        elif number == _IN_MORE and wire == _LEN:
            if len(more) == MAX_NAMES - 1:
                raise ProtocolViolation(f"input chunk has more than {MAX_NAMES} inputs")
            more.append(_tensor(buf, a, b, budget))
        elif number in (_IN_TASK_ID, _IN_ATTEMPT, _IN_FIRST, _IN_LAST, _IN_TENSOR, _IN_MORE):
            raise _Unexpected  # a wrong wire type, or a sub-message protobuf would merge
    if tensor is None:
        tensor = WireTensor(name="", dtype=0, dims=(), data=buf[0:0])
    return InputData(task_id, attempt, first_item, tensor, last, tuple(more))


def _result(buf: memoryview) -> ResultData:
    budget = _Budget()
    start, end = _body(buf, _RESULT_TAG, budget)
    task_id = ""
    attempt = first_item = 0
    outputs: list[WireTensor] = []
    for number, wire, a, b in _fields(buf, start, end, budget):
        if number == _RES_TASK_ID and wire == _LEN:
            task_id = _text(buf, a, b, "result.task_id")
        elif number == _RES_ATTEMPT and wire == _VARINT:
            attempt = a & 0xFFFF_FFFF
        elif number == _RES_FIRST and wire == _VARINT:
            first_item = a
        elif number == _RES_OUTPUTS and wire == _LEN:
            if len(outputs) == MAX_NAMES:
                raise ProtocolViolation(f"result has more than {MAX_NAMES} outputs")
            outputs.append(_tensor(buf, a, b, budget))
        elif number in (_RES_TASK_ID, _RES_ATTEMPT, _RES_FIRST, _RES_OUTPUTS):
            raise _Unexpected
    return ResultData(task_id, attempt, first_item, tuple(outputs))


def _count(buf: memoryview, start: int, end: int, descriptor: Any, budget: _Budget) -> None:
    """Walks a message as protobuf will parse it, counting fields before it expands any.

    Raises:
        ProtocolViolation: Malformed, more than ``MAX_FIELDS`` fields in all, or a packed
            field longer than its limit allows.
    """
    by_number = descriptor.fields_by_number
    for number, wire, a, b in _fields(buf, start, end, budget):
        field = by_number.get(number) if wire == _LEN else None
        if field is None:
            continue
        if field.message_type is not None:
            _count(buf, a, b, field.message_type, budget)
        elif field in _PACKED_LIMITS and b - a > _PACKED_LIMITS[field]:
            raise ProtocolViolation(
                f"packed field {field.name} of {b - a} bytes holds more than "
                f"{_PACKED_LIMITS[field]} values"
            )


_Message = TypeVar("_Message", pb.CarMessage, pb.GatewayMessage)


def _protobuf(message: type[_Message], data: bytes) -> _Message:
    """``message`` parsed by protobuf, once it is known not to expand beyond the bounds.

    Raises:
        ProtocolViolation: Too many fields, or protobuf cannot parse it.
    """
    if len(data) > _COUNT_ABOVE:
        try:
            _count(memoryview(data), 0, len(data), message.DESCRIPTOR, _Budget())
        except _Unexpected:
            raise _malformed("groups are not used by the car link") from None
    try:
        return message.FromString(data)
    except DecodeError as e:
        raise _malformed(str(e)) from None


def decode_gateway_message(data: bytes) -> pb.GatewayMessage | InputData:
    """The car's deserializer: input chunks as :class:`InputData`, the rest as messages.

    Raises:
        ProtocolViolation: The bytes are no message, or exceed the protocol's bounds.
    """
    try:
        return _input(memoryview(data))
    except _Unexpected:
        return _protobuf(pb.GatewayMessage, data)


def decode_car_message(data: bytes) -> pb.CarMessage | ResultData:
    """The gateway's deserializer: result chunks as :class:`ResultData`, the rest as messages.

    Raises:
        ProtocolViolation: The bytes are no message, or exceed the protocol's bounds.
    """
    try:
        return _result(memoryview(data))
    except _Unexpected:
        return _protobuf(pb.CarMessage, data)

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
message kind, an unknown wire type, a repeated sub-message that protobuf would merge) is
handed to protobuf, so the result is always what protobuf would have parsed.

The transport uses :func:`serialize` (messages, or bytes from the encoders) and the
``decode_*`` functions as the stream's serializer and deserializer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol.limits import (
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


def encode_input(
    task_id: str, attempt: int, first_item: int, last: bool, name: str, array: np.ndarray
) -> bytes:
    """``GatewayMessage(input=InputChunk(...))`` on the wire; the payload is copied once.

    Raises:
        ProtocolViolation: The tensor's dtype, dims or size are out of bounds.
    """
    parts, tensor_size = _tensor_parts(name, array)
    # Fields in number order, as protobuf writes them: the bytes are the same too.
    head = pb.InputChunk(
        task_id=task_id, attempt=attempt, first_item=first_item
    ).SerializeToString()
    tail = pb.InputChunk(last=last).SerializeToString()
    tensor_tag, tensor_len = _tag(_IN_TENSOR), _varint(tensor_size)
    body_size = len(head) + len(tensor_tag) + len(tensor_len) + tensor_size + len(tail)
    return b"".join(
        [_tag(_GW_INPUT), _varint(body_size), head, tensor_tag, tensor_len, *parts, tail]
    )


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
    body: list[bytes | memoryview] = [head]
    body_size = len(head)
    output_tag = _tag(_RES_OUTPUTS)
    for name, array in outputs:
        parts, size = _tensor_parts(name, array)
        length = _varint(size)
        body += [output_tag, length, *parts]
        body_size += len(output_tag) + len(length) + size
    return b"".join([_tag(_CAR_RESULT), _varint(body_size), *body])


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
    """A received ``InputChunk`` (same fields), its tensor viewing the message's bytes."""

    task_id: str
    attempt: int
    first_item: int
    tensor: WireTensor
    last: bool


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


def _read_varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Unexpected
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & 0xFFFF_FFFF_FFFF_FFFF, pos
        shift += 7


def _fields(buf: memoryview, pos: int, end: int) -> list[tuple[int, int, int, int]]:
    """The fields in ``buf[pos:end]`` as (number, wire type, value or start, end)."""
    out = []
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Unexpected
        if wire == _VARINT:
            value, pos = _read_varint(buf, pos, end)
            out.append((number, wire, value, pos))
        elif wire == _LEN:
            size, pos = _read_varint(buf, pos, end)
            if pos + size > end:
                raise _Unexpected
            out.append((number, wire, pos, pos + size))
            pos += size
        elif wire == 1:  # fixed64: an unknown field, skipped as protobuf keeps it
            pos += 8
        elif wire == 5:  # fixed32
            pos += 4
        else:  # groups, or garbage: protobuf decides
            raise _Unexpected
    if pos != end:
        raise _Unexpected
    return out


def _text(buf: memoryview, start: int, end: int) -> str:
    try:
        return str(buf[start:end], "utf-8")
    except UnicodeDecodeError:
        raise _Unexpected from None


def _tensor(buf: memoryview, start: int, end: int) -> WireTensor:
    name = ""
    dtype = 0
    dims: list[int] = []
    data = buf[0:0]
    for number, wire, a, b in _fields(buf, start, end):
        if number == _T_NAME and wire == _LEN:
            name = _text(buf, a, b)
        elif number == _T_DTYPE and wire == _VARINT:
            v = a & 0xFFFF_FFFF  # an int32 enum, sign-extended to 64 bits on the wire
            dtype = v - (1 << 32) if v >= 1 << 31 else v
        elif number == _T_DIMS and wire == _VARINT:
            dims.append(a)
        elif number == _T_DIMS and wire == _LEN:  # packed
            pos = a
            while pos < b:
                v, pos = _read_varint(buf, pos, b)
                dims.append(v)
        elif number == _T_DATA and wire == _LEN:
            data = buf[a:b]
        elif number in (_T_NAME, _T_DTYPE, _T_DATA):
            raise _Unexpected
    return WireTensor(name=name, dtype=dtype, dims=tuple(dims), data=data)


def _body(buf: memoryview, field: int) -> tuple[int, int]:
    """The one length-delimited top-level field ``field``, or :class:`_Unexpected`."""
    fields = _fields(buf, 0, len(buf))
    if len(fields) != 1 or fields[0][0] != field or fields[0][1] != _LEN:
        raise _Unexpected
    return fields[0][2], fields[0][3]


def _input(buf: memoryview) -> InputData:
    start, end = _body(buf, _GW_INPUT)
    task_id = ""
    attempt = first_item = 0
    last = False
    tensor: WireTensor | None = None
    for number, wire, a, b in _fields(buf, start, end):
        if number == _IN_TASK_ID and wire == _LEN:
            task_id = _text(buf, a, b)
        elif number == _IN_ATTEMPT and wire == _VARINT:
            attempt = a & 0xFFFF_FFFF
        elif number == _IN_FIRST and wire == _VARINT:
            first_item = a
        elif number == _IN_LAST and wire == _VARINT:
            last = a != 0
        elif number == _IN_TENSOR and wire == _LEN and tensor is None:
            tensor = _tensor(buf, a, b)
        elif number in (_IN_TASK_ID, _IN_ATTEMPT, _IN_FIRST, _IN_LAST, _IN_TENSOR):
            raise _Unexpected  # a wrong wire type, or a sub-message protobuf would merge
    if tensor is None:
        tensor = WireTensor(name="", dtype=0, dims=(), data=buf[0:0])
    return InputData(task_id, attempt, first_item, tensor, last)


def _result(buf: memoryview) -> ResultData:
    start, end = _body(buf, _CAR_RESULT)
    task_id = ""
    attempt = first_item = 0
    outputs: list[WireTensor] = []
    for number, wire, a, b in _fields(buf, start, end):
        if number == _RES_TASK_ID and wire == _LEN:
            task_id = _text(buf, a, b)
        elif number == _RES_ATTEMPT and wire == _VARINT:
            attempt = a & 0xFFFF_FFFF
        elif number == _RES_FIRST and wire == _VARINT:
            first_item = a
        elif number == _RES_OUTPUTS and wire == _LEN:
            outputs.append(_tensor(buf, a, b))
        elif number in (_RES_TASK_ID, _RES_ATTEMPT, _RES_FIRST, _RES_OUTPUTS):
            raise _Unexpected
    return ResultData(task_id, attempt, first_item, tuple(outputs))


def decode_gateway_message(data: bytes) -> pb.GatewayMessage | InputData:
    """The car's deserializer: input chunks as :class:`InputData`, the rest as messages."""
    try:
        return _input(memoryview(data))
    except _Unexpected:
        return pb.GatewayMessage.FromString(data)


def decode_car_message(data: bytes) -> pb.CarMessage | ResultData:
    """The gateway's deserializer: result chunks as :class:`ResultData`, the rest as messages."""
    try:
        return _result(memoryview(data))
    except _Unexpected:
        return pb.CarMessage.FromString(data)

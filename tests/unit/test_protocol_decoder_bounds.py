"""The decoders count before they expand: every bound is checked before the work it guards.

Work is measured, not timed: the number of varints a decoder reads (a counter around
``chunks._read_varint``) and the memory it allocates at its peak (``tracemalloc``). A
2 MB dims bomb that was expanded would read a million varints and allocate tens of MB.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol import chunks
from parkfleet.protocol.chunks import (
    InputData,
    ResultData,
    WireTensor,
    decode_car_message,
    decode_gateway_message,
    encode_result,
)
from parkfleet.protocol.limits import (
    MAX_DIMS,
    MAX_FIELDS,
    MAX_LOG_LINE_CHARS,
    MAX_LOG_LINES,
    MAX_NAMES,
    MAX_TENSOR_BYTES,
    ProtocolViolation,
    tensor_from_proto,
    validate_car_message,
)
from tests.protowire import delimited, varint

MB = 1024 * 1024


def result(*body: bytes) -> bytes:
    """``CarMessage(result=...)`` around raw ResultChunk fields."""
    return delimited(7, b"".join(body))


TASK = delimited(1, b"t")
TENSOR_HEAD = delimited(1, b"y") + b"\x10\x01"  # name "y", dtype FLOAT32


class Work:
    """What a decode did: varints read, and its peak of allocated bytes."""

    varints = 0
    peak_bytes = 0


@pytest.fixture
def measure(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Work]:
    real = chunks._read_varint

    def run(fn: Callable[..., Any], *args: Any) -> Work:
        work = Work()

        def counted(*a: Any) -> tuple[int, int]:
            work.varints += 1
            return real(*a)

        monkeypatch.setattr(chunks, "_read_varint", counted)
        tracemalloc.start()
        try:
            fn(*args)
        finally:
            work.peak_bytes = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            monkeypatch.setattr(chunks, "_read_varint", real)
        return work

    return run


def refused(match: str, fn: Callable[..., Any], *args: Any) -> Callable[[], None]:
    def call() -> None:
        with pytest.raises(ProtocolViolation, match=match):
            fn(*args)

    return call


def test_a_2mb_dims_bomb_is_refused_before_any_dim_is_read(measure: Callable[..., Work]) -> None:
    bomb = result(TASK, delimited(4, TENSOR_HEAD + delimited(3, b"\x01" * (2 * MB))))
    work = measure(refused("more than 8 dims", decode_car_message, bomb))
    assert work.varints < 20  # keys and lengths only: not one of the 2M dims
    assert work.peak_bytes < 64 * 1024  # no list of dims, no copy of the message


def test_dims_are_counted_as_they_are_read(measure: Callable[..., Work]) -> None:
    # Dims of several bytes each, in a packed field short enough to pass the first check.
    packed = b"\xff\xff\x03" * (MAX_DIMS + 1)
    bomb = result(TASK, delimited(4, TENSOR_HEAD + delimited(3, packed)))
    work = measure(refused("more than 8 dims", decode_car_message, bomb))
    assert work.varints <= 12 + MAX_DIMS  # 12 keys and lengths, then 8 dims: not the 9th
    unpacked = b"".join(b"\x18\x01" for _ in range(100_000))  # dims as separate fields
    bomb = result(TASK, delimited(4, TENSOR_HEAD + unpacked))
    work = measure(refused("more than 8 dims", decode_car_message, bomb))
    assert work.varints < 20 + 2 * MAX_DIMS
    # The car's decoder of input chunks shares the tensor decoder.
    chunk = delimited(4, delimited(4, TENSOR_HEAD + delimited(3, b"\x01" * MB)))
    work = measure(refused("more than 8 dims", decode_gateway_message, chunk))
    assert work.varints < 20


def test_outputs_are_counted_before_they_are_decoded(measure: Callable[..., Work]) -> None:
    bomb = result(TASK, b"\x22\x00" * (2 * MB - 8))  # two million empty outputs
    work = measure(refused(f"more than {MAX_NAMES} outputs", decode_car_message, bomb))
    assert work.varints < 4 * MAX_NAMES
    assert work.peak_bytes < 256 * 1024


def test_fields_are_counted_whatever_they_are(measure: Callable[..., Work]) -> None:
    bomb = result(TASK, b"\x78\x01" * (MB // 2))  # unknown field 15, half a million times
    work = measure(refused(f"more than {MAX_FIELDS} fields", decode_car_message, bomb))
    assert work.varints < 2 * MAX_FIELDS + 10


def test_what_protobuf_parses_is_counted_first(measure: Callable[..., Work]) -> None:
    # Two million empty held_task_ids in a Hello: protobuf alone would build them all
    # (about 150 MB) before validate_car_message could count them.
    hello = delimited(1, delimited(5, b"") * (2 * MB - 8))
    work = measure(refused(f"more than {MAX_FIELDS} fields", decode_car_message, hello))
    assert work.peak_bytes < 256 * 1024
    # A result repeated (protobuf merges the two) with a dims bomb: its packed field's
    # length is checked before protobuf expands it.
    bomb = result(TASK) + result(delimited(4, TENSOR_HEAD + delimited(3, b"\x01" * MB)))
    work = measure(refused("dims", decode_car_message, bomb))
    assert work.peak_bytes < 256 * 1024
    gateway = delimited(3, delimited(6, b"") * (2 * MB))  # an offer of 2M output names
    measure(refused(f"more than {MAX_FIELDS} fields", decode_gateway_message, gateway))


def test_texts_are_bounded_before_they_are_decoded(measure: Callable[..., Work]) -> None:
    long_id = result(delimited(1, b"x" * MB), delimited(4, TENSOR_HEAD))
    work = measure(refused("result.task_id is 1048576 bytes", decode_car_message, long_id))
    assert work.peak_bytes < 64 * 1024  # the 1 MB id was never made a str
    long_name = result(TASK, delimited(4, delimited(1, "é".encode() * 300)))
    with pytest.raises(ProtocolViolation, match="tensor name is 300 characters"):
        decode_car_message(long_name)


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (b"\x3a\x05\x0a\x01t", "runs past its message"),  # the body says 5 bytes, has 3
        (b"\x3a\x03\x0a\x05t", "runs past its message"),  # so does task_id
        (b"\x3a\x0b\x18" + b"\xff" * 10, "longer than 10 bytes"),  # an 11-byte varint
        (b"\x3a\x02\x18\xff", "cut off"),
        (b"\x3a\x07\x88\x80\x80\x80\x80\x00\x01", "longer than 5 bytes"),  # a 6-byte key
        (b"\x3a\x02\x00\x01", "field number 0"),
        (b"\x3a\x06" + varint(1 << 32) + b"\x01", "field number"),  # past 2**29 - 1
        (b"\x3a\x04\x79\x00\x00\x00", "runs past"),  # a cut-off fixed64
        (b"\x3a\x01\x7e", "wire type 6"),
    ],
)
def test_malformed_bytes_are_a_protocol_violation(wire: bytes, match: str) -> None:
    with pytest.raises(ProtocolViolation, match=match):
        decode_car_message(wire)
    with pytest.raises(Exception):  # noqa: B017, PT011  # protobuf refuses them too
        pb.CarMessage.FromString(wire)


def test_limits_leave_room_for_every_real_message() -> None:
    # The largest result: MAX_NAMES outputs of MAX_DIMS dims each, sent unpacked.
    tensor = TENSOR_HEAD + b"\x18\x01" * MAX_DIMS + delimited(4, b"\0\0\0\0")
    got = decode_car_message(result(TASK, delimited(4, tensor) * MAX_NAMES))
    assert isinstance(got, ResultData)
    assert len(got.outputs) == MAX_NAMES
    assert got.outputs[0].dims == (1,) * MAX_DIMS
    # The largest log (parsed by protobuf, counted first since it is large).
    log = pb.CarMessage(
        log=pb.TaskLog(task_id="t", lines=["é" * MAX_LOG_LINE_CHARS] * MAX_LOG_LINES)
    )
    wire = log.SerializeToString()
    assert len(wire) > 2 * MAX_FIELDS
    assert decode_car_message(wire) == log
    outputs = [(f"o{i}", np.zeros((1,) * MAX_DIMS, np.float32)) for i in range(MAX_NAMES)]
    assert isinstance(decode_car_message(encode_result("t", 1, 0, outputs)), ResultData)


def test_protobuf_messages_count_their_dims_before_converting(
    measure: Callable[..., Work],
) -> None:
    many = pb.NamedTensor(name="y", dtype=pb.FLOAT32, dims=[2**40] * 100_000)
    work = measure(refused("100000 dims", tensor_from_proto, many))
    assert work.peak_bytes < 64 * 1024  # list(dims) would be 3.2 MB of ints
    msg = pb.CarMessage(result=pb.ResultChunk(task_id="t", outputs=[many]))
    with pytest.raises(ProtocolViolation, match="100000 dims"):
        validate_car_message(msg)


@pytest.mark.parametrize(
    ("dims", "data", "match"),
    [
        ((0, 2**40), b"", "at most"),  # holds nothing, but no array has that shape
        ((0,) + (MAX_TENSOR_BYTES,) * 2, b"", "at most"),
        ((2**62, 2**62), b"", "at most"),
        ((-1,), b"", "negative"),
        ((3,), b"\0" * 8, "carries 8"),
    ],
)
def test_each_dim_is_bounded_before_the_shape_is_built(
    dims: tuple[int, ...], data: bytes, match: str
) -> None:
    t = WireTensor(name="y", dtype=pb.FLOAT32, dims=dims, data=memoryview(data))
    with pytest.raises(ProtocolViolation, match=match):
        tensor_from_proto(t)
    assert tensor_from_proto(WireTensor("y", pb.FLOAT32, (0, 5), memoryview(b""))).shape == (0, 5)


def test_input_chunks_keep_the_same_bounds() -> None:
    bad = pb.GatewayMessage(
        input=pb.InputChunk(task_id="t" * 300, tensor=pb.NamedTensor(name="x"))
    ).SerializeToString()
    with pytest.raises(ProtocolViolation, match=r"input\.task_id is 300 characters"):
        decode_gateway_message(bad)
    ok = pb.GatewayMessage(input=pb.InputChunk(task_id="t", tensor=pb.NamedTensor(name="x")))
    assert isinstance(decode_gateway_message(ok.SerializeToString()), InputData)


def test_every_packed_field_of_the_car_link_has_a_limit() -> None:
    # A packed field is counted by its length before protobuf expands it; a new one
    # without a limit would be expanded unchecked.
    packed = set()
    seen = set()
    todo = [pb.CarMessage.DESCRIPTOR, pb.GatewayMessage.DESCRIPTOR]
    while todo:
        d = todo.pop()
        if d.full_name in seen:
            continue
        seen.add(d.full_name)
        for f in d.fields:
            if f.message_type is not None:
                todo.append(f.message_type)
            elif f.is_repeated and f.type not in (f.TYPE_STRING, f.TYPE_BYTES):
                packed.add(f.full_name)
    assert packed == {f.full_name for f in chunks._PACKED_LIMITS}

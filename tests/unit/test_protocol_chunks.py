"""The tensor chunks' codec: protobuf's bytes exactly, one copy out, none in."""

from __future__ import annotations

import random

import numpy as np
import pytest
from google.protobuf.message import DecodeError

from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol.chunks import (
    InputData,
    ResultData,
    WireTensor,
    decode_car_message,
    decode_gateway_message,
    encode_input,
    encode_result,
    serialize,
)
from parkfleet.protocol.limits import (
    MAX_TENSOR_BYTES,
    ProtocolViolation,
    tensor_from_proto,
    tensor_to_proto,
    validate_car_message,
)

ARRAYS = [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.zeros((0, 5), dtype=np.float32),
    np.arange(7, dtype=np.int64),
    np.arange(24, dtype=np.float16).reshape(2, 3, 4)[:, ::2],  # not contiguous
    np.arange(6, dtype=np.uint8).reshape(6, 1),
    np.arange(300 * 64, dtype=np.float32).reshape(300, 64),
]


def same_tensor(wire: WireTensor, t: pb.NamedTensor) -> None:
    assert (wire.name, wire.dtype, list(wire.dims), bytes(wire.data)) == (
        t.name,
        t.dtype,
        list(t.dims),
        t.data,
    )


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
@pytest.mark.parametrize("last", [False, True])
def test_input_chunk_is_protobufs_bytes_and_decodes_without_copying(
    array: np.ndarray, last: bool
) -> None:
    wire = encode_input("täsk-1", 3, 2**40, last, "input", array)
    expected = pb.GatewayMessage(
        input=pb.InputChunk(
            task_id="täsk-1",
            attempt=3,
            first_item=2**40,
            tensor=tensor_to_proto("input", array),
            last=last,
        )
    )
    assert wire == expected.SerializeToString()
    got = decode_gateway_message(wire)
    assert isinstance(got, InputData)
    assert (got.task_id, got.attempt, got.first_item, got.last) == ("täsk-1", 3, 2**40, last)
    same_tensor(got.tensor, expected.input.tensor)
    decoded = tensor_from_proto(got.tensor)
    np.testing.assert_array_equal(decoded, array)
    if array.nbytes:
        assert np.shares_memory(decoded, np.frombuffer(wire, np.uint8))  # a view, no copy


def test_result_chunk_is_protobufs_bytes_and_decodes_without_copying() -> None:
    outputs = [("label", np.arange(5, dtype=np.int64)), ("probabilities", np.ones((5, 10), "f4"))]
    wire = encode_result("t", 2, 40, outputs)
    expected = pb.CarMessage(
        result=pb.ResultChunk(
            task_id="t",
            attempt=2,
            first_item=40,
            outputs=[tensor_to_proto(n, a) for n, a in outputs],
        )
    )
    assert wire == expected.SerializeToString()
    got = decode_car_message(wire)
    assert isinstance(got, ResultData)
    assert (got.task_id, got.attempt, got.first_item) == ("t", 2, 40)
    for w, t in zip(got.outputs, expected.result.outputs, strict=True):
        same_tensor(w, t)
    assert got.validate() == validate_car_message(expected) == "result"
    probs = tensor_from_proto(got.outputs[1])
    assert np.shares_memory(probs, np.frombuffer(wire, np.uint8))


def test_results_are_validated_as_protobuf_ones_are() -> None:
    for bad in (
        pb.ResultChunk(task_id="", outputs=[tensor_to_proto("y", np.zeros(1, "f4"))]),
        pb.ResultChunk(task_id="t"),
        pb.ResultChunk(task_id="x" * 300, outputs=[tensor_to_proto("y", np.zeros(1, "f4"))]),
        pb.ResultChunk(task_id="t", outputs=[pb.NamedTensor(name="y")] * 65),
    ):
        msg = pb.CarMessage(result=bad)
        got = decode_car_message(msg.SerializeToString())
        assert isinstance(got, ResultData)
        with pytest.raises(ProtocolViolation) as theirs:
            validate_car_message(msg)
        with pytest.raises(ProtocolViolation) as ours:
            got.validate()
        assert str(ours.value) == str(theirs.value)


def test_encoders_keep_the_tensor_bounds() -> None:
    with pytest.raises(ProtocolViolation):
        encode_input("t", 1, 0, True, "x", np.zeros(3))  # float64 does not travel
    with pytest.raises(ProtocolViolation):
        encode_input("t", 1, 0, True, "x", np.zeros(MAX_TENSOR_BYTES // 4 + 1, np.float32))
    with pytest.raises(ProtocolViolation):
        encode_result("t", 1, 0, [("y", np.zeros((1,) * 9, np.float32))])


def test_other_messages_are_protobufs_and_serialize_passes_bytes() -> None:
    offer = pb.GatewayMessage(offer=pb.TaskOffer(task_id="t", attempt=1))
    assert decode_gateway_message(offer.SerializeToString()) == offer
    telemetry = pb.CarMessage(telemetry=pb.Telemetry(soc_percent=50.0))
    assert decode_car_message(telemetry.SerializeToString()) == telemetry
    assert decode_gateway_message(b"") == pb.GatewayMessage()
    assert serialize(offer) == offer.SerializeToString()
    assert serialize(b"\x01\x02") == b"\x01\x02"


def test_what_protobuf_would_merge_or_reject_is_left_to_protobuf() -> None:
    first = pb.GatewayMessage(
        input=pb.InputChunk(task_id="t", tensor=pb.NamedTensor(name="a", dims=[1]))
    )
    second = pb.GatewayMessage(input=pb.InputChunk(tensor=pb.NamedTensor(dtype=pb.FLOAT32)))
    merged = first.SerializeToString() + second.SerializeToString()
    got = decode_gateway_message(merged)
    assert got == pb.GatewayMessage.FromString(merged)  # the tensors were merged
    assert isinstance(got, pb.GatewayMessage)
    with pytest.raises(DecodeError):
        decode_gateway_message(encode_input("t", 1, 0, True, "x", np.ones(8, "f4"))[:-3])
    bad_utf8 = b"\x22\x03\x0a\x01\xff"  # input { task_id: <invalid UTF-8> }
    with pytest.raises(DecodeError):
        decode_gateway_message(bad_utf8)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    def varint(n: int) -> bytes:
        out = bytearray()
        while n >= 0x80:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        out.append(n)
        return bytes(out)

    key = varint(number << 3 | wire_type)
    if wire_type == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def test_any_order_unknown_fields_and_unpacked_dims_parse_as_protobuf_does() -> None:
    rng = random.Random(7)
    for _ in range(300):
        dims = [rng.randrange(0, 5) for _ in range(rng.randrange(0, 4))]
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        # Dims as one block (their order matters), either unpacked varints or packed.
        unpacked = b"".join(_field(3, 0, bytes([d])) for d in dims)
        packed = _field(3, 2, bytes(dims)) if dims else b""
        tensor_fields = [
            _field(1, 2, b"in"),
            _field(2, 0, bytes([rng.choice([1, 2, 3, 99])])),
            unpacked if rng.random() < 0.5 else packed,
            _field(4, 2, data),
            _field(9, 0, b"\x05"),  # unknown (a newer peer's field)
            _field(10, 5, b"\x00\x00\x80\x3f"),  # unknown fixed32
            _field(11, 1, bytes(8)),  # unknown fixed64
        ]
        if rng.random() < 0.5:
            tensor_fields.append(_field(1, 2, b"later-wins"))
        rng.shuffle(tensor_fields)
        chunk_fields = [
            _field(1, 2, b"task"),
            _field(2, 0, bytes([rng.randrange(1, 100)])),
            _field(3, 0, b"\xff\xff\x03"),
            _field(4, 2, b"".join(tensor_fields)),
            _field(5, 0, bytes([rng.randrange(0, 3)])),
            _field(15, 2, b"extra"),
        ]
        rng.shuffle(chunk_fields)
        wire = _field(4, 2, b"".join(chunk_fields))
        expected = pb.GatewayMessage.FromString(wire).input
        got = decode_gateway_message(wire)
        assert isinstance(got, InputData), wire
        assert (got.task_id, got.attempt, got.first_item, got.last) == (
            expected.task_id,
            expected.attempt,
            expected.first_item,
            expected.last,
        )
        same_tensor(got.tensor, expected.tensor)

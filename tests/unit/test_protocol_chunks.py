"""The tensor chunks' codec: protobuf's bytes exactly, one copy out, none in."""

from __future__ import annotations

import random

import numpy as np
import pytest

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
    MAX_NAMES,
    MAX_TENSOR_BYTES,
    ProtocolViolation,
    tensor_from_proto,
    tensor_to_proto,
    validate_car_message,
)
from tests.protowire import field

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


def decode_and_validate(wire: bytes) -> None:
    got = decode_car_message(wire)
    assert isinstance(got, ResultData)
    got.validate()


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (pb.ResultChunk(task_id="", outputs=[tensor_to_proto("y", np.zeros(1, "f4"))]), "empty"),
        (pb.ResultChunk(task_id="t"), "no outputs"),
        (
            pb.ResultChunk(task_id="x" * 300, outputs=[tensor_to_proto("y", np.zeros(1, "f4"))]),
            "result.task_id is 300 characters",
        ),
        (pb.ResultChunk(task_id="t", outputs=[pb.NamedTensor(name="y")] * 65), "outputs"),
        (pb.ResultChunk(task_id="t", outputs=[pb.NamedTensor(name="y", dims=[1] * 9)]), "dims"),
    ],
    ids=["no-task-id", "no-outputs", "long-task-id", "65-outputs", "9-dims"],
)
def test_results_are_refused_as_protobuf_ones_are(bad: pb.ResultChunk, match: str) -> None:
    msg = pb.CarMessage(result=bad)
    with pytest.raises(ProtocolViolation, match=match):
        validate_car_message(msg)
    with pytest.raises(ProtocolViolation, match=match):  # by the decoder, or by validate
        decode_and_validate(msg.SerializeToString())


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
    # What protobuf refuses is a protocol violation (the stream closes), not its DecodeError.
    with pytest.raises(ProtocolViolation, match="malformed"):
        decode_gateway_message(encode_input("t", 1, 0, True, "x", np.ones(8, "f4"))[:-3])
    bad_utf8 = b"\x22\x03\x0a\x01\xff"  # input { task_id: <invalid UTF-8> }
    with pytest.raises(ProtocolViolation, match="malformed"):
        decode_gateway_message(bad_utf8)


def test_any_order_unknown_fields_and_unpacked_dims_parse_as_protobuf_does() -> None:
    rng = random.Random(7)
    for _ in range(300):
        dims = [rng.randrange(0, 5) for _ in range(rng.randrange(0, 4))]
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        # Dims as one block (their order matters), either unpacked varints or packed.
        unpacked = b"".join(field(3, 0, bytes([d])) for d in dims)
        packed = field(3, 2, bytes(dims)) if dims else b""
        tensor_fields = [
            field(1, 2, b"in"),
            field(2, 0, bytes([rng.choice([1, 2, 3, 99])])),
            unpacked if rng.random() < 0.5 else packed,
            field(4, 2, data),
            field(9, 0, b"\x05"),  # unknown (a newer peer's field)
            field(10, 5, b"\x00\x00\x80\x3f"),  # unknown fixed32
            field(11, 1, bytes(8)),  # unknown fixed64
        ]
        if rng.random() < 0.5:
            tensor_fields.append(field(1, 2, b"later-wins"))
        rng.shuffle(tensor_fields)
        chunk_fields = [
            field(1, 2, b"task"),
            field(2, 0, bytes([rng.randrange(1, 100)])),
            field(3, 0, b"\xff\xff\x03"),
            field(4, 2, b"".join(tensor_fields)),
            field(5, 0, bytes([rng.randrange(0, 3)])),
            field(15, 2, b"extra"),
        ]
        rng.shuffle(chunk_fields)
        wire = field(4, 2, b"".join(chunk_fields))
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


@pytest.mark.parametrize("last", [False, True])
def test_an_input_chunk_of_several_named_inputs_is_protobufs_bytes_decoded_as_views(
    last: bool,
) -> None:
    ids = np.arange(24, dtype=np.int64).reshape(4, 6)
    others = [
        ("attention_mask", np.ones((4, 6), np.int64)),
        ("token_type_ids", np.zeros((4, 6), np.int32)),
    ]
    wire = encode_input("t", 1, 7, last, "input_ids", ids, others)
    expected = pb.GatewayMessage(
        input=pb.InputChunk(
            task_id="t",
            attempt=1,
            first_item=7,
            tensor=tensor_to_proto("input_ids", ids),
            last=last,
            more=[tensor_to_proto(n, a) for n, a in others],
        )
    )
    assert wire == expected.SerializeToString()
    got = decode_gateway_message(wire)
    assert isinstance(got, InputData)
    assert [t.name for t in (got.tensor, *got.more)] == [
        "input_ids",
        "attention_mask",
        "token_type_ids",
    ]
    for ours, theirs in zip(got.more, expected.input.more, strict=True):
        same_tensor(ours, theirs)
    for t, array in zip((got.tensor, *got.more), [ids, *(a for _, a in others)], strict=True):
        decoded = tensor_from_proto(t)
        np.testing.assert_array_equal(decoded, array)
        assert decoded.dtype == array.dtype
        assert np.shares_memory(decoded, np.frombuffer(wire, np.uint8))


def test_an_input_chunk_holds_at_most_max_names_inputs() -> None:
    one = np.zeros((1, 1), np.float32)
    many = [(f"i{i}", one) for i in range(1, MAX_NAMES)]
    got = decode_gateway_message(encode_input("t", 1, 0, True, "i0", one, many))
    assert isinstance(got, InputData)
    assert len(got.more) == MAX_NAMES - 1
    with pytest.raises(ProtocolViolation, match=f"{MAX_NAMES + 1} inputs"):
        encode_input("t", 1, 0, True, "i0", one, [*many, ("extra", one)])
    # A peer that sends more anyway is refused before the extra tensor is read.
    bigger = pb.GatewayMessage(
        input=pb.InputChunk(
            task_id="t",
            tensor=tensor_to_proto("i0", one),
            more=[tensor_to_proto(f"i{i}", one) for i in range(1, MAX_NAMES + 1)],
        )
    )
    with pytest.raises(ProtocolViolation, match=f"more than {MAX_NAMES} inputs"):
        decode_gateway_message(bigger.SerializeToString())

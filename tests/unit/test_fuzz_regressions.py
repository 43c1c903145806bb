"""Crashes the fuzz targets found (on the code before issue 12's decoder work), kept fixed.

Each test holds the crashing input, minimised by hand to what made it crash, and says
what the gateway now does with it. Found by ``python -m tests.fuzz.driver`` (200,000
inputs or 60 s per target) against the decoders as they were.
"""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError

from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol.chunks import (
    WireTensor,
    decode_car_message,
    decode_gateway_message,
    encode_result,
)
from parkfleet.protocol.limits import ProtocolViolation, tensor_from_proto
from tests.fuzz.targets import CAR_ID, ITEMS, OUTPUTS, TARGETS, TASK_ID, frame

# car_message crash-d7a64d72: protobuf's DecodeError escaped the gateway's deserializer,
# which ends Connect in its "a bug of ours" branch (INTERNAL, a traceback in the log).
TRUNCATED_ACCEPT = bytes.fromhex("1a7f000000000000007461736b1001")
# gateway_message crash-6e6d0fcd: the same on the car's side (an offer cut short).
TRUNCATED_OFFER = bytes.fromhex(
    "1a85010a0966757a7a2d7461736b10011a0b6f6e6e7872756e74696d65224c0a08676174657761793a"
)
# car_message crash-1e8f2822: the fast decoder read a 6-byte key (fee5fdff03 after a
# varint's continuation) that protobuf refuses: it accepted a message protobuf would not.
SIX_BYTE_KEY = bytes.fromhex("3a1f0a017410444028804031cdccccccccccec10800122090a017910fee5fdff03")
# gateway_message crash-f0aea58c: a field number past 2**29 - 1 (805306368), which
# protobuf refuses, read by the fast decoder as an unknown field.
HUGE_FIELD_NUMBER = bytes.fromhex("22190a017410038080808018802022090a017810221a02fb432801")


@pytest.mark.parametrize(
    ("wire", "decode"),
    [
        (TRUNCATED_ACCEPT, decode_car_message),
        (TRUNCATED_OFFER, decode_gateway_message),
        (SIX_BYTE_KEY, decode_car_message),
        (HUGE_FIELD_NUMBER, decode_gateway_message),
    ],
    ids=["truncated-accept", "truncated-offer", "six-byte-key", "huge-field-number"],
)
def test_bytes_protobuf_refuses_are_a_protocol_violation(wire: bytes, decode: object) -> None:
    message = pb.CarMessage if decode is decode_car_message else pb.GatewayMessage
    with pytest.raises(DecodeError):
        message.FromString(wire)
    with pytest.raises(ProtocolViolation, match="malformed"):
        decode(wire)  # type: ignore[operator]


def test_a_shape_with_an_empty_axis_and_a_huge_one_is_refused() -> None:
    # tensor crash-0175385e: dims [2**64 - 1291845888, 0, ...] of uint8 and no data: the
    # product is 0 bytes, as carried, and numpy's reshape raised ValueError.
    dims = (18446744072417705728, 0, 0, 0, 0, 0, 0, 0)
    t = WireTensor(name="y", dtype=pb.UINT8, dims=dims, data=memoryview(b""))
    with pytest.raises(ProtocolViolation, match="at most"):
        tensor_from_proto(t)
    message = pb.NamedTensor(name="y", dtype=pb.UINT8, dims=list(dims))
    with pytest.raises(ProtocolViolation, match="at most"):
        tensor_from_proto(message)


def test_a_result_cut_short_mid_stream_closes_only_that_stream() -> None:
    # car_stream crash-70cf47fa: after hello, telemetry, accept and two results, a
    # result chunk cut off in its data: DecodeError, so the stream ended INTERNAL.
    # The harness fails on INTERNAL, a logged error, or books left inconsistent.
    result = encode_result(
        TASK_ID,
        1,
        0,
        [
            ("label", np.arange(ITEMS, dtype=np.int64)),
            (OUTPUTS[1], np.zeros((ITEMS, 10), np.float32)),
        ],
    )
    hello, telemetry, accept = (
        pb.CarMessage(
            hello=pb.Hello(
                protocol_version=1,
                car_id=CAR_ID,
                capabilities=pb.Capabilities(gpu_memory_mib=8192, runtimes=["onnxruntime"]),
            )
        ),
        pb.CarMessage(telemetry=pb.Telemetry(state=pb.PARKED, plugged_in=True, soc_percent=80)),
        pb.CarMessage(accept=pb.TaskAccept(task_id=TASK_ID, attempt=1)),
    )
    session = b"".join(frame(0, m.SerializeToString()) for m in (hello, telemetry, accept)) + frame(
        0, result[: len(result) // 2]
    )
    TARGETS["car_stream"].one_input(session)

"""Car-link bounds: tensor encoding, version check, message validation."""

from __future__ import annotations

import numpy as np
import pytest

from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol import limits
from parkfleet.protocol.limits import ProtocolViolation, tensor_from_proto, tensor_to_proto


@pytest.mark.parametrize("dtype", ["float32", "float16", "int64", "int32", "uint8"])
def test_tensor_round_trip(dtype: str) -> None:
    a = (np.arange(24) % 7).astype(dtype).reshape(2, 3, 4)
    t = tensor_to_proto("x", a)
    assert t.name == "x"
    assert list(t.dims) == [2, 3, 4]
    b = tensor_from_proto(t)
    assert b.dtype == a.dtype
    np.testing.assert_array_equal(a, b)


def test_tensor_non_contiguous_and_big_endian() -> None:
    a = np.arange(12, dtype=">f4").reshape(3, 4).T
    np.testing.assert_array_equal(tensor_from_proto(tensor_to_proto("x", a)), a)


def test_unsupported_dtype() -> None:
    with pytest.raises(ProtocolViolation, match="float64"):
        tensor_to_proto("x", np.zeros(3))


def test_oversized_tensor_rejected_both_ways() -> None:
    n = limits.MAX_TENSOR_BYTES // 4 + 1
    with pytest.raises(ProtocolViolation, match="limit"):
        tensor_to_proto("x", np.zeros(n, dtype=np.float32))
    t = pb.NamedTensor(name="x", dtype=pb.UINT8, dims=[n * 4], data=b"\0" * (n * 4))
    with pytest.raises(ProtocolViolation, match="limit"):
        tensor_from_proto(t)


@pytest.mark.parametrize(
    ("tensor", "match"),
    [
        (pb.NamedTensor(name="x", dtype=pb.DTYPE_UNSPECIFIED, dims=[1], data=b"\0"), "dtype"),
        (pb.NamedTensor(name="x", dtype=99, dims=[1], data=b"\0"), "dtype"),  # type: ignore[arg-type]
        (pb.NamedTensor(name="x", dtype=pb.FLOAT32, dims=[2], data=b"\0" * 4), "carries 4"),
        (pb.NamedTensor(name="x", dtype=pb.UINT8, dims=[1] * 9, data=b"\0"), "dims"),
        (
            pb.NamedTensor(name="x", dtype=pb.FLOAT32, dims=[2**40, 2**40], data=b"\0" * 4),
            "at most",
        ),
        (pb.NamedTensor(name="x" * 300, dtype=pb.UINT8, dims=[1], data=b"\0"), "name"),
    ],
)
def test_malformed_tensor(tensor: pb.NamedTensor, match: str) -> None:
    with pytest.raises(ProtocolViolation, match=match):
        tensor_from_proto(tensor)


def test_protocol_version() -> None:
    assert limits.PROTOCOL_VERSION == pb.PROTOCOL_VERSION == 1
    limits.check_protocol_version(1)
    with pytest.raises(ProtocolViolation, match="version 2 is not supported"):
        limits.check_protocol_version(2)


def test_channel_options_bound_messages() -> None:
    for options in (limits.channel_options(), limits.server_options()):
        d = dict(options)
        assert d["grpc.max_receive_message_length"] == limits.MAX_MESSAGE_BYTES
        assert d["grpc.max_send_message_length"] == limits.MAX_MESSAGE_BYTES
    assert limits.MAX_TENSOR_BYTES < limits.MAX_MESSAGE_BYTES


def test_gateway_pings_notice_a_silent_car_within_10_s_and_tolerate_car_pings() -> None:
    server = dict(limits.server_options())
    car = dict(limits.channel_options())
    assert server["grpc.keepalive_time_ms"] == limits.GATEWAY_PING_INTERVAL_MS
    assert server["grpc.keepalive_timeout_ms"] == limits.GATEWAY_PING_TIMEOUT_MS
    assert limits.LOSS_DETECTION_BOUND_S <= 10.0
    # Pinging goes on however long the gateway has nothing to send to the car.
    assert server["grpc.http2.max_pings_without_data"] == 0
    # The cars' own pings come no more often than the gateway accepts them.
    assert car["grpc.keepalive_time_ms"] >= server["grpc.http2.min_ping_interval_without_data_ms"]
    assert server["grpc.http2.max_ping_strikes"] == 0


def test_validate_car_message_kinds() -> None:
    assert limits.validate_car_message(pb.CarMessage(hello=pb.Hello())) == "hello"
    assert limits.validate_car_message(pb.CarMessage(accept=pb.TaskAccept(task_id="t"))) == "accept"
    ok = pb.CarMessage(
        result=pb.ResultChunk(task_id="t", outputs=[tensor_to_proto("y", np.zeros(1, "f4"))])
    )
    assert limits.validate_car_message(ok) == "result"


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        (pb.CarMessage(), "empty"),
        (pb.CarMessage(accept=pb.TaskAccept()), "task_id is empty"),
        (pb.CarMessage(done=pb.TaskDone(task_id="t" * 1000)), "task_id"),
        (pb.CarMessage(result=pb.ResultChunk(task_id="t")), "no outputs"),
        (pb.CarMessage(log=pb.TaskLog(task_id="t", lines=["x"] * 101)), "lines"),
        (pb.CarMessage(telemetry=pb.Telemetry(soc_percent=101)), "soc_percent"),
        (pb.CarMessage(telemetry=pb.Telemetry(soc_percent=float("nan"))), "soc_percent"),
        (
            pb.CarMessage(
                hello=pb.Hello(
                    policy=pb.OwnerPolicy(blocked_hours=[pb.HourWindow(start_hour=3, end_hour=25)])
                )
            ),
            "out of range",
        ),
        (
            pb.CarMessage(hello=pb.Hello(capabilities=pb.Capabilities(runtimes=["r"] * 65))),
            "runtimes",
        ),
        (
            pb.CarMessage(failed=pb.TaskFailed(task_id="t", message="m" * 5000)),
            "failed.message",
        ),
    ],
)
def test_validate_car_message_violations(msg: pb.CarMessage, match: str) -> None:
    with pytest.raises(ProtocolViolation, match=match):
        limits.validate_car_message(msg)

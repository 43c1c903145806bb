"""Bounds of the car link, shared by both ends: sizes, versions, tensor encoding.

Every message is size-bounded on both sides (gRPC's own limit from
:func:`channel_options`), and every field a peer controls is checked before use;
a violation raises :class:`ProtocolViolation`, which closes only that peer's stream.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final, Protocol

import numpy as np

from parkfleet.protocol import carlink_pb2 as pb

__all__ = [
    "GATEWAY_PING_INTERVAL_MS",
    "GATEWAY_PING_TIMEOUT_MS",
    "LOSS_DETECTION_BOUND_S",
    "MAX_DIMS",
    "MAX_FIELDS",
    "MAX_ID_CHARS",
    "MAX_LOG_LINES",
    "MAX_LOG_LINE_CHARS",
    "MAX_MESSAGE_BYTES",
    "MAX_MODEL_CHUNK_BYTES",
    "MAX_NAMES",
    "MAX_TENSOR_BYTES",
    "ORT_ELEMENT_TYPES",
    "PROTOCOL_VERSION",
    "ProtocolViolation",
    "TensorFields",
    "channel_options",
    "check_protocol_version",
    "check_text",
    "dtype_from_proto",
    "dtype_to_proto",
    "server_options",
    "tensor_from_proto",
    "tensor_to_proto",
    "validate_car_message",
    "wire_tensor",
]

PROTOCOL_VERSION: Final[int] = int(pb.PROTOCOL_VERSION)
# One gRPC message, either way. Tensors are chunked well below it.
MAX_MESSAGE_BYTES: Final[int] = 4 * 1024 * 1024
# One tensor's payload; leaves room for the envelope inside MAX_MESSAGE_BYTES.
MAX_TENSOR_BYTES: Final[int] = 3 * 1024 * 1024
# One FetchModel chunk.
MAX_MODEL_CHUNK_BYTES: Final[int] = 1024 * 1024
MAX_DIMS: Final[int] = 8
# Fields a decoder reads in one message, all levels together: bounds its work whatever the
# message holds (a result of MAX_NAMES outputs, each with unpacked dims, has about 800).
MAX_FIELDS: Final[int] = 2048
# Task ids, names, reasons: short identifiers.
MAX_ID_CHARS: Final[int] = 256
MAX_NAMES: Final[int] = 64
MAX_LOG_LINES: Final[int] = 100
MAX_LOG_LINE_CHARS: Final[int] = 4096

# A car that vanishes without a word (out of Wi-Fi range: no FIN, no RST) is noticed by
# the gateway's own HTTP/2 pings: one goes out once the car has been quiet for
# GATEWAY_PING_INTERVAL_MS, and the link closes when it is unanswered
# GATEWAY_PING_TIMEOUT_MS after it was written; the car's task moves at once.
# Pings rather than a shorter telemetry timeout: telemetry comes every 10 s, and a timeout
# under 10 s would need it every 2-3 s, each message decoded and accounted in Python on
# the gateway's loop; a ping is a 17-byte frame that gRPC's C core sends and the car's
# answers, no Python at either end (``make bench-silent-loss`` measures the time and the
# bytes). The telemetry timeout stays, for a car that answers pings but says nothing.
GATEWAY_PING_INTERVAL_MS: Final[int] = 4_000
# Time for the car's answer: a cellular round trip well past its usual tenths of a second.
GATEWAY_PING_TIMEOUT_MS: Final[int] = 4_000
# The longest a silent loss goes unnoticed (the goal is 10 s: the rest is margin).
LOSS_DETECTION_BOUND_S: Final[float] = (GATEWAY_PING_INTERVAL_MS + GATEWAY_PING_TIMEOUT_MS) / 1000

_TO_NUMPY: Final[dict[int, np.dtype[np.generic]]] = {
    pb.FLOAT32: np.dtype("<f4"),
    pb.FLOAT16: np.dtype("<f2"),
    pb.INT64: np.dtype("<i8"),
    pb.INT32: np.dtype("<i4"),
    pb.UINT8: np.dtype("u1"),
}
_FROM_NUMPY: Final[dict[str, pb.DType.ValueType]] = {
    "float32": pb.FLOAT32,
    "float16": pb.FLOAT16,
    "int64": pb.INT64,
    "int32": pb.INT32,
    "uint8": pb.UINT8,
}

# ONNX Runtime's element types that the car link carries, as numpy names them: what a
# model's declared inputs and outputs must be for their tensors to travel.
ORT_ELEMENT_TYPES: Final[dict[str, str]] = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
}


class ProtocolViolation(Exception):
    """A peer sent something the protocol does not allow; its message says what."""


class TensorFields(Protocol):
    """A received tensor's fields: a :class:`NamedTensor`, or a view of one on the wire."""

    @property
    def name(self) -> str: ...

    @property
    def dtype(self) -> int: ...

    @property
    def dims(self) -> Sequence[int]: ...

    @property
    def data(self) -> bytes | memoryview: ...


def channel_options() -> list[tuple[str, int]]:
    """gRPC options for the car link's channel, used by the agent (and test clients).

    Returns:
        Message size bounds and keepalive settings.
    """
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        # A car on a flaky cellular link notices a dead gateway within ~40 s.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def server_options() -> list[tuple[str, int]]:
    """gRPC options for the gateway's server: the same bounds, its own pings to each car
    (a silent loss noticed within ``LOSS_DETECTION_BOUND_S``), and tolerance of car pings.

    Returns:
        Options for ``grpc.aio.server``.
    """
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", GATEWAY_PING_INTERVAL_MS),
        ("grpc.keepalive_timeout_ms", GATEWAY_PING_TIMEOUT_MS),
        # An idle car's stream carries no data from the gateway for hours: keep pinging
        # it (gRPC's default stops after 2 pings without data sent).
        ("grpc.http2.max_pings_without_data", 0),
        # Cars ping every 30 s (channel_options); accept that without "too many pings"
        # GOAWAYs: the minimum interval of car pings (min_recv_ping_interval_without_data,
        # so named in gRPC core), and no strikes counted.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.so_reuseport", 0),
    ]


def check_protocol_version(version: int) -> None:
    """Raises :class:`ProtocolViolation` unless ``version`` is the one spoken here.

    Args:
        version: The peer's ``protocol_version``.
    """
    if version != PROTOCOL_VERSION:
        raise ProtocolViolation(
            f"protocol version {version} is not supported: this side speaks version "
            f"{PROTOCOL_VERSION} only; upgrade the agent or the gateway"
        )


def check_text(value: str, field: str, limit: int = MAX_ID_CHARS) -> None:
    """Raises :class:`ProtocolViolation` when a text field is longer than ``limit``."""
    if len(value) > limit:
        raise ProtocolViolation(f"{field} is {len(value)} characters, the limit is {limit}")


def dtype_to_proto(dtype: np.dtype[np.generic] | type) -> pb.DType.ValueType:
    """The wire dtype of a numpy dtype; raises :class:`ProtocolViolation` if unsupported."""
    name = np.dtype(dtype).name
    try:
        return _FROM_NUMPY[name]
    except KeyError:
        raise ProtocolViolation(f"dtype {name} cannot travel on the car link") from None


def dtype_from_proto(dtype: int) -> np.dtype[np.generic]:
    """The numpy dtype of a wire dtype; raises :class:`ProtocolViolation` if unknown."""
    try:
        return _TO_NUMPY[dtype]
    except KeyError:
        raise ProtocolViolation(f"unknown tensor dtype {dtype}") from None


def wire_tensor(name: str, array: np.ndarray) -> tuple[pb.DType.ValueType, np.ndarray]:
    """Checks a tensor against the protocol's bounds and lays it out for the wire.

    Returns:
        The wire dtype and the data as a little-endian, C-ordered array (``array``
        itself when it already is one).

    Raises:
        ProtocolViolation: The name is bad, the dtype unsupported, or the tensor exceeds
            ``MAX_TENSOR_BYTES`` or ``MAX_DIMS``.
    """
    check_text(name, "tensor name")
    wire = dtype_to_proto(array.dtype)
    if array.ndim > MAX_DIMS:
        raise ProtocolViolation(f"tensor {name!r} has {array.ndim} dims, the limit is {MAX_DIMS}")
    if array.nbytes > MAX_TENSOR_BYTES:
        raise ProtocolViolation(
            f"tensor {name!r} is {array.nbytes} bytes, the limit is {MAX_TENSOR_BYTES}"
        )
    return wire, np.ascontiguousarray(array, dtype=_TO_NUMPY[wire])


def tensor_to_proto(name: str, array: np.ndarray) -> pb.NamedTensor:
    """Encodes an array as a :class:`NamedTensor` (little-endian, C order).

    Args:
        name: The tensor's name (an ONNX input or output name).
        array: The data; its dtype must be one the protocol carries.

    Returns:
        The wire tensor.

    Raises:
        ProtocolViolation: The dtype is unsupported or the tensor exceeds
            ``MAX_TENSOR_BYTES`` or ``MAX_DIMS``.
    """
    wire, little = wire_tensor(name, array)
    return pb.NamedTensor(name=name, dtype=wire, dims=list(array.shape), data=little.tobytes())


def _check_dims_count(name: str, count: int) -> None:
    """Raises :class:`ProtocolViolation` when a tensor has more than ``MAX_DIMS`` dims.

    Decoders call it with the count alone, before they build anything from the dims.
    """
    if count > MAX_DIMS:
        raise ProtocolViolation(f"tensor {name!r} has {count} dims, the limit is {MAX_DIMS}")


def tensor_from_proto(t: TensorFields) -> np.ndarray:
    """Decodes a :class:`NamedTensor` after checking dtype, dims and size.

    Every check comes before the work it guards: the number of dims before they are
    copied, each dim and the payload size before the shape is built.

    Args:
        t: The wire tensor (a message, or a :class:`~parkfleet.protocol.chunks.WireTensor`
            viewing the received bytes).

    Returns:
        A read-only array viewing the message's bytes (copy it to write).

    Raises:
        ProtocolViolation: Unknown dtype, too many dims, a dim out of range, a size that
            does not match the dims, or a payload over ``MAX_TENSOR_BYTES``.
    """
    name = t.name
    check_text(name, "tensor name")
    dtype = dtype_from_proto(t.dtype)
    # A message's repeated field knows its length: count before copying (a dims bomb).
    _check_dims_count(name, len(t.dims))
    dims = list(t.dims)
    # Each read of a message's ``data`` copies the payload: read it once.
    data = t.data
    if len(data) > MAX_TENSOR_BYTES:
        raise ProtocolViolation(
            f"tensor {name!r} is {len(data)} bytes, the limit is {MAX_TENSOR_BYTES}"
        )
    if min(dims, default=0) < 0:
        raise ProtocolViolation(f"tensor {name!r} has a negative dim in {dims}")
    # Empty axes count as 1 here: a shape like [0, 2**40] holds nothing, but no array can
    # have it. math.prod on Python ints cannot overflow.
    if math.prod(d or 1 for d in dims) > MAX_TENSOR_BYTES:
        raise ProtocolViolation(
            f"tensor {name!r} has dims {dims}: a shape holds at most {MAX_TENSOR_BYTES} "
            "elements (its empty axes counted as 1)"
        )
    expected = math.prod(dims) * dtype.itemsize
    if expected != len(data):
        raise ProtocolViolation(
            f"tensor {name!r} has dims {dims} of {dtype.name} ({expected} bytes) "
            f"but carries {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=dtype).reshape(dims)


def _check_task_ref(task_id: str, field: str) -> None:
    if not task_id:
        raise ProtocolViolation(f"{field}.task_id is empty")
    check_text(task_id, f"{field}.task_id")


def validate_car_message(msg: pb.CarMessage) -> str:
    """Checks the bounds of a car's message that need no gateway state.

    State-dependent checks (known task ids, item ranges) are the gateway's.

    Args:
        msg: A message received from a car.

    Returns:
        The name of the oneof field that is set.

    Raises:
        ProtocolViolation: The message is empty or a field is out of bounds.
    """
    kind = msg.WhichOneof("body")
    if kind is None:
        raise ProtocolViolation("empty CarMessage: no body set")
    if kind == "telemetry":
        t = msg.telemetry
        if not 0.0 <= t.soc_percent <= 100.0 or math.isnan(t.soc_percent):
            raise ProtocolViolation(f"telemetry.soc_percent {t.soc_percent} is not in 0..100")
    elif kind == "hello":
        h = msg.hello
        check_text(h.car_id, "hello.car_id")
        check_text(h.agent_version, "hello.agent_version")
        caps = h.capabilities
        check_text(caps.gpu_model, "hello.capabilities.gpu_model")
        for field, values in (
            ("hello.capabilities.runtimes", caps.runtimes),
            ("hello.capabilities.execution_providers", caps.execution_providers),
            ("hello.held_task_ids", h.held_task_ids),
        ):
            if len(values) > MAX_NAMES:
                raise ProtocolViolation(f"{field} has {len(values)} entries, limit {MAX_NAMES}")
            for v in values:
                check_text(v, field)
        windows = h.policy.blocked_hours
        if len(windows) > 24:
            raise ProtocolViolation(f"hello.policy.blocked_hours has {len(windows)} windows")
        for w in windows:
            if w.start_hour > 23 or not 1 <= w.end_hour <= 24:
                raise ProtocolViolation(
                    f"hello.policy.blocked_hours window {w.start_hour}..{w.end_hour} "
                    "is out of range (start 0..23, end 1..24)"
                )
    elif kind == "log":
        _check_task_ref(msg.log.task_id, "log")
        if len(msg.log.lines) > MAX_LOG_LINES:
            raise ProtocolViolation(
                f"log has {len(msg.log.lines)} lines, the limit is {MAX_LOG_LINES}"
            )
        for line in msg.log.lines:
            check_text(line, "log line", MAX_LOG_LINE_CHARS)
    elif kind == "result":
        _check_task_ref(msg.result.task_id, "result")
        if not msg.result.outputs:
            raise ProtocolViolation("result carries no outputs")
        if len(msg.result.outputs) > MAX_NAMES:
            raise ProtocolViolation(f"result has {len(msg.result.outputs)} outputs")
        for output in msg.result.outputs:
            _check_dims_count(output.name[:MAX_ID_CHARS], len(output.dims))
    else:
        body = getattr(msg, kind)
        _check_task_ref(body.task_id, kind)
        for text_field in ("reason", "message"):
            if hasattr(body, text_field):
                check_text(getattr(body, text_field), f"{kind}.{text_field}", MAX_LOG_LINE_CHARS)
    return kind

"""The fuzz targets: what each feeds the code under test, what counts as a crash, its seeds.

The property of every target: any input is handled, or refused with
:class:`~parkfleet.protocol.limits.ProtocolViolation` (which closes only that peer's
stream); any other exception is a crash. The decoder targets also hold the hand-written
decoder to protobuf's own parser: what it accepts, protobuf parses to the same fields,
and what it calls malformed, protobuf refuses too.

``car_stream`` runs the gateway's real ``CarLinkService.Connect`` for one car, in process:
the stream is a small stand-in for grpc.aio's servicer context (the car's certificate, its
messages through the registered deserializer, replies kept, ``abort`` raising as grpc's
does), over a real ``Registry``, ``TaskManager`` and ``GatewayMetrics`` with a task
submitted for the car's cell. A stream that ends with ``INTERNAL`` (the gateway's "a bug
of ours" branch), an error logged, or books that disagree afterwards is a crash.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import atheris
import grpc
import numpy as np

from parkfleet.certs import FleetCA, car_identity
from parkfleet.gateway.events import EventBus
from parkfleet.gateway.inmemory import ArrayInput, MemorySink
from parkfleet.gateway.metrics import GatewayMetrics
from parkfleet.gateway.modelstore import ModelStore
from parkfleet.gateway.registry import Registry
from parkfleet.gateway.server import CarLinkService
from parkfleet.gateway.tasks import TaskManager
from parkfleet.gateway.taskstate import Task
from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol.chunks import (
    InputData,
    ResultData,
    WireTensor,
    decode_car_message,
    decode_gateway_message,
    encode_input,
    encode_result,
)
from parkfleet.protocol.limits import (
    MAX_FIELDS,
    MAX_TENSOR_BYTES,
    PROTOCOL_VERSION,
    ProtocolViolation,
    TensorFields,
    tensor_from_proto,
    validate_car_message,
)
from parkfleet.taskport import ModelRef, TaskSpec

__all__ = ["CAR_ID", "ITEMS", "OUTPUTS", "TARGETS", "TASK_ID", "Target", "frame"]

ROOT = Path(__file__).resolve().parents[2]
# Below this size the fast decoder's count cannot run out, so where it calls a message
# malformed, protobuf must refuse it too (above it the count may refuse groups first).
_COMPARE_BELOW = 2 * MAX_FIELDS


@dataclass(frozen=True)
class Target:
    """One fuzz target.

    Attributes:
        name: Its name on the command line and in the table.
        one_input: Runs one input; raises on a crash.
        seeds: The seed corpus: real encoded messages (or sessions of them).
        max_len: The longest input libFuzzer makes (``-max_len``).
    """

    name: str
    one_input: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    max_len: int


# ---- the decoders -------------------------------------------------------------------


def _decode_tensor(t: TensorFields) -> np.ndarray | None:
    """The array, or None when refused; an array must be exactly what its fields say."""
    try:
        array = tensor_from_proto(t)
    except ProtocolViolation:
        return None
    assert array.shape == tuple(t.dims), (array.shape, t.dims)
    assert array.nbytes == len(t.data)
    return array


def _same_tensor(ours: WireTensor, theirs: pb.NamedTensor) -> None:
    got = (ours.name, ours.dtype, list(ours.dims), bytes(ours.data))
    want = (theirs.name, theirs.dtype, list(theirs.dims), theirs.data)
    assert got == want, f"fast decoder read {got!r}, protobuf {want!r}"


def _decoded(decode: Callable[[bytes], Any], data: bytes, message: Any) -> Any:
    """What ``decode`` makes of ``data``, or None when it refused it.

    A refusal as malformed must be protobuf's verdict too.
    """
    try:
        return decode(data)
    except ProtocolViolation as e:
        if str(e).startswith("malformed") and len(data) <= _COMPARE_BELOW:
            try:
                message.FromString(data)
            except Exception:
                return None
            raise AssertionError(f"the decoder called protobuf-valid bytes malformed: {e}") from e
        return None


def car_message(data: bytes) -> None:
    """The gateway's deserializer, then the checks the gateway makes before using a message."""
    msg = _decoded(decode_car_message, data, pb.CarMessage)
    if msg is None:
        return
    outputs: Sequence[TensorFields]
    if isinstance(msg, ResultData):
        theirs = pb.CarMessage.FromString(data)
        assert theirs.WhichOneof("body") == "result"
        r = theirs.result
        assert (msg.task_id, msg.attempt, msg.first_item) == (r.task_id, r.attempt, r.first_item)
        assert len(msg.outputs) == len(r.outputs)
        for ours, t in zip(msg.outputs, r.outputs, strict=True):
            _same_tensor(ours, t)
        try:
            msg.validate()
        except ProtocolViolation:
            return
        outputs = msg.outputs
    else:
        try:
            kind = validate_car_message(msg)
        except ProtocolViolation:
            return
        outputs = msg.result.outputs if kind == "result" else ()
    for t in outputs:
        _decode_tensor(t)


def gateway_message(data: bytes) -> None:
    """The car's deserializer, then its input chunks' tensors."""
    msg = _decoded(decode_gateway_message, data, pb.GatewayMessage)
    if msg is None:
        return
    if isinstance(msg, InputData):
        theirs = pb.GatewayMessage.FromString(data)
        assert theirs.WhichOneof("body") == "input"
        c = theirs.input
        assert (msg.task_id, msg.attempt, msg.first_item, msg.last) == (
            c.task_id,
            c.attempt,
            c.first_item,
            c.last,
        )
        _same_tensor(msg.tensor, c.tensor)
        assert len(msg.more) == len(c.more)
        for ours, t in zip(msg.more, c.more, strict=True):
            _same_tensor(ours, t)
        for t in (msg.tensor, *msg.more):
            _decode_tensor(t)
    elif msg.WhichOneof("body") == "input":
        for t in (msg.input.tensor, *msg.input.more):
            _decode_tensor(t)


_DTYPES = [int(v) for v in pb.DType.values()] + [6, -1, 2**31 - 1, -(2**31)]
_ITEMSIZE = {int(pb.FLOAT32): 4, int(pb.FLOAT16): 2, int(pb.INT64): 8, int(pb.INT32): 4}
_DIMS = [0, 1, 2, 3, 8, 255, 2**31, 2**32, 2**40, 2**63, 2**64 - 1, MAX_TENSOR_BYTES]


def tensor(data: bytes) -> None:
    """``tensor_from_proto`` on fuzzed NamedTensor fields: as a message, as a wire view,
    and through the decoder (which may refuse earlier, never later)."""
    fdp = atheris.FuzzedDataProvider(data)
    name = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 300))
    dtype = fdp.PickValueInList(_DTYPES)
    dims = [
        fdp.PickValueInList(_DIMS) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 2**64 - 1)
        for _ in range(fdp.ConsumeIntInRange(0, 12))
    ]
    size = math.prod(dims) * _ITEMSIZE.get(dtype, 1)
    if size > 65536 or fdp.ConsumeBool():
        size = fdp.ConsumeIntInRange(0, 4096)
    payload = fdp.ConsumeBytes(size)
    message = pb.NamedTensor(name=name, dtype=dtype, dims=dims, data=payload)
    from_message = _decode_tensor(message)
    from_wire = _decode_tensor(WireTensor(name, dtype, tuple(dims), memoryview(payload)))
    assert (from_message is None) == (from_wire is None)
    if from_message is not None and from_wire is not None:
        assert from_message.tobytes() == from_wire.tobytes()
    wire = pb.CarMessage(result=pb.ResultChunk(task_id="t", outputs=[message]))
    try:
        decoded = decode_car_message(wire.SerializeToString())
    except ProtocolViolation:
        assert from_message is None, "the decoder refused a tensor tensor_from_proto takes"
        return
    assert isinstance(decoded, ResultData)
    assert (_decode_tensor(decoded.outputs[0]) is None) == (from_message is None)


def _car_seeds() -> list[bytes]:
    probs = np.linspace(0, 1, 40, dtype=np.float32).reshape(4, 10)
    label = np.arange(4, dtype=np.int64)
    result = encode_result(TASK_ID, 1, 0, [("label", label), ("probabilities", probs)])
    unpacked = pb.NamedTensor(name="y", dtype=pb.FLOAT32, data=b"\0" * 8)
    seeds = [
        result,
        encode_result("t", 2**32 - 1, 2**63, [("y", np.zeros((0, 3), np.float16))]),
        # Dims unpacked (field 3 as varints), and a result protobuf merges from two.
        pb.CarMessage(result=pb.ResultChunk(task_id="t", outputs=[unpacked])).SerializeToString()
        + b"\x3a\x04\x22\x02\x18\x02",
        result + result,
        # Larger than 2 * MAX_FIELDS bytes, so counted before protobuf parses them.
        pb.CarMessage(log=pb.TaskLog(task_id="t", lines=["x" * 3000] * 2)).SerializeToString(),
        pb.CarMessage(
            result=pb.ResultChunk(task_id="t", outputs=[unpacked] * 300)
        ).SerializeToString()
        + b"\x3a\x04\x22\x02\x18\x02",
        # The most a result may carry: MAX_NAMES outputs of MAX_DIMS dims.
        encode_result("t", 1, 0, [(f"o{i}", np.zeros((1,) * 8, np.float32)) for i in range(64)]),
    ]
    return seeds + [m.SerializeToString() for m in _sample_car_messages()]


def _gateway_seeds() -> list[bytes]:
    return [
        encode_input(TASK_ID, 1, 0, False, "x", np.arange(24, dtype=np.float32).reshape(6, 4)),
        encode_input("t", 3, 2**40, True, "x", np.zeros((2, 0), np.uint8)),
        # Several named inputs (a text model's tokens), int64 and int32.
        encode_input(
            TASK_ID,
            1,
            0,
            True,
            "input_ids",
            np.arange(12, dtype=np.int64).reshape(3, 4),
            [("attention_mask", np.ones((3, 4), np.int64)), ("ids32", np.zeros((3, 4), np.int32))],
        ),
        # The most an input chunk may carry: MAX_NAMES inputs of MAX_DIMS dims.
        encode_input(
            "t",
            1,
            0,
            False,
            "i0",
            np.zeros((1,) * 8, np.float32),
            [(f"i{i}", np.zeros((1,) * 8, np.float32)) for i in range(1, 64)],
        ),
        pb.GatewayMessage(
            offer=pb.TaskOffer(
                task_id=TASK_ID,
                attempt=1,
                runtime="onnxruntime",
                model=pb.ModelRef(uri="gateway:", sha256="0" * 64),
                input_name="x",
                input_names=["x", "mask"],
                output_names=list(OUTPUTS),
                batch_size=8,
                item_end=ITEMS,
            )
        ).SerializeToString(),
        pb.GatewayMessage(welcome=pb.Welcome(car_id=CAR_ID, cell="p-0")).SerializeToString(),
        pb.GatewayMessage(cancel=pb.TaskCancel(task_id="t", reason="Moved")).SerializeToString(),
        pb.GatewayMessage(redirect=pb.Redirect(address="127.0.0.2:1")).SerializeToString(),
        # Larger than 2 * MAX_FIELDS bytes, so counted before protobuf parses it.
        pb.GatewayMessage(
            offer=pb.TaskOffer(task_id="t", output_names=["o" * 100] * 64)
        ).SerializeToString(),
    ]


def _tensor_seeds() -> list[bytes]:
    return [b"", b"\x01y\x01\x02\x01\x03" + b"\0" * 64, bytes(range(256))]


# ---- the gateway's stream handling ------------------------------------------------------

CAR_ID = "fuzz-car"
TASK_ID = "fuzz-task"
OUTPUTS = ("label", "probabilities")
ITEMS = 64
_INPUTS = np.zeros((ITEMS, 4), np.float32)
_KINDS = [
    "hello",
    "telemetry",
    "accept",
    "refuse",
    "progress",
    "checkpoint",
    "result",
    "done",
    "failed",
    "log",
]


def _sample_car_messages() -> list[pb.CarMessage]:
    """One message of each kind, as a car that does its job sends them."""
    return [
        pb.CarMessage(hello=_hello()),
        pb.CarMessage(telemetry=_parked()),
        pb.CarMessage(accept=pb.TaskAccept(task_id=TASK_ID, attempt=1)),
        pb.CarMessage(progress=pb.TaskProgress(task_id=TASK_ID, attempt=1, items_done=32)),
        pb.CarMessage(checkpoint=pb.TaskCheckpoint(task_id=TASK_ID, attempt=1, next_item=ITEMS)),
        pb.CarMessage(done=pb.TaskDone(task_id=TASK_ID, attempt=1, items=ITEMS, energy_wh=0.5)),
        pb.CarMessage(
            failed=pb.TaskFailed(task_id=TASK_ID, attempt=1, reason="Leaving", retriable=True)
        ),
        pb.CarMessage(refuse=pb.TaskRefuse(task_id=TASK_ID, attempt=1, reason="PolicyBusy")),
        pb.CarMessage(log=pb.TaskLog(task_id=TASK_ID, attempt=1, lines=["started"])),
    ]


def _hello(**fields: Any) -> pb.Hello:
    base: dict[str, Any] = {
        "protocol_version": PROTOCOL_VERSION,
        "agent_version": "fuzz",
        "capabilities": pb.Capabilities(
            gpu_model="fuzz", gpu_count=1, gpu_memory_mib=8192, runtimes=["onnxruntime"]
        ),
        "car_id": CAR_ID,
    }
    return pb.Hello(**(base | fields))


def _parked() -> pb.Telemetry:
    return pb.Telemetry(
        state=pb.PARKED,
        plugged_in=True,
        soc_percent=80.0,
        gpu_temp_c=40.0,
        free_gpu_memory_mib=8192,
        link_quality=0.9,
    )


def _results(first: int, n: int) -> list[tuple[str, np.ndarray]]:
    return [
        ("label", np.arange(first, first + n, dtype=np.int64)),
        ("probabilities", np.full((n, 10), 0.1, np.float32)),
    ]


def frame(kind: int, payload: bytes) -> bytes:
    """One frame of a ``car_stream`` input: kind 0 sends ``payload`` as it is (see _frames)."""
    return bytes([kind]) + len(payload).to_bytes(2, "little") + payload


def _stream_seeds() -> list[bytes]:
    hello, parked, accept, progress, checkpoint, done, failed, refuse, log = (
        frame(0, m.SerializeToString()) for m in _sample_car_messages()
    )
    half = frame(0, encode_result(TASK_ID, 1, 0, _results(0, ITEMS // 2)))
    rest = frame(0, encode_result(TASK_ID, 1, ITEMS // 2, _results(ITEMS // 2, ITEMS // 2)))
    structured = b"".join(frame(k, bytes(range(k, k + 40))) for k in (1, 2, 3))
    return [
        hello + parked + accept + half + progress + rest + checkpoint + done,
        hello + parked + accept + half + log + failed + parked + structured,
        hello + parked + refuse + parked + accept + half + half + rest + done,
        hello + parked + structured + structured,
        structured,
    ]


class _Errors(logging.Handler):
    """Errors the gateway logged (its broad excepts log bugs instead of raising them)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def raise_first(self) -> None:
        records, self.records = self.records, []
        for record in records:
            if record.exc_info and record.exc_info[1] is not None:
                raise record.exc_info[1]
            raise AssertionError(f"the gateway logged an error: {record.getMessage()}")


class _Stream:
    """The one car's stream as ``Connect`` sees grpc.aio's servicer context.

    ``read`` runs the gateway's scheduling first (its own loops run between a car's
    messages), then decodes the next frame with the registered deserializer, as grpc
    does inside ``read``; ``abort`` raises grpc's ``AbortError``.
    """

    def __init__(self, cert_pem: bytes, frames: Iterator[bytes], tasks: TaskManager) -> None:
        self._auth = {"x509_pem_cert": [cert_pem]}
        self._frames = frames
        self._tasks = tasks
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.sent = 0

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    async def read(self) -> Any:
        await settle(self._tasks)
        raw = next(self._frames, None)
        if raw is None:
            return grpc.aio.EOF
        return decode_car_message(raw)

    async def write(self, message: Any) -> None:
        self.sent += 1

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.code, self.details = code, details
        raise grpc.aio.AbortError()


async def settle(tasks: TaskManager) -> None:
    """What the gateway's loops do between messages: place, move stalled, send."""
    tasks.schedule()
    tasks.move_stalled()
    for _ in range(4):
        await asyncio.sleep(0)


def _text(fdp: atheris.FuzzedDataProvider, longest: int = 300) -> str:
    return str(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, longest)))


def _number(fdp: atheris.FuzzedDataProvider, near: int, bits: int = 64) -> int:
    """Mostly near a value the task expects, sometimes anything of ``bits`` bits."""
    if fdp.ConsumeIntInRange(0, 3):
        return max(0, near + fdp.ConsumeIntInRange(-2, ITEMS))
    return int(fdp.ConsumeIntInRange(0, 2**bits - 1))


def _float(fdp: atheris.FuzzedDataProvider) -> float:
    return float(fdp.ConsumeFloat() if fdp.ConsumeBool() else fdp.ConsumeFloatInRange(0, 100))


class _Car:
    """Builds one car's messages from fuzzed bytes, about the task as it stands now."""

    def __init__(self, fdp: atheris.FuzzedDataProvider, task: Task | None) -> None:
        self.fdp = fdp
        live = fdp.ConsumeIntInRange(0, 7) != 0
        self.task_id = TASK_ID if live else _text(fdp)
        attempt = task.attempt if task is not None else 0
        self.attempt = attempt if live else _number(fdp, attempt, 32)
        self.delivered = task.delivered if task is not None else 0

    def message(self) -> bytes:
        fdp = self.fdp
        kind = fdp.PickValueInList(_KINDS)
        if kind == "result":
            return self.result()
        ref = {"task_id": self.task_id, "attempt": self.attempt}
        body: Any
        if kind == "hello":
            body = self.hello()
        elif kind == "telemetry":
            body = self.telemetry()
        elif kind == "accept":
            body = pb.TaskAccept(**ref)
        elif kind == "refuse":
            body = pb.TaskRefuse(**ref, reason=_text(fdp), message=_text(fdp))
        elif kind == "progress":
            items_done = _number(fdp, self.delivered)
            body = pb.TaskProgress(**ref, items_done=items_done, items_per_second=_float(fdp))
        elif kind == "checkpoint":
            body = pb.TaskCheckpoint(**ref, next_item=_number(fdp, self.delivered))
        elif kind == "done":
            body = pb.TaskDone(
                **ref,
                items=_number(fdp, ITEMS),
                energy_wh=_float(fdp),
                energy_modelled=fdp.ConsumeBool(),
                seconds=_float(fdp),
            )
        elif kind == "failed":
            body = pb.TaskFailed(
                **ref,
                reason=_text(fdp),
                message=_text(fdp, 5000),
                retriable=fdp.ConsumeBool(),
                next_item=_number(fdp, self.delivered),
                energy_wh=_float(fdp),
                energy_modelled=fdp.ConsumeBool(),
            )
        else:
            body = pb.TaskLog(**ref, lines=[_text(fdp) for _ in range(fdp.ConsumeIntInRange(0, 4))])
        return pb.CarMessage(**{kind: body}).SerializeToString()

    def hello(self) -> pb.Hello:
        fdp = self.fdp
        windows = [
            pb.HourWindow(
                start_hour=fdp.ConsumeIntInRange(0, 30), end_hour=fdp.ConsumeIntInRange(0, 30)
            )
            for _ in range(fdp.ConsumeIntInRange(0, 3))
        ]
        return _hello(
            protocol_version=PROTOCOL_VERSION if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 3),
            policy=pb.OwnerPolicy(
                only_while_plugged_in=fdp.ConsumeBool(),
                min_soc_percent=fdp.ConsumeIntInRange(0, 2**32 - 1),
                resume_soc_percent=fdp.ConsumeIntInRange(0, 2**32 - 1),
                blocked_hours=windows,
                daily_energy_wh=_float(fdp),
                max_gpu_temp_c=_float(fdp),
                utc_offset_minutes=fdp.ConsumeIntInRange(-(2**31), 2**31 - 1),
            ),
        )

    def telemetry(self) -> pb.Telemetry:
        fdp = self.fdp
        if fdp.ConsumeBool():
            return _parked()
        return pb.Telemetry(
            state=fdp.ConsumeIntInRange(0, 3),
            plugged_in=fdp.ConsumeBool(),
            soc_percent=_float(fdp),
            gpu_temp_c=_float(fdp),
            free_gpu_memory_mib=fdp.ConsumeIntInRange(0, 2**64 - 1),
            link_quality=_float(fdp),
            energy_used_today_wh=_float(fdp),
            unix_time_ms=fdp.ConsumeIntInRange(-(2**63), 2**63 - 1),
        )

    def result(self) -> bytes:
        fdp = self.fdp
        first = _number(fdp, self.delivered)
        n = fdp.ConsumeIntInRange(0, ITEMS)
        tensors = []
        for name in (*OUTPUTS, "extra"):
            if fdp.ConsumeIntInRange(0, 5) == 0:
                continue  # an output missing (or, for "extra", one not asked for: mostly absent)
            if name == "extra" and fdp.ConsumeIntInRange(0, 3):
                continue
            dims = [n, 10] if name == "probabilities" else [n]
            dtype = pb.FLOAT32 if name == "probabilities" else pb.INT64
            if fdp.ConsumeIntInRange(0, 7) == 0:
                dims = [fdp.PickValueInList(_DIMS) for _ in range(fdp.ConsumeIntInRange(0, 9))]
                dtype = fdp.PickValueInList(_DTYPES)
            size = math.prod(dims) * _ITEMSIZE.get(dtype, 1)
            if size > 65536 or fdp.ConsumeIntInRange(0, 7) == 0:
                size = fdp.ConsumeIntInRange(0, 256)
            tensors.append(pb.NamedTensor(name=name, dtype=dtype, dims=dims, data=bytes(size)))
            if fdp.ConsumeIntInRange(0, 15) == 0:
                tensors.append(tensors[-1])  # an output twice
        chunk = pb.ResultChunk(
            task_id=self.task_id, attempt=self.attempt, first_item=first, outputs=tensors
        )
        wire = pb.CarMessage(result=chunk).SerializeToString()
        if fdp.ConsumeIntInRange(0, 3) == 0:
            # Two halves protobuf merges: the fast decoder hands them to protobuf.
            wire = pb.CarMessage(result=pb.ResultChunk(task_id=self.task_id)).SerializeToString()
            wire += pb.CarMessage(
                result=pb.ResultChunk(attempt=self.attempt, first_item=first, outputs=tensors)
            ).SerializeToString()
        return wire


def _frames(data: bytes, tasks: TaskManager) -> Iterator[bytes]:
    """The car's messages: frames of a kind byte, a 2-byte length and a payload.

    Kind 0 mod 4: the payload is the message's bytes as they arrive (raw). Otherwise the
    payload drives :class:`_Car`, which builds a message about the task as it is when
    the gateway reads it.
    """
    pos = 0
    while pos + 3 <= len(data):
        kind = data[pos]
        size = int.from_bytes(data[pos + 1 : pos + 3], "little")
        payload = data[pos + 3 : pos + 3 + size]
        pos += 3 + size
        if kind % 4 == 0:
            yield payload
        else:
            fdp = atheris.FuzzedDataProvider(payload)
            yield _Car(fdp, tasks.tasks.get(TASK_ID)).message()


class _Gateway:
    """What lives as long as a gateway process: certificates, metrics, the model store."""

    def __init__(self) -> None:
        ca = FleetCA.create("fuzz CA")
        self.cert_pem = ca.issue_car(CAR_ID, {"pool": "p"}).cert_pem
        self.identity = car_identity(self.cert_pem)
        # One registry of metrics for every input, as in a gateway: unbounded label
        # values would show as growing memory (libFuzzer's -rss_limit_mb).
        self.metrics = GatewayMetrics()
        self.models = ModelStore(ROOT / ".cache" / "fuzz" / "models")
        self.errors = _Errors()
        logging.getLogger("parkfleet").addHandler(self.errors)
        self.loop = asyncio.new_event_loop()

    def run(self, data: bytes) -> None:
        self.loop.run_until_complete(self.session(data))

    async def session(self, data: bytes) -> None:
        registry = Registry(self.metrics)
        tasks = TaskManager(registry, self.metrics, EventBus())
        service = CarLinkService(registry, tasks, self.models, self.metrics)
        sink = MemorySink()
        tasks.submit(
            TaskSpec(
                task_id=TASK_ID,
                cell=service.place(self.identity).cell,
                runtime="onnxruntime",
                model=ModelRef(sha256="0" * 64),
                input_name="x",
                output_names=OUTPUTS,
                batch_size=8,
                item_start=0,
                item_end=ITEMS,
                inputs=ArrayInput(_INPUTS),
                sink=sink,
            )
        )
        stream = _Stream(self.cert_pem, _frames(data, tasks), tasks)
        try:
            await service.Connect(None, stream)  # type: ignore[arg-type]
        except grpc.aio.AbortError:
            pass
        finally:
            await settle(tasks)
            await tasks.close()
        self.errors.raise_first()
        assert stream.code != grpc.StatusCode.INTERNAL, stream.details
        _check_books(registry, tasks, sink)


def _check_books(registry: Registry, tasks: TaskManager, sink: MemorySink) -> None:
    """After the stream: the car is gone everywhere, and the sink has each item once."""
    assert not registry.cars, "the car is still registered after its stream ended"
    for cell in registry.cells.values():
        counts = (len(cell.cars), len(cell.available), cell.eligible, cell.busy)
        assert counts == (0, 0, 0, 0), f"cell {cell.id} counts {counts} without cars"
    for task in tasks.tasks.values():
        assert task.car is None, f"task {task.spec.task_id} ({task.state}) holds a gone car"
    items = sink.items()
    assert items == list(range(len(items))), f"the sink got items {items}"


_gateway: _Gateway | None = None


def car_stream(data: bytes) -> None:
    """One car's session with the gateway's real stream handling."""
    global _gateway
    if _gateway is None:
        _gateway = _Gateway()
    _gateway.run(data)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("car_message", car_message, _car_seeds, 8192),
        Target("gateway_message", gateway_message, _gateway_seeds, 8192),
        Target("tensor", tensor, _tensor_seeds, 1024),
        Target("car_stream", car_stream, _stream_seeds, 4096),
    )
}

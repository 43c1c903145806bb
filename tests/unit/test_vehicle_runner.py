"""The task runner: batching, item order, checkpoints, stopping — with a real tiny model."""

from __future__ import annotations

import asyncio
import hashlib
from typing import ClassVar

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from parkfleet.energymodel import CarPower
from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol import limits
from parkfleet.protocol.chunks import InputData, decode_gateway_message, encode_input
from parkfleet.vehicle.compute import ModelledCompute, OrtCompute, _run_batches
from parkfleet.vehicle.energy import EnergyMeter
from parkfleet.vehicle.runner import StopRequest, TaskRunner

pytestmark = pytest.mark.timeout(30)


def tiny_model() -> bytes:
    """y = 2x and s = sum(x) per item: enough to check order and batching."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("double", TensorProto.FLOAT, [None, 4])
    s = helper.make_tensor_value_info("sum", TensorProto.FLOAT, [None, 1])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["input", "two"], ["double"]),
            helper.make_node("ReduceSum", ["input", "axes"], ["sum"], keepdims=1),
        ],
        "tiny",
        [x],
        [y, s],
        [two, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


class RecordingSession:
    def __init__(self) -> None:
        self.batches: list[int] = []

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds["input"]
        self.batches.append(x.shape[0])
        return [x * 2]


def test_run_batches_slices_by_batch_size_and_keeps_order() -> None:
    session = RecordingSession()
    x = np.arange(10 * 4, dtype=np.float32).reshape(10, 4)
    (out,) = _run_batches(session, {"input": x}, ["double"], 4)
    assert session.batches == [4, 4, 2]
    np.testing.assert_array_equal(out, x * 2)


def offer(start: int, end: int, resume: int | None = None, interval: float = 60.0) -> pb.TaskOffer:
    return pb.TaskOffer(
        task_id="t1",
        attempt=2,
        runtime="onnxruntime",
        input_name="input",
        output_names=["double", "sum"],
        batch_size=3,
        item_start=start,
        item_end=end,
        resume_from=start if resume is None else resume,
        checkpoint_interval_s=interval,
    )


def chunks(x: np.ndarray, first: int, size: int) -> list[pb.InputChunk]:
    out = []
    for i in range(0, len(x), size):
        out.append(
            pb.InputChunk(
                task_id="t1",
                attempt=2,
                first_item=first + i,
                tensor=limits.tensor_to_proto("input", x[i : i + size]),
                last=i + size >= len(x),
            )
        )
    return out


def as_message(m: pb.CarMessage | bytes) -> pb.CarMessage:
    """What the gateway parses: result chunks come encoded (parkfleet.protocol.chunks)."""
    return pb.CarMessage.FromString(m) if isinstance(m, bytes) else m


def results(sent: list[pb.CarMessage]) -> tuple[list[int], np.ndarray]:
    firsts, doubles = [], []
    for m in sent:
        if m.WhichOneof("body") == "result":
            firsts.append(m.result.first_item)
            doubles.append(limits.tensor_from_proto(m.result.outputs[0]))
    return firsts, np.concatenate(doubles)


@pytest.fixture
async def session() -> object:
    compute = OrtCompute(intra_op_threads=1)
    model = tiny_model()
    s = await compute.session(hashlib.sha256(model).hexdigest(), model)
    yield s
    compute.close()


async def test_runs_all_items_in_order_then_done(session: object) -> None:
    x = np.random.default_rng(0).random((25, 4), dtype=np.float32)
    sent: list[pb.CarMessage] = []

    async def send(m: pb.CarMessage | bytes) -> None:
        sent.append(as_message(m))

    runner = TaskRunner(offer(100, 125), send, EnergyMeter(CarPower(50.0)))
    for c in chunks(x, 100, 7):
        await runner.feed(c)
    outcome = await runner.run(session, ["double", "sum"])  # type: ignore[arg-type]
    assert outcome.done
    assert outcome.next_item == 125
    assert outcome.energy_modelled
    firsts, doubled = results(sent)
    assert firsts[0] == 100
    np.testing.assert_allclose(doubled, x * 2)
    kinds = [m.WhichOneof("body") for m in sent]
    assert kinds[-1] == "done"
    assert kinds[-2] == "checkpoint"
    assert sent[-2].checkpoint.next_item == 125
    assert sent[-1].done.items == 25
    assert sent[-1].done.attempt == 2


async def test_stop_reports_retriable_failure_at_the_delivered_item(session: object) -> None:
    x = np.ones((30, 4), dtype=np.float32)
    sent: list[pb.CarMessage] = []
    first_result = asyncio.Event()

    async def send(m: pb.CarMessage | bytes) -> None:
        sent.append(as_message(m))
        if sent[-1].WhichOneof("body") == "result" and not first_result.is_set():
            # The owner unplugs as soon as the first results leave.
            runner.request_stop(StopRequest("NotPluggedIn", "unplugged"))
            first_result.set()

    runner = TaskRunner(offer(0, 30, interval=1e-6), send, EnergyMeter(CarPower(50.0)))
    feeder = chunks(x, 0, 5)
    await runner.feed(feeder[0])
    run = asyncio.create_task(runner.run(session, ["double", "sum"]))  # type: ignore[arg-type]
    await first_result.wait()
    for c in feeder[1:]:
        await runner.feed(c)  # dropped once stopping; never blocks
    outcome = await run
    failed = [m.failed for m in sent if m.WhichOneof("body") == "failed"]
    assert len(failed) == 1
    assert failed[0].retriable
    assert failed[0].reason == "NotPluggedIn"
    _, doubled = results(sent)
    assert failed[0].next_item == outcome.next_item == len(doubled) == 5
    assert not any(m.WhichOneof("body") == "done" for m in sent)


async def test_resume_from_the_middle_and_bad_inputs_fail(session: object) -> None:
    x = np.ones((10, 4), dtype=np.float32)
    sent: list[pb.CarMessage] = []

    async def send(m: pb.CarMessage | bytes) -> None:
        sent.append(as_message(m))

    runner = TaskRunner(offer(0, 20, resume=10), send, EnergyMeter(CarPower(1.0)))
    for c in chunks(x, 10, 4):
        await runner.feed(c)
    assert (await runner.run(session, ["double", "sum"])).done  # type: ignore[arg-type]
    assert results(sent)[0][0] == 10

    sent.clear()
    runner = TaskRunner(offer(0, 20, resume=10), send, EnergyMeter(CarPower(1.0)))
    await runner.feed(chunks(x, 11, 10)[0])  # starts one item late
    outcome = await runner.run(session, ["double", "sum"])  # type: ignore[arg-type]
    assert not outcome.done
    assert outcome.reason == "InvalidInput"
    assert sent[-1].failed.reason == "InvalidInput"
    assert not sent[-1].failed.retriable


async def test_one_big_input_chunk_is_worked_in_slices_with_checkpoints_between(
    session: object,
) -> None:
    # The gateway may send thousands of items in one chunk; a stop must not wait for all.
    x = np.ones((300, 4), dtype=np.float32)
    sent: list[pb.CarMessage] = []

    async def send(m: pb.CarMessage | bytes) -> None:
        sent.append(as_message(m))
        checkpoints = [s for s in sent if s.WhichOneof("body") == "checkpoint"]
        if len(checkpoints) == 2:
            runner.request_stop(StopRequest("NotPluggedIn", "unplugged"))

    runner = TaskRunner(offer(0, 300, interval=1e-6), send, EnergyMeter(CarPower(50.0)))
    (only,) = chunks(x, 0, 300)
    await runner.feed(only)
    outcome = await runner.run(session, ["double", "sum"])  # type: ignore[arg-type]
    assert not outcome.done
    # batch 3 x 8 batches per slice: the stop came after the second slice, not at item 300.
    assert 0 < outcome.next_item < 300
    assert outcome.next_item % 24 == 0


class GatedSession:
    """A model whose slices finish only when the test says: shows what runs at once."""

    def __init__(self) -> None:
        self.providers = ["Fake"]
        self.output_names = ["double", "sum"]
        self.started: list[int] = []
        self.running = 0
        self.most_at_once = 0
        self.cancelled = 0
        self.gates: list[asyncio.Event] = []
        self.open = False

    def release(self, call: int | None = None) -> None:
        """Lets call number ``call`` finish (all calls, now and later, when None)."""
        if call is None:
            self.open = True
            for gate in self.gates:
                gate.set()
        else:
            self.gates[call].set()

    input_types: ClassVar[dict[str, str]] = {"input": "float32"}

    async def infer(
        self, feeds: dict[str, np.ndarray], output_names: object, batch_size: int
    ) -> list[np.ndarray]:
        inputs = feeds["input"]
        self.started.append(inputs.shape[0])
        gate = asyncio.Event()
        if self.open:
            gate.set()
        self.gates.append(gate)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
        return [inputs * 2, inputs.sum(axis=1, keepdims=True)]


async def test_the_next_slice_waits_at_the_model_while_one_runs() -> None:
    x = np.ones((96, 4), dtype=np.float32)  # 4 slices of 8 batches of 3
    sent: list[pb.CarMessage] = []

    async def send(m: pb.CarMessage | bytes) -> None:
        sent.append(as_message(m))

    model = GatedSession()
    runner = TaskRunner(offer(0, 96), send, EnergyMeter(CarPower(50.0)))
    (only,) = chunks(x, 0, 96)
    await runner.feed(only)
    run = asyncio.create_task(runner.run(model, ["double", "sum"]))  # type: ignore[arg-type]
    for _ in range(20):
        await asyncio.sleep(0)
    assert model.started == [24, 24]  # one running, the next queued behind it
    model.release()
    outcome = await run
    assert outcome.done
    assert model.started[:2] == [24, 24]
    assert sum(model.started) == 96
    assert model.most_at_once == 2
    np.testing.assert_array_equal(results(sent)[1], x * 2)


async def test_a_stop_drops_the_queued_slice_and_reports_the_done_ones() -> None:
    x = np.ones((96, 4), dtype=np.float32)
    sent: list[pb.CarMessage] = []

    async def send(m: pb.CarMessage | bytes) -> None:
        sent.append(as_message(m))

    model = GatedSession()
    runner = TaskRunner(offer(0, 96, interval=1e-6), send, EnergyMeter(CarPower(50.0)))
    (only,) = chunks(x, 0, 96)
    await runner.feed(only)
    run = asyncio.create_task(runner.run(model, ["double", "sum"]))  # type: ignore[arg-type]
    for _ in range(20):
        await asyncio.sleep(0)
    assert model.running == 2
    runner.request_stop(StopRequest("NotPluggedIn", "unplugged"))
    model.release(0)  # the slice running at the stop finishes; the one behind it is dropped
    outcome = await run
    assert not outcome.done
    assert outcome.next_item == 24
    failed = [m.failed for m in sent if m.WhichOneof("body") == "failed"]
    assert failed[0].next_item == 24
    assert len(results(sent)[1]) == 24
    assert len(model.started) == 2
    assert model.cancelled == 1


async def test_inputs_decoded_from_the_wire_run_like_parsed_ones(session: object) -> None:
    x = np.random.default_rng(1).random((10, 4), dtype=np.float32)
    sent: list[pb.CarMessage] = []

    async def send(m: pb.CarMessage | bytes) -> None:
        sent.append(as_message(m))

    runner = TaskRunner(offer(0, 10), send, EnergyMeter(CarPower(50.0)))
    for first in (0, 6):
        wire = chunks_wire(x[first : first + 6], first, last=first + 6 >= 10)
        decoded = decode_gateway_message(wire)
        assert isinstance(decoded, InputData)
        await runner.feed(decoded)
    assert (await runner.run(session, ["double", "sum"])).done  # type: ignore[arg-type]
    np.testing.assert_allclose(results(sent)[1], x * 2)


def chunks_wire(x: np.ndarray, first: int, last: bool) -> bytes:
    return encode_input("t1", 2, first, last, "input", x)


async def test_overlapping_calls_take_turns_on_a_modelled_gpu(session: object) -> None:
    compute = ModelledCompute(FixedSessionCompute(session), items_per_second=200.0)
    modelled = await compute.session("sha", b"")
    x = np.ones((10, 4), dtype=np.float32)  # 10 items at 200/s: 50 ms each call
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.gather(*(modelled.infer({"input": x}, ["double"], 3) for _ in range(2)))
    assert loop.time() - t0 >= 0.095  # one after the other, as on one GPU


class FixedSessionCompute:
    def __init__(self, session: object) -> None:
        self._session = session

    async def session(self, sha256: str, model: bytes) -> object:
        return self._session


class TimedSession(GatedSession):
    """Every slice takes ``seconds``, one at a time (one GPU)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.gpu = asyncio.Lock()
        self.release()

    async def infer(
        self, inputs: dict[str, np.ndarray], output_names: object, batch_size: int
    ) -> list[np.ndarray]:
        async with self.gpu:
            await asyncio.sleep(self.seconds)
            return await super().infer(inputs, output_names, batch_size)


@pytest.mark.parametrize(("seconds", "grows"), [(0.0, True), (0.03, False)])
async def test_slices_of_a_cheap_model_grow_those_of_a_costly_one_do_not(
    seconds: float, grows: bool
) -> None:
    x = np.ones((600, 4), dtype=np.float32)
    sent: list[pb.CarMessage] = []

    async def send(m: pb.CarMessage | bytes) -> None:
        sent.append(as_message(m))

    model = TimedSession(seconds)
    runner = TaskRunner(offer(0, 600 if grows else 120), send, EnergyMeter(CarPower(50.0)))
    (only,) = chunks(x if grows else x[:120], 0, 600)
    await runner.feed(only)
    assert (await runner.run(model, ["double", "sum"])).done  # type: ignore[arg-type]
    assert model.started[0] == 24  # 8 batches of 3
    assert all(n % 3 == 0 for n in model.started[:-1])  # whole batches
    assert min(model.started[:-1]) == 24
    assert (max(model.started) > 24) == grows


async def test_an_inference_failure_is_reported_retriable(session: object) -> None:
    sent: list[pb.CarMessage] = []

    async def send(m: pb.CarMessage | bytes) -> None:
        sent.append(as_message(m))

    runner = TaskRunner(offer(0, 6), send, EnergyMeter(CarPower(50.0)))
    await runner.feed(chunks(np.ones((6, 5), dtype=np.float32), 0, 6)[0])  # the model takes 4
    outcome = await runner.run(session, ["double", "sum"])  # type: ignore[arg-type]
    assert outcome.reason == "InferenceError"
    assert sent[-1].failed.retriable
    assert sent[-1].failed.message.startswith("InvalidArgument: ")  # ONNX Runtime's words


class BuggySession(GatedSession):
    """A slice raises what no runtime raises: a bug in the agent's own code."""

    async def infer(
        self, inputs: dict[str, np.ndarray], output_names: object, batch_size: int
    ) -> list[np.ndarray]:
        raise ZeroDivisionError("a bug")


async def test_a_bug_is_not_reported_as_an_inference_error() -> None:
    sent: list[pb.CarMessage] = []

    async def send(m: pb.CarMessage | bytes) -> None:
        sent.append(as_message(m))

    runner = TaskRunner(offer(0, 6), send, EnergyMeter(CarPower(50.0)))
    await runner.feed(chunks(np.ones((6, 4), dtype=np.float32), 0, 6)[0])
    with pytest.raises(ZeroDivisionError):  # the agent reports it (AgentError), in full
        await runner.run(BuggySession(), ["double", "sum"])  # type: ignore[arg-type]
    assert not any(m.WhichOneof("body") == "failed" for m in sent)


class QueuedSliceFailsWhenCancelled(GatedSession):
    """The slice queued behind the running one fails with a bug when it is cancelled."""

    async def infer(
        self, inputs: dict[str, np.ndarray], output_names: object, batch_size: int
    ) -> list[np.ndarray]:
        queued = len(self.started) == 1
        try:
            return await super().infer(inputs, output_names, batch_size)
        except asyncio.CancelledError:
            if queued:
                raise RuntimeError("a bug while cancelled") from None
            raise


async def test_a_cancelled_runner_stops_its_slices_and_says_what_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def send(m: pb.CarMessage | bytes) -> None:
        pass

    model = QueuedSliceFailsWhenCancelled()
    runner = TaskRunner(offer(0, 96), send, EnergyMeter(CarPower(50.0)))
    await runner.feed(chunks(np.ones((96, 4), dtype=np.float32), 0, 96)[0])
    run = asyncio.create_task(runner.run(model, ["double", "sum"]))  # type: ignore[arg-type]
    for _ in range(20):
        await asyncio.sleep(0)
    assert model.running == 2
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert model.running == 0  # both slices stopped, none left
    assert model.cancelled == 2
    failures = [r for r in caplog.records if "a slice failed while the task stopped" in r.msg]
    assert len(failures) == 1
    assert failures[0].exc_info
    assert failures[0].exc_info[0] is RuntimeError  # with its traceback

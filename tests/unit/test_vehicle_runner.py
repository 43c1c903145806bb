"""The task runner: batching, item order, checkpoints, stopping — with a real tiny model."""

from __future__ import annotations

import asyncio
import hashlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol import limits
from parkfleet.vehicle.compute import OrtCompute, _run_batches
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
    (out,) = _run_batches(session, x, "input", ["double"], 4)
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

    async def send(m: pb.CarMessage) -> None:
        sent.append(m)

    runner = TaskRunner(offer(100, 125), send, EnergyMeter(50.0))
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

    async def send(m: pb.CarMessage) -> None:
        sent.append(m)
        if m.WhichOneof("body") == "result" and not first_result.is_set():
            # The owner unplugs as soon as the first results leave.
            runner.request_stop(StopRequest("NotPluggedIn", "unplugged"))
            first_result.set()

    runner = TaskRunner(offer(0, 30, interval=1e-6), send, EnergyMeter(50.0))
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

    async def send(m: pb.CarMessage) -> None:
        sent.append(m)

    runner = TaskRunner(offer(0, 20, resume=10), send, EnergyMeter(1.0))
    for c in chunks(x, 10, 4):
        await runner.feed(c)
    assert (await runner.run(session, ["double", "sum"])).done  # type: ignore[arg-type]
    assert results(sent)[0][0] == 10

    sent.clear()
    runner = TaskRunner(offer(0, 20, resume=10), send, EnergyMeter(1.0))
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

    async def send(m: pb.CarMessage) -> None:
        sent.append(m)
        checkpoints = [s for s in sent if s.WhichOneof("body") == "checkpoint"]
        if len(checkpoints) == 2:
            runner.request_stop(StopRequest("NotPluggedIn", "unplugged"))

    runner = TaskRunner(offer(0, 300, interval=1e-6), send, EnergyMeter(50.0))
    (only,) = chunks(x, 0, 300)
    await runner.feed(only)
    outcome = await runner.run(session, ["double", "sum"])  # type: ignore[arg-type]
    assert not outcome.done
    # batch 3 x 8 batches per slice: the stop came after the second slice, not at item 300.
    assert 0 < outcome.next_item < 300
    assert outcome.next_item % 24 == 0

"""Tasks through the real gateway over real gRPC/mTLS: placement, results exactly once,
moves on loss / refusal / policy, grace, cancel, and protocol checks on task messages.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from parkfleet.certs import FleetCA
from parkfleet.contract import CarCounts
from parkfleet.gateway import ArrayInput, MemorySink, ModelRef, TaskEvent, TaskSpec
from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol.limits import tensor_to_proto
from tests.carlink_probe import ProbeCar, wait_until
from tests.integration.gateway_env import Env, start_gateway

pytestmark = pytest.mark.integration

SHA = "ab" * 32
PLUGGED_ONLY = pb.OwnerPolicy(only_while_plugged_in=True)


@pytest.fixture(scope="module")
def ca() -> FleetCA:
    return FleetCA.create()


class Recorder:
    """Collects every task event while a test runs."""

    def __init__(self, env: Env) -> None:
        self.events: list[TaskEvent] = []
        stream = env.gateway.events()
        self._task = asyncio.get_running_loop().create_task(self._collect(stream))

    async def _collect(self, stream: AsyncIterator[TaskEvent]) -> None:
        async for e in stream:
            self.events.append(e)

    def kinds(self, task_id: str = "t1") -> list[str]:
        return [e.kind for e in self.events if e.task_id == task_id]

    def of(self, kind: str) -> list[TaskEvent]:
        return [e for e in self.events if e.kind == kind]

    async def wait(self, kind: str, count: int = 1) -> TaskEvent:
        await wait_until(lambda: len(self.of(kind)) >= count)
        return self.of(kind)[count - 1]


@pytest.fixture
async def env(tmp_path: Path, ca: FleetCA) -> AsyncIterator[Env]:
    e = await start_gateway(tmp_path, ca, car_wait_s=5.0)
    yield e
    await e.gateway.stop(0)


@pytest.fixture
async def rec(env: Env) -> Recorder:
    return Recorder(env)


def spec(data: np.ndarray, sink: MemorySink, task_id: str = "t1", **kw: Any) -> TaskSpec:
    base: dict[str, Any] = {
        "task_id": task_id,
        "cell": "p-0",
        "runtime": "onnxruntime",
        "model": ModelRef(sha256=SHA),
        "input_name": "x",
        "output_names": ("y", "z"),
        "batch_size": 4,
        "item_start": 0,
        "item_end": len(data),
        "inputs": ArrayInput(data),
        "sink": sink,
        "checkpoint_interval_s": 1.0,
    }
    base.update(kw)
    return TaskSpec(**base)


async def ready(env: Env, car_id: str, policy: pb.OwnerPolicy | None = None) -> ProbeCar:
    car = env.car(car_id)
    await car.connect(ProbeCar.hello(policy=policy))
    await car.telemetry()
    return car


async def next_kind(car: ProbeCar, kind: str) -> pb.GatewayMessage:
    for _ in range(100):
        msg = await car.recv()
        assert msg is not None, f"stream ended while waiting for {kind}"
        if msg.WhichOneof("body") == kind:
            return msg
    raise AssertionError(f"no {kind}")


async def test_task_runs_and_sink_sees_every_item_once(env: Env, rec: Recorder) -> None:
    data = np.arange(50 * 3, dtype=np.float32).reshape(50, 3)
    sink = MemorySink()
    async with await ready(env, "car-a") as car:
        worker = asyncio.create_task(car.work())
        await wait_until(lambda: env.gateway.capacity("p-0").cars_eligible == 1)
        await env.gateway.submit(spec(data, sink))
        await rec.wait("succeeded")
        worker.cancel()
    assert sink.completed.is_set()
    assert sink.items() == list(range(50))
    np.testing.assert_array_equal(sink.output("y"), data)
    np.testing.assert_array_equal(sink.output("z"), data)
    kinds = rec.kinds()
    assert kinds[:2] == ["placed", "accepted"]
    assert kinds[-1] == "succeeded"
    assert "checkpoint" in kinds
    status = env.gateway.task("t1")
    assert status is not None
    assert (status.state, status.attempt, status.items_done, status.cars) == (
        "Succeeded",
        1,
        50,
        ("car-a",),
    )
    assert status.energy_wh > 0
    assert status.energy_modelled


async def test_car_lost_mid_task_is_reported_and_moved(env: Env, rec: Recorder) -> None:
    data = np.arange(40, dtype=np.int64).reshape(40, 1)
    sink = MemorySink()
    first = await ready(env, "car-a")
    await wait_until(lambda: env.gateway.capacity("p-0").cars_eligible == 1)
    await env.gateway.submit(spec(data, sink, batch_size=8))
    # car-a does the first chunk (one batch), checkpoints, then dies.
    stopped_at = await first.work(stop_after_items=8)
    assert stopped_at is not None
    await rec.wait("checkpoint")  # sent before stopping; let it land before the car dies
    await first.close()
    lost = await rec.wait("lost")
    assert (lost.from_car, lost.checkpoint, lost.items_done) == ("car-a", 8, 8)
    assert lost.reason == "LinkClosed"
    async with await ready(env, "car-b") as second:
        offer = await next_kind(second, "offer")
        assert (offer.offer.attempt, offer.offer.resume_from, offer.offer.item_end) == (2, 8, 40)
        await second.send(
            pb.CarMessage(accept=pb.TaskAccept(task_id="t1", attempt=offer.offer.attempt))
        )
        worker = asyncio.create_task(second.work())
        # The re-sent offer was consumed above; feed the worker the task's outputs.
        await rec.wait("moved")
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    moved = rec.of("moved")[0]
    assert (moved.from_car, moved.car_id, moved.attempt) == ("car-a", "car-b", 2)


async def test_resume_after_loss_delivers_rest(env: Env, rec: Recorder) -> None:
    data = np.arange(40, dtype=np.int64).reshape(40, 1)
    sink = MemorySink()
    first = await ready(env, "car-a")
    await wait_until(lambda: env.gateway.capacity("p-0").cars_eligible == 1)
    await env.gateway.submit(spec(data, sink, batch_size=8))
    await first.work(stop_after_items=8)
    await rec.wait("checkpoint")
    await first.close()
    await rec.wait("lost")
    async with await ready(env, "car-b") as second:
        worker = asyncio.create_task(second.work())
        await rec.wait("succeeded")
        worker.cancel()
    assert sink.items() == list(range(40))
    np.testing.assert_array_equal(sink.output("y"), data)
    status = env.gateway.task("t1")
    assert status is not None
    assert (status.cars, status.moves, status.attempt) == (("car-a", "car-b"), 1, 2)


async def test_duplicate_results_are_dropped_and_gaps_refused(env: Env, rec: Recorder) -> None:
    data = np.arange(12, dtype=np.uint8).reshape(12, 1)
    sink = MemorySink()
    async with await ready(env, "car-a") as car:
        await env.gateway.submit(spec(data, sink, output_names=("y",), batch_size=12))
        offer = (await next_kind(car, "offer")).offer

        async def result(first: int, n: int) -> None:
            chunk = tensor_to_proto("y", data[first : first + n])
            await car.send(
                pb.CarMessage(
                    result=pb.ResultChunk(
                        task_id="t1", attempt=offer.attempt, first_item=first, outputs=[chunk]
                    )
                )
            )

        await result(0, 4)
        await result(2, 4)  # items 2, 3 again: only 4, 5 are new
        await result(0, 2)  # all duplicates
        await wait_until(lambda: sink.items() == list(range(6)))
        await result(8, 2)  # a gap: item 6 is next
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await next_kind(car, "never")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "item 6 is next" in (err.value.details() or "")
    lost = await rec.wait("lost")
    assert lost.reason == "ProtocolViolation"
    assert sink.items() == list(range(6))


async def test_done_before_all_results_is_a_violation(env: Env, rec: Recorder) -> None:
    data = np.zeros((4, 1), dtype=np.float32)
    async with await ready(env, "car-a") as car:
        await env.gateway.submit(spec(data, MemorySink(), output_names=("y",)))
        offer = (await next_kind(car, "offer")).offer
        await car.send(pb.CarMessage(done=pb.TaskDone(task_id="t1", attempt=offer.attempt)))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await next_kind(car, "never")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "reported done" in (err.value.details() or "")


async def test_stale_attempt_is_ignored(env: Env, rec: Recorder) -> None:
    data = np.zeros((4, 1), dtype=np.float32)
    sink = MemorySink()
    async with await ready(env, "car-a") as car:
        await env.gateway.submit(spec(data, sink, output_names=("y",)))
        offer = (await next_kind(car, "offer")).offer
        stale = offer.attempt + 5
        await car.send(
            pb.CarMessage(
                result=pb.ResultChunk(
                    task_id="t1", attempt=stale, first_item=0, outputs=[tensor_to_proto("y", data)]
                )
            )
        )
        await car.send(pb.CarMessage(done=pb.TaskDone(task_id="t1", attempt=stale)))
        await car.telemetry()  # still connected: the stale messages were ignored
        await asyncio.sleep(0.1)
        assert "car-a" in env.gateway.registry.cars
        assert sink.items() == []
        status = env.gateway.task("t1")
        assert status is not None
        assert status.state == "Offered"


async def test_refusal_moves_task_to_another_car(env: Env, rec: Recorder) -> None:
    data = np.zeros((4, 1), dtype=np.float32)
    sink = MemorySink()
    async with await ready(env, "car-a") as a:
        await env.gateway.submit(spec(data, sink, output_names=("y",)))
        offer = (await next_kind(a, "offer")).offer
        await a.send(
            pb.CarMessage(
                refuse=pb.TaskRefuse(
                    task_id="t1", attempt=offer.attempt, reason="BatteryLow", message="m"
                )
            )
        )
        refused = await rec.wait("refused")
        assert (refused.reason, refused.from_car) == ("BatteryLow", "car-a")
        async with await ready(env, "car-b") as b:
            worker = asyncio.create_task(b.work())
            await rec.wait("succeeded")
            worker.cancel()
    status = env.gateway.task("t1")
    assert status is not None
    assert status.cars == ("car-a", "car-b")


async def test_unplugged_car_gets_no_work_and_task_fails_after_grace(
    env: Env, rec: Recorder
) -> None:
    async with env.car("car-a") as car:
        await car.connect(ProbeCar.hello(policy=PLUGGED_ONLY))
        await car.telemetry(plugged_in=False)
        await wait_until(lambda: env.gateway.capacity("p-0").cars_connected == 1)
        assert env.gateway.capacity("p-0").cars_eligible == 0
        await env.gateway.submit(spec(np.zeros((4, 1), np.float32), MemorySink(), car_wait_s=0.3))
        failed = await rec.wait("failed")
        assert failed.reason == "NoEligibleCar"
        assert "p-0" in failed.message
        assert rec.of("placed") == []


async def test_unplugging_stops_the_task_and_moves_it(env: Env, rec: Recorder) -> None:
    data = np.zeros((4, 1), dtype=np.float32)
    sink = MemorySink()
    async with await ready(env, "car-a", PLUGGED_ONLY) as a:
        await env.gateway.submit(spec(data, sink, output_names=("y",)))
        offer = (await next_kind(a, "offer")).offer
        await a.send(pb.CarMessage(accept=pb.TaskAccept(task_id="t1", attempt=offer.attempt)))
        await rec.wait("accepted")
        await a.telemetry(plugged_in=False)
        cancel = (await next_kind(a, "cancel")).cancel
        assert (cancel.task_id, cancel.attempt, cancel.reason) == ("t1", 1, "NotPluggedIn")
        lost = await rec.wait("lost")
        assert lost.reason == "NotPluggedIn"
        async with await ready(env, "car-b", PLUGGED_ONLY) as b:
            worker = asyncio.create_task(b.work())
            moved = await rec.wait("moved")
            assert (moved.from_car, moved.car_id) == ("car-a", "car-b")
            await rec.wait("succeeded")
            worker.cancel()


async def test_cancel_tells_the_car(env: Env, rec: Recorder) -> None:
    async with await ready(env, "car-a") as car:
        await env.gateway.submit(spec(np.zeros((4, 1), np.float32), MemorySink()))
        await next_kind(car, "offer")
        await env.gateway.cancel("t1", "pod deleted")
        cancel = (await next_kind(car, "cancel")).cancel
        assert cancel.task_id == "t1"
        event = await rec.wait("cancelled")
        assert event.message == "pod deleted"
        assert env.gateway.capacity("p-0").cars_busy == 0


async def test_runtime_and_memory_decide_placement(env: Env, rec: Recorder) -> None:
    async with env.car("car-small") as small, env.car("car-big") as big:
        await small.connect(ProbeCar.hello(gpu_memory_mib=1024))
        await small.telemetry(free_gpu_memory_mib=0)
        await big.connect(ProbeCar.hello(gpu_memory_mib=16384))
        await big.telemetry(free_gpu_memory_mib=0, link_quality=0.1)
        await wait_until(lambda: env.gateway.capacity("p-0").cars_eligible == 2)
        assert env.gateway.capacity("p-0").max_gpu_memory_mib == 16384
        assert env.gateway.capacity("p-0").gpus == 2
        assert env.gateway.capacity("nope") == CarCounts()
        await env.gateway.submit(
            spec(np.zeros((4, 1), np.float32), MemorySink(), gpu_memory_mib=4096)
        )
        placed = await rec.wait("placed")
        assert placed.car_id == "car-big"
        assert env.gateway.capacity("p-0").gpus == 2  # busy cars still count
        assert env.gateway.capacity("p-0").cars_busy == 1
        await env.gateway.submit(
            spec(
                np.zeros((4, 1), np.float32),
                MemorySink(),
                task_id="t2",
                runtime="tensorrt",
                car_wait_s=0.2,
            )
        )
        failed = await rec.wait("failed")
        assert (failed.task_id, failed.reason) == ("t2", "NoEligibleCar")


async def test_a_ready_task_waits_behind_a_busy_car_longer_than_the_grace(
    env: Env, rec: Recorder
) -> None:
    """A unit ready at the gateway (its pod bound beyond the cell's cars) waits for the
    next car to free, however long units take; only a task no car of the cell could run
    fails after the grace."""
    data = np.arange(40, dtype=np.int64).reshape(40, 1)
    busy = await ready(env, "car-a")
    await wait_until(lambda: env.gateway.capacity("p-0").cars_eligible == 1)
    await env.gateway.submit(spec(data, MemorySink(), batch_size=8))
    # car-a takes t1 and stays busy with it (it answers nothing after the first batch).
    assert await busy.work(stop_after_items=8) is not None
    await env.gateway.submit(spec(data, MemorySink(), task_id="t2", car_wait_s=0.3))
    await env.gateway.submit(
        spec(data, MemorySink(), task_id="t3", runtime="tensorrt", car_wait_s=0.3)
    )
    failed = await rec.wait("failed")
    assert (failed.task_id, failed.reason) == ("t3", "NoEligibleCar")  # car-a could never
    await asyncio.sleep(1.0)  # three graces more
    waiting = env.gateway.task("t2")
    assert waiting is not None
    assert waiting.state == "Queued"
    async with await ready(env, "car-b") as free:
        worker = asyncio.create_task(free.work())
        done = await rec.wait("succeeded")
        worker.cancel()
    assert (done.task_id, done.car_id) == ("t2", "car-b")
    assert [e.task_id for e in rec.of("failed")] == ["t3"]
    await busy.close()


async def test_invalid_spec_is_rejected(env: Env) -> None:
    with pytest.raises(ValueError, match="item range"):
        await env.gateway.submit(
            spec(np.zeros((4, 1), np.float32), MemorySink(), item_start=4, item_end=4)
        )
    with pytest.raises(ValueError, match="sha256"):
        await env.gateway.submit(
            spec(np.zeros((4, 1), np.float32), MemorySink(), model=ModelRef(sha256="x"))
        )

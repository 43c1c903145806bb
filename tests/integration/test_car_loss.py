"""A real ``parkfleet agent`` process killed mid-task: the task is reported lost with its
last checkpoint and resumes on another car; the sink sees every item exactly once. A car
that stays connected but goes quiet about its task loses it the same way.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from parkfleet.gateway import ArrayInput, MemorySink
from parkfleet.gateway.taskstate import REASON_STALLED
from parkfleet.vehicle import ModelledCompute, ModelSession, OrtCompute
from tests.integration.car_env import POOL, CarEnv, SlowInput, digits, digits_task, start_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[CarEnv]:
    e = await start_env(tmp_path, car_wait_s=30.0, telemetry_interval_s=0.5)
    yield e
    await e.close()


async def test_killed_car_loses_task_which_resumes_elsewhere(env: CarEnv) -> None:
    model = digits()
    ref = env.gateway.models.add_file(model.model_path)
    base = model.test_inputs()
    items = 60_000
    x = np.resize(base, (items, base.shape[1]))
    procs = {car: env.spawn_agent(car) for car in ("car-a", "car-b")}
    await env.wait_eligible(2)

    sink = MemorySink()
    # Each read of ~12k items takes 0.3 s: the task lasts a couple of seconds.
    await env.gateway.submit(digits_task("long", ref, SlowInput(x, 0.3), items, sink))
    placed = await env.events.wait(lambda e: e.kind == "placed")
    first_car = placed.car_id
    checkpoint = await env.events.wait(
        lambda e: e.kind == "checkpoint" and e.car_id == first_car and e.checkpoint > 0
    )
    procs[first_car].send_signal(signal.SIGKILL)

    lost = await env.events.wait(lambda e: e.kind == "lost")
    assert lost.from_car == first_car
    assert lost.checkpoint >= checkpoint.checkpoint > 0
    assert lost.checkpoint < items

    end = await env.events.ended("long")
    assert end.kind == "succeeded", end
    status = env.gateway.task("long")
    assert status is not None
    other = "car-b" if first_car == "car-a" else "car-a"
    assert status.cars == (first_car, other)
    moved = env.events.of("moved", "long")
    assert moved
    assert moved[0].from_car == first_car
    assert moved[0].car_id == other

    # Every item exactly once, in order, and right.
    assert sink.items() == list(range(items))
    import onnxruntime as ort

    local = ort.InferenceSession(str(model.model_path), providers=["CPUExecutionProvider"])
    (label,) = local.run(["label"], {"input": x})
    np.testing.assert_array_equal(sink.output("label"), label)


async def test_car_quiet_about_its_task_loses_it_to_another_car(tmp_path: Path) -> None:
    env = await start_env(
        tmp_path,
        telemetry_interval_s=0.5,
        telemetry_timeout_s=2.0,  # the sweep that also looks for stalls runs every 0.5 s
        stall_timeout_s=1.5,
        start_timeout_s=1.5,
    )
    try:
        model = digits()
        ref = env.gateway.models.add_file(model.model_path)
        x = model.test_inputs()
        items = x.shape[0]
        # Connected, telemetry flowing, eligible - but its GPU would take days per slice.
        env.start_agent("car-stuck", compute=ModelledCompute(OrtCompute(intra_op_threads=1), 0.001))
        await env.wait_eligible(1)
        sink = MemorySink()
        await env.gateway.submit(digits_task("hung", ref, ArrayInput(x), items, sink))
        await env.events.wait(lambda e: e.kind == "accepted" and e.car_id == "car-stuck")
        env.start_agent("car-good")

        lost = await env.events.wait(lambda e: e.kind == "lost", timeout_s=30)
        assert lost.from_car == "car-stuck"
        assert lost.reason == REASON_STALLED
        assert "sent no progress, checkpoint or result" in lost.message
        end = await env.events.ended("hung")
        assert end.kind == "succeeded", end
        status = env.gateway.task("hung")
        assert status is not None
        assert status.cars == ("car-stuck", "car-good")
        assert sink.items() == list(range(items))
        stalls = env.gateway.metrics.task_stalls.labels(POOL)._value.get()
        assert stalls == 1
    finally:
        await env.close()


class _HangsAfterFirstSlice:
    """A session whose first slice takes 0.3 s (a checkpoint goes out) and the rest never end."""

    def __init__(self, inner: ModelSession) -> None:
        self._inner = inner
        self._calls = 0
        self.providers = inner.providers
        self.output_names = inner.output_names
        self.input_types = inner.input_types

    async def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], batch_size: int
    ) -> list[np.ndarray]:
        self._calls += 1
        if self._calls > 1:
            await asyncio.Event().wait()
        await asyncio.sleep(0.3)
        return await self._inner.infer(inputs, output_names, batch_size)


class _HangingCompute:
    def __init__(self) -> None:
        self._inner = OrtCompute(intra_op_threads=1)

    async def session(self, sha256: str, model: bytes) -> ModelSession:
        return _HangsAfterFirstSlice(await self._inner.session(sha256, model))


async def test_car_that_stalls_mid_task_loses_it_after_the_stall_timeout(tmp_path: Path) -> None:
    env = await start_env(
        tmp_path,
        telemetry_interval_s=0.5,
        telemetry_timeout_s=2.0,
        stall_timeout_s=1.5,
        start_timeout_s=60.0,  # so it is the stall timeout, after progress, that moves it
    )
    try:
        model = digits()
        ref = env.gateway.models.add_file(model.model_path)
        x = model.test_inputs()
        items = x.shape[0]
        env.start_agent("car-hangs", compute=_HangingCompute())
        await env.wait_eligible(1)
        sink = MemorySink()
        spec = digits_task("stalls", ref, ArrayInput(x), items, sink, batch_size=8)
        await env.gateway.submit(spec)
        checkpoint = await env.events.wait(lambda e: e.kind == "checkpoint" and e.checkpoint > 0)
        env.start_agent("car-good")

        lost = await env.events.wait(lambda e: e.kind == "lost", timeout_s=30)
        assert (lost.from_car, lost.reason) == ("car-hangs", REASON_STALLED)
        assert lost.checkpoint >= checkpoint.checkpoint > 0  # resumes, not from zero
        end = await env.events.ended("stalls")
        assert end.kind == "succeeded", end
        assert sink.items() == list(range(items))
    finally:
        await env.close()

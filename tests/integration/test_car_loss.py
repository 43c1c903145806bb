"""A real ``parkfleet agent`` process killed mid-task: the task is reported lost with its
last checkpoint and resumes on another car; the sink sees every item exactly once.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from parkfleet.gateway import MemorySink
from tests.integration.car_env import CarEnv, SlowInput, digits, digits_task, start_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[CarEnv]:
    e = await start_env(tmp_path, grace_s=30.0, telemetry_interval_s=0.5)
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

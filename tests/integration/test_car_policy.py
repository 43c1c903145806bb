"""The owner's policy through the real link: an unplugged car that must charge gets no
work, and a car unplugged mid-task stops within one telemetry period.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from parkfleet.gateway import ArrayInput, MemorySink
from parkfleet.policy import Policy
from parkfleet.vehicle import MutableSensors, SensorReading
from tests.integration.car_env import CELL, CarEnv, SlowInput, digits, digits_task, start_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CHARGING_ONLY = Policy(only_while_plugged_in=True)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[CarEnv]:
    e = await start_env(tmp_path, car_wait_s=30.0, telemetry_interval_s=0.3)
    yield e
    await e.close()


async def test_unplugged_car_gets_no_work(env: CarEnv) -> None:
    model = digits()
    ref = env.gateway.models.add_file(model.model_path)
    sensors = MutableSensors(SensorReading(plugged_in=False))
    agent = env.start_agent("car-1", policy=CHARGING_ONLY, sensors=sensors)
    await agent.connected.wait()
    x = model.test_inputs()[:20]
    sink = MemorySink()
    await env.gateway.submit(digits_task("t", ref, ArrayInput(x), len(x), sink, car_wait_s=1.0))
    end = await env.events.ended("t")
    assert end.kind == "failed"
    assert end.reason == "NoEligibleCar"
    cap = env.gateway.capacity(CELL)
    assert cap.cars_connected == 1
    assert cap.cars_eligible == 0
    assert (
        agent.metrics.registry.get_sample_value(
            "parkfleet_agent_offers_total", {"decision": "Accepted"}
        )
        is None
    )
    assert not env.events.of("placed", "t")
    assert sink.chunks == []

    # Plugging in makes it eligible, and the next task runs.
    sensors.set(plugged_in=True)
    agent.kick_telemetry()
    await env.wait_eligible(1)
    sink = MemorySink()
    await env.gateway.submit(digits_task("t2", ref, ArrayInput(x), len(x), sink))
    assert (await env.events.ended("t2")).kind == "succeeded"


async def test_unplugged_mid_task_stops_within_one_telemetry_period(env: CarEnv) -> None:
    model = digits()
    ref = env.gateway.models.add_file(model.model_path)
    items = 40_000
    x = np.resize(model.test_inputs(), (items, 64))
    sensors = MutableSensors(SensorReading(plugged_in=True))
    agent = env.start_agent("car-1", policy=CHARGING_ONLY, sensors=sensors)
    await env.wait_eligible(1)
    sink = MemorySink()
    await env.gateway.submit(digits_task("t", ref, SlowInput(x, 0.4), items, sink))
    await env.events.wait(lambda e: e.kind == "checkpoint" and e.checkpoint > 0)

    sent_before = agent.telemetry_sent
    sensors.set(plugged_in=False)  # the owner pulls the plug
    lost = await env.events.wait(lambda e: e.kind == "lost")
    assert lost.reason == "NotPluggedIn"
    assert 0 < lost.checkpoint < items

    # The car itself stopped the task before its second telemetry after the unplug, i.e.
    # within one telemetry period of noticing (telemetry count is the clock, not time).
    async with asyncio.timeout(30):
        while True:
            if agent.outcomes:
                break
            await asyncio.sleep(0.01)
    record = agent.outcomes[-1]
    assert record.task_id == "t"
    assert not record.outcome.done
    assert record.outcome.reason == "NotPluggedIn"
    assert record.telemetry_sent - sent_before <= 2
    status = env.gateway.task("t")
    assert status is not None
    assert status.state in ("Queued", "Failed")
    assert status.items_done < items


async def test_car_refuses_an_offer_its_policy_forbids(tmp_path: Path) -> None:
    # Telemetry is rare here, so the gateway still believes the car is plugged in when
    # the offer arrives: the car's own check is what refuses it.
    env = await start_env(tmp_path, car_wait_s=1.0, telemetry_interval_s=60.0)
    try:
        model = digits()
        ref = env.gateway.models.add_file(model.model_path)
        sensors = MutableSensors(SensorReading(plugged_in=True))
        agent = env.start_agent("car-1", policy=CHARGING_ONLY, sensors=sensors)
        await env.wait_eligible(1)
        sensors.set(plugged_in=False)  # no telemetry goes out until the next period
        x = model.test_inputs()[:20]
        sink = MemorySink()
        await env.gateway.submit(digits_task("t", ref, ArrayInput(x), len(x), sink))
        refused = await env.events.wait(lambda e: e.kind == "refused")
        assert refused.reason == "NotPluggedIn"
        assert list(agent.refusals) == [("t", "NotPluggedIn")]
        end = await env.events.ended("t")
        assert end.kind == "failed"
        assert end.reason == "NoEligibleCar"
        assert sink.chunks == []
    finally:
        await env.close()

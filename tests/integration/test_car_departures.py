"""Placement that knows when a car will leave, with a real gateway, real mTLS and real
agents (ONNX Runtime held to a modelled rate): of two idle cars, a task whose job's
measured rate makes it longer than one car's claimed stay goes to the car that stays,
where departure-blind placement gives it to the car idle longest, the one that leaves.
A car that drives off holding a task long before the departure it claimed has its claims
disregarded, and a reconnect does not clear that.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from parkfleet.gateway import ArrayInput, MemorySink, ModelRef
from parkfleet.gateway.tasks import Placement
from parkfleet.vehicle import ModelledCompute, MutableSensors, OrtCompute
from parkfleet.vehicle.sensors import SensorReading
from tests.integration.car_env import POOL, CarEnv, digits, digits_task, start_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RATE = 400.0  # items/s each car is held to
JOB = "job-uid-1"


@pytest.fixture(params=["aware", "blind"])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CarEnv]:
    placement: Placement = request.param
    e = await start_env(tmp_path, car_wait_s=30.0, telemetry_interval_s=0.2, placement=placement)
    yield e
    await e.close()


def counter(env: CarEnv, name: str, **labels: str) -> float:
    value = env.gateway.metrics.registry.get_sample_value(name, {"pool": POOL, **labels})
    return value or 0.0


def car(env: CarEnv, car_id: str, stay_s: float) -> MutableSensors:
    sensors = MutableSensors(SensorReading(expected_stay_s=stay_s))
    env.start_agent(
        car_id, sensors=sensors, compute=ModelledCompute(OrtCompute(intra_op_threads=1), RATE)
    )
    return sensors


def inputs(items: int) -> ArrayInput:
    base = digits().test_inputs()
    return ArrayInput(np.resize(base, (items, base.shape[1])))


async def measure_the_job(env: CarEnv, ref: ModelRef) -> str:
    """Runs one short unit of the job (the gateway measures its items/s); returns its car."""
    sink = MemorySink()
    await env.gateway.submit(
        digits_task("warm-up", ref, inputs(800), 800, sink, job=JOB, batch_size=32)
    )
    end = await env.events.ended("warm-up")
    assert end.kind == "succeeded", end
    status = env.gateway.task("warm-up")
    assert status is not None
    return status.cars[0]


async def test_a_long_unit_goes_to_the_car_that_stays(env: CarEnv) -> None:
    ref = env.gateway.models.add_file(digits().model_path)
    car(env, "car-stays", 3600.0)
    await env.wait_eligible(1)
    await asyncio.sleep(0.3)  # idle before the other: the first unit goes to it
    car(env, "car-leaves", 5.0)
    await env.wait_eligible(2)
    assert await measure_the_job(env, ref) == "car-stays"
    # Now car-leaves is the one idle longest; the next unit, 40,000 items at a measured
    # rate of at most 400/s, takes over 100 s: longer than car-leaves will stay.
    await env.wait_eligible(2)
    sink = MemorySink()
    items = 40_000
    await env.gateway.submit(
        digits_task("long", ref, inputs(items), items, sink, job=JOB, batch_size=32)
    )
    placed = await env.events.wait(lambda e: e.kind == "placed" and e.task_id == "long")
    if env.gateway.config.placement == "aware":
        assert placed.car_id == "car-stays"
        assert counter(env, "parkfleet_gateway_placements_total", fit="stays") == 1
    else:
        # Today's order: the longest idle car, though it said it leaves in 5 s.
        assert placed.car_id == "car-leaves"
        assert counter(env, "parkfleet_gateway_placements_total", fit="leaves") == 1
    # The warm-up had no estimate to go by.
    assert counter(env, "parkfleet_gateway_placements_total", fit="unknown") == 1
    await env.gateway.cancel("long", "test over")


async def test_a_car_that_leaves_long_before_its_claim_is_not_believed_again(
    env: CarEnv,
) -> None:
    if env.gateway.config.placement == "blind":
        pytest.skip("the check is the same in both placements")
    ref = env.gateway.models.add_file(digits().model_path)
    sensors = car(env, "liar", 3600.0)
    await env.wait_eligible(1)
    await measure_the_job(env, ref)
    sink = MemorySink()
    items = 40_000
    await env.gateway.submit(
        digits_task("unit", ref, inputs(items), items, sink, job=JOB, batch_size=32)
    )
    await env.events.wait(
        lambda e: e.kind == "checkpoint" and e.task_id == "unit" and e.checkpoint > 0
    )
    assert counter(env, "parkfleet_gateway_placements_total", fit="stays") == 1
    sensors.set(parked=False)  # it drives off a minute into a claimed hour
    lost = await env.events.wait(lambda e: e.kind == "lost" and e.task_id == "unit")
    assert lost.reason == "Driving"
    assert counter(env, "parkfleet_gateway_departure_claims_broken_total") == 1
    # It comes back on a new stream (the agent restarted), claiming an hour again: the
    # task goes back to it, its only car, but the claim no longer counts.
    env.agents[0].stop()
    await env.wait_connected(0)
    car(env, "liar", 3600.0)
    await env.events.wait(lambda e: e.kind == "moved" and e.task_id == "unit")
    assert counter(env, "parkfleet_gateway_placements_total", fit="stays") == 1
    assert counter(env, "parkfleet_gateway_placements_total", fit="unknown") == 2
    await env.gateway.cancel("unit", "test over")

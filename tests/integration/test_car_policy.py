"""The owner's policy through the real link: an unplugged car that must charge gets no
work, a car unplugged mid-task stops within one telemetry period, and blocked hours are
the owner's local hours in its time zone.
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
from tests.carlink_probe import wait_until
from tests.integration.car_env import CELL, CarEnv, SlowInput, digits, digits_task, start_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CHARGING_ONLY = Policy(only_while_plugged_in=True)
HOUR_MS = 3_600_000
# 2026-07-15 00:00 UTC: New York is on summer time (UTC-4).
JUL_MS = 1_784_073_600_000
NO_WORK_7_TO_9 = Policy(blocked_hours=((7, 9),))
NEW_YORK_NO_WORK_7_TO_9 = Policy(blocked_hours=((7, 9),), time_zone="America/New_York")


class ClockSensors:
    """A parked, plugged-in car whose clock the test sets."""

    def __init__(self, unix_time_ms: int) -> None:
        self.unix_time_ms = unix_time_ms

    def read(self) -> SensorReading:
        return SensorReading(plugged_in=True, unix_time_ms=self.unix_time_ms)


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


async def test_blocked_hours_are_the_owners_local_hours_in_its_zone(tmp_path: Path) -> None:
    env = await start_env(tmp_path, car_wait_s=1.0, telemetry_interval_s=0.3)
    try:
        model = digits()
        ref = env.gateway.models.add_file(model.model_path)
        x = model.test_inputs()[:20]
        # 11:30 UTC is 07:30 in New York (summer time), 11:30 in UTC: both block 07-09.
        ny_clock = ClockSensors(JUL_MS + 11 * HOUR_MS + HOUR_MS // 2)
        utc_clock = ClockSensors(ny_clock.unix_time_ms)
        ny = env.start_agent("car-ny", policy=NEW_YORK_NO_WORK_7_TO_9, sensors=ny_clock)
        await wait_until(lambda: env.gateway.registry.cars.get("car-ny") is not None)
        await wait_until(lambda: env.gateway.registry.cars["car-ny"].reason == "BlockedHours")
        assert env.gateway.capacity(CELL).cars_eligible == 0
        sink = MemorySink()
        await env.gateway.submit(digits_task("t1", ref, ArrayInput(x), len(x), sink))
        end = await env.events.ended("t1")
        assert end.kind == "failed"
        assert end.reason == "NoEligibleCar"

        # The same instant in a UTC owner's day is not blocked: that car gets the work.
        env.start_agent("car-utc", policy=NO_WORK_7_TO_9, sensors=utc_clock)
        await env.wait_eligible(1)
        await env.gateway.submit(digits_task("t2", ref, ArrayInput(x), len(x), MemorySink()))
        assert (await env.events.ended("t2")).kind == "succeeded"
        assert {e.car_id for e in env.events.of("placed", "t2")} == {"car-utc"}
        assert env.gateway.registry.cars["car-ny"].reason == "BlockedHours"

        # 07:30 UTC is 03:30 in New York: now the UTC owner blocks, the New York one works.
        utc_clock.unix_time_ms = ny_clock.unix_time_ms = JUL_MS + 7 * HOUR_MS + HOUR_MS // 2
        await wait_until(lambda: env.gateway.registry.cars["car-utc"].reason == "BlockedHours")
        await wait_until(lambda: env.gateway.registry.cars["car-ny"].eligible)
        await env.gateway.submit(digits_task("t3", ref, ArrayInput(x), len(x), MemorySink()))
        assert (await env.events.ended("t3")).kind == "succeeded"
        assert {e.car_id for e in env.events.of("placed", "t3")} == {"car-ny"}
        assert not ny.refusals
    finally:
        await env.close()


async def test_a_task_stops_when_the_owners_local_blocked_hour_begins(env: CarEnv) -> None:
    model = digits()
    ref = env.gateway.models.add_file(model.model_path)
    items = 40_000
    x = np.resize(model.test_inputs(), (items, 64))
    clock = ClockSensors(JUL_MS + 10 * HOUR_MS + 59 * 60_000)  # 06:59 in New York
    agent = env.start_agent("car-ny", policy=NEW_YORK_NO_WORK_7_TO_9, sensors=clock)
    await env.wait_eligible(1)
    await env.gateway.submit(digits_task("t", ref, SlowInput(x, 0.4), items, MemorySink()))
    await env.events.wait(lambda e: e.kind == "checkpoint" and e.checkpoint > 0)

    clock.unix_time_ms += 60_000  # 07:00 in New York, 11:00 UTC
    lost = await env.events.wait(lambda e: e.kind == "lost")
    assert lost.reason == "BlockedHours"
    assert "local hour 7" in lost.message
    await wait_until(lambda: bool(agent.outcomes), timeout_s=30)
    assert agent.outcomes[-1].outcome.reason == "BlockedHours"

"""The owner's consent through the real link: a pause stops the car's task within one
telemetry period and the task moves; a resume brings work back; a withdrawal ends the
agent for good and the gateway refuses the car from then on.

Real gateway, real agents (in-process and ``parkfleet agent``), real mTLS; the telemetry
count is the clock, as in test_car_policy.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from parkfleet.gateway import ArrayInput, MemoryConsentBook, MemorySink
from parkfleet.vehicle import Agent, Withdrawn
from tests.carlink_probe import ProbeCar, wait_until
from tests.integration.car_env import (
    CELL,
    POOL,
    CarEnv,
    SlowInput,
    digits,
    digits_task,
    start_env,
)
from tests.integration.gateway_env import start_gateway

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ITEMS = 40_000  # slow reads: still running on the second car when a test ends


@pytest.fixture
async def book() -> MemoryConsentBook:
    return MemoryConsentBook()


@pytest.fixture
async def env(tmp_path: Path, book: MemoryConsentBook) -> AsyncIterator[CarEnv]:
    e = await start_env(tmp_path, car_wait_s=30.0, telemetry_interval_s=0.3, consent_book=book)
    yield e
    await e.close()


def gauge(env: CarEnv, name: str, **labels: str) -> float:
    return env.gateway.metrics.registry.get_sample_value(name, labels) or 0.0


async def running_on_first_car(env: CarEnv) -> tuple[Agent, Agent]:
    """car-1 runs task "t" (past its first checkpoint), car-2 waits idle beside it."""
    model = digits()
    ref = env.gateway.models.add_file(model.model_path)
    x = np.resize(model.test_inputs(), (ITEMS, 64))
    first = env.start_agent("car-1")
    await env.wait_eligible(1)
    await env.gateway.submit(digits_task("t", ref, SlowInput(x, 0.4), ITEMS, MemorySink()))
    await env.events.wait(lambda e: e.kind == "checkpoint" and e.checkpoint > 0)
    second = env.start_agent("car-2")
    await env.wait_eligible(2)
    return first, second


async def stopped_within_one_period(agent: Agent, sent_before: int, reason: str) -> None:
    """The car itself ended its task, before its second telemetry after the change."""
    await wait_until(lambda: bool(agent.outcomes), 30)
    record = agent.outcomes[-1]
    assert record.task_id == "t"
    assert not record.outcome.done
    assert record.outcome.reason == reason
    assert record.telemetry_sent - sent_before <= 2


async def test_a_pause_moves_the_task_within_one_period_and_a_resume_brings_work_back(
    env: CarEnv, book: MemoryConsentBook
) -> None:
    owner, _ = await running_on_first_car(env)

    sent_before = owner.telemetry_sent
    owner.set_consent("paused")  # the owner, in the car's settings
    lost = await env.events.wait(lambda e: e.kind == "lost")
    assert (lost.reason, lost.from_car) == ("OwnerPaused", "car-1")
    assert 0 < lost.checkpoint < ITEMS
    await stopped_within_one_period(owner, sent_before, "OwnerPaused")
    # Retried on the other car, from the checkpoint it had.
    moved = await env.events.wait(lambda e: e.kind == "moved")
    assert (moved.car_id, moved.from_car) == ("car-2", "car-1")
    assert moved.checkpoint >= lost.checkpoint
    assert gauge(env, "parkfleet_gateway_cars_paused", pool=POOL) == 1
    assert env.gateway.capacity(CELL).cars_eligible == 1

    # Resumed: car-1 is the one idle car, and it takes the next task.
    owner.set_consent("active")
    await env.wait_eligible(2)
    assert gauge(env, "parkfleet_gateway_cars_paused", pool=POOL) == 0
    model = digits()
    ref = env.gateway.models.add_file(model.model_path)
    x = model.test_inputs()[:20]
    await env.gateway.submit(digits_task("t2", ref, ArrayInput(x), len(x), MemorySink()))
    assert (await env.events.ended("t2")).kind == "succeeded"
    assert env.events.of("placed", "t2")[0].car_id == "car-1"

    # Each change once, not each telemetry.
    assert [(c.car_id, c.consent) for c in book.changes] == [
        ("car-1", "paused"),
        ("car-1", "active"),
    ]
    for consent in ("paused", "active"):
        assert (
            gauge(env, "parkfleet_gateway_consent_changes_total", pool=POOL, consent=consent) == 1
        )
    assert not book.is_withdrawn("car-1")


async def test_a_withdrawal_ends_the_agent_closes_its_stream_and_refuses_the_car_after(
    env: CarEnv, book: MemoryConsentBook
) -> None:
    owner, _ = await running_on_first_car(env)

    sent_before = owner.telemetry_sent
    owner.set_consent("withdrawn")
    with pytest.raises(Withdrawn, match="car-1: its owner withdrew it"):
        await asyncio.wait_for(env.runs[0], 30)
    assert not owner.connected.is_set()
    await stopped_within_one_period(owner, sent_before, "OwnerWithdrawn")
    lost = await env.events.wait(lambda e: e.kind == "lost")
    assert (lost.reason, lost.from_car) == ("OwnerWithdrawn", "car-1")
    moved = await env.events.wait(lambda e: e.kind == "moved")
    assert moved.car_id == "car-2"

    await wait_until(lambda: "car-1" not in env.gateway.registry.cars)
    assert gauge(env, "parkfleet_gateway_streams_closed_total", reason="Withdrawn") == 1
    assert book.is_withdrawn("car-1")
    assert [(c.car_id, c.pool, c.consent) for c in book.changes] == [("car-1", POOL, "withdrawn")]

    # The same car connecting again (even with a fresh certificate) is refused.
    async with ProbeCar(env.gateway.address, env.ca.cert_pem, env.pair("car-1")) as again:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await again.connect()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "owner withdrew it" in (err.value.details() or "")
    assert gauge(env, "parkfleet_gateway_streams_closed_total", reason="Withdrawn") == 2
    assert "car-2" in env.gateway.registry.cars


async def test_an_agent_whose_settings_say_withdrawn_does_not_connect(env: CarEnv) -> None:
    agent = env.start_agent("car-1")
    agent.set_consent("withdrawn")  # before run() gets going
    with pytest.raises(Withdrawn):
        await asyncio.wait_for(env.runs[0], 10)
    assert agent.metrics.registry.get_sample_value("parkfleet_agent_connects_total") == 0


async def test_the_agent_process_leaves_when_its_owner_withdraws_and_will_not_start_again(
    env: CarEnv, tmp_path: Path
) -> None:
    settings = tmp_path / "consent.yaml"
    settings.write_text("consent: paused\n")
    proc = env.spawn_agent("car-p", "--consent-file", str(settings))
    await wait_until(lambda: gauge(env, "parkfleet_gateway_cars_paused", pool=POOL) == 1, 60)
    settings.write_text("consent: withdrawn\n")
    assert await asyncio.to_thread(proc.wait, 30) == 0
    assert proc.stderr is not None
    assert "its owner withdrew it from the fleet" in proc.stderr.read().decode()
    await wait_until(lambda: env.gateway.capacity(CELL).cars_connected == 0)

    again = env.spawn_agent("car-p", "--consent-file", str(settings))
    assert await asyncio.to_thread(again.wait, 30) == 0
    assert again.stderr is not None
    assert "says withdrawn" in again.stderr.read().decode()
    assert gauge(env, "parkfleet_gateway_streams_closed_total", reason="Withdrawn") == 1


async def test_a_withdrawal_survives_a_gateway_restart(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger" / "owners.sqlite"
    env = await start_env(tmp_path, telemetry_interval_s=0.3, ledger_path=ledger)
    try:
        agent = env.start_agent("car-1")
        await env.wait_eligible(1)
        agent.set_consent("withdrawn")
        with pytest.raises(Withdrawn):
            await asyncio.wait_for(env.runs[0], 30)
    finally:
        await env.close()  # the ledger is flushed on stop

    # A new gateway process on the same data: the car's identity is still refused.
    restarted = (await start_gateway(tmp_path, env.ca, ledger_path=ledger)).gateway
    try:
        pair = env.ca.issue_car("car-1", {"pool": POOL})
        async with ProbeCar(restarted.address, env.ca.cert_pem, pair) as again:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await again.connect()
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "owner withdrew it" in (err.value.details() or "")
        async with ProbeCar(
            restarted.address, env.ca.cert_pem, env.ca.issue_car("car-2", {"pool": POOL})
        ) as other:
            await other.connect()  # other cars are welcome
    finally:
        await restarted.stop(0)

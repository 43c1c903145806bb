"""The owner ledger: the gateway's own account of each car, kept in SQLite, authoritative.

Real gateway, real agents over gRPC with real certificates, real ONNX Runtime; the ledger
is the gateway's SQLite file, read back the way ``parkfleet ledger`` reads it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from parkfleet.certs import FleetCA
from parkfleet.gateway import MemorySink, ModelRef
from parkfleet.gateway.ledger import CREDIT_PER_TASK_HOUR, read_ledger
from parkfleet.policy import REASON_ENERGY_BUDGET_SPENT, Policy
from parkfleet.vehicle import MutableSensors, SensorReading
from tests.carlink_probe import wait_until
from tests.integration.car_env import CarEnv, Events, SlowInput, digits, digits_task
from tests.integration.gateway_env import start_gateway

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# A long task: slow inputs keep it running for tens of seconds.
ITEMS = 40_000


async def _env(tmp_path: Path, ca: FleetCA, ledger: Path, **config: object) -> CarEnv:
    certs = tmp_path / "certs"
    ca.save(certs)
    gateway = (
        await start_gateway(
            tmp_path, ca, ledger_path=ledger, telemetry_interval_s=0.3, car_wait_s=30.0, **config
        )
    ).gateway
    return CarEnv(ca=ca, gateway=gateway, certs=certs, events=Events(gateway))


def _digits(env: CarEnv, items: int) -> tuple[ModelRef, np.ndarray]:
    """The digits model in the gateway's store, and ``items`` of its inputs."""
    model = digits()
    return env.gateway.models.add_file(model.model_path), np.resize(
        model.test_inputs(), (items, 64)
    )


async def test_the_ledgers_totals_are_the_jobs_totals(tmp_path: Path) -> None:
    ledger = tmp_path / "data" / "ledger.shard-0.sqlite3"
    env = await _env(tmp_path, FleetCA.create(), ledger)
    try:
        ref, x = _digits(env, 600)
        for car in ("car-1", "car-2"):
            env.start_agent(car, sensors=MutableSensors(SensorReading(plugged_in=True)))
        await env.wait_eligible(2)
        ids = [f"t{i}" for i in range(4)]
        for task_id in ids:
            # Slow inputs: each task runs for a few telemetry periods.
            inputs = SlowInput(x, 0.1)
            await env.gateway.submit(digits_task(task_id, ref, inputs, len(x), MemorySink()))
        ends = [await env.events.ended(t) for t in ids]
        assert [e.kind for e in ends] == ["succeeded"] * len(ids)
    finally:
        await env.close()  # the gateway's stop writes the ledger

    rows = read_ledger([ledger], pool="cars")
    assert {r.car_id for r in rows} <= {"car-1", "car-2"}
    energy = sum(r.energy_wh for r in rows)
    task_hours = sum(r.task_hours for r in rows)
    # The job's figures (what InferenceJob status sums) are the ledger's.
    assert energy == pytest.approx(sum(e.energy_wh for e in ends), rel=1e-9)
    assert sum(r.items for r in rows) == sum(e.items_done for e in ends) == 4 * len(x)
    assert all(e.energy_modelled for e in ends)
    assert task_hours > 0
    # The gateway's account: task seconds x the cars' declared power (default 333 W).
    assert energy == pytest.approx(task_hours * (60.0 + 240.0) / 0.9, rel=1e-6)
    # Every task succeeded, every attempt delivered: credit for all of its time.
    assert sum(r.credit for r in rows) == pytest.approx(CREDIT_PER_TASK_HOUR * task_hours)
    assert sum(r.violations for r in rows) == 0
    assert sum(r.offered_hours for r in rows) > 0
    # The cars' own figures are kept beside, as a cross-check.
    car_energy = sum(r.car_energy_wh for r in rows)
    assert car_energy > 0
    assert math.isclose(car_energy, energy, rel_tol=0.5)


async def _spend_budget(env: CarEnv, policy: Policy) -> None:
    """Runs a long task on car-1 until its owner's daily budget stops it."""
    ref, x = _digits(env, ITEMS)
    agent = env.start_agent(
        "car-1", policy=policy, sensors=MutableSensors(SensorReading(plugged_in=True))
    )
    await env.wait_eligible(1)
    await env.gateway.submit(digits_task("long", ref, SlowInput(x, 1.0), ITEMS, MemorySink()))
    lost = await env.events.wait(lambda e: e.kind == "lost")
    assert lost.reason == REASON_ENERGY_BUDGET_SPENT
    agent.stop()


async def _reason_after_connect(env: CarEnv, policy: Policy) -> str:
    agent = env.start_agent(
        "car-1", policy=policy, sensors=MutableSensors(SensorReading(plugged_in=True))
    )
    await agent.connected.wait()
    start = agent.telemetry_sent
    await wait_until(lambda: agent.telemetry_sent >= start + 2)
    return env.gateway.registry.cars["car-1"].reason


async def test_the_daily_budget_survives_agent_and_gateway_restarts(tmp_path: Path) -> None:
    # 0.05 Wh: about half a second of a 333 W awake car.
    policy = Policy(daily_energy_wh=0.05)
    ledger = tmp_path / "data" / "ledger.shard-0.sqlite3"
    ca = FleetCA.create()
    env = await _env(tmp_path, ca, ledger)
    try:
        await _spend_budget(env, policy)
        # A restarted agent counts from 0 in its own memory; the gateway does not.
        assert await _reason_after_connect(env, policy) == REASON_ENERGY_BUDGET_SPENT
    finally:
        await env.close()
    spent = sum(r.energy_wh for r in read_ledger([ledger]))
    assert spent >= 0.05

    # A new gateway process on the same volume: the budget is still spent today.
    env = await _env(tmp_path, ca, ledger)
    try:
        assert await _reason_after_connect(env, policy) == REASON_ENERGY_BUDGET_SPENT
        # ...and told to the car, whose own count starts from the ledger's.
        cars = env.gateway.registry.cars
        assert cars["car-1"].reason == REASON_ENERGY_BUDGET_SPENT
    finally:
        await env.close()


async def test_a_policy_stopped_attempts_own_figure_is_kept(tmp_path: Path) -> None:
    """The gateway moves a task as soon as the owner's policy stops its car; the car's
    report of the stopped attempt, with its energy, comes after: it is still counted."""
    ledger = tmp_path / "data" / "ledger.shard-0.sqlite3"
    env = await _env(tmp_path, FleetCA.create(), ledger)
    try:
        ref, x = _digits(env, ITEMS)
        sensors = MutableSensors(SensorReading(plugged_in=True))
        agent = env.start_agent("car-1", policy=Policy(only_while_plugged_in=True), sensors=sensors)
        await env.wait_eligible(1)
        await env.gateway.submit(digits_task("t", ref, SlowInput(x, 1.0), ITEMS, MemorySink()))
        await env.events.wait(lambda e: e.kind == "checkpoint" and e.checkpoint > 0)
        sensors.set(plugged_in=False)
        await env.events.wait(lambda e: e.kind == "lost")
        await wait_until(lambda: bool(agent.outcomes))
        reported = agent.outcomes[-1].outcome.energy_wh
        assert reported > 0
        sample = env.gateway.metrics.registry.get_sample_value
        await wait_until(
            lambda: bool(
                sample("parkfleet_gateway_car_reported_energy_joules_total", {"pool": "cars"})
            )
        )
    finally:
        await env.close()
    (row,) = read_ledger([ledger])
    assert row.car_energy_wh == pytest.approx(reported)
    assert row.energy_wh > 0


@pytest.mark.parametrize("agreed", [True, False, None])
async def test_credit_of_a_copy_follows_its_verdict(tmp_path: Path, agreed: bool | None) -> None:
    """A copy of a checked unit earns credit when the copies agree, none when they
    disagree, and its credit when its result is kept without a vote (the check skipped)."""
    ledger = tmp_path / "data" / "ledger.shard-0.sqlite3"
    env = await _env(tmp_path, FleetCA.create(), ledger)
    try:
        ref, x = _digits(env, 300)
        env.start_agent("car-1", sensors=MutableSensors(SensorReading(plugged_in=True)))
        await env.wait_eligible(1)
        spec = digits_task("copy", ref, SlowInput(x, 0.1), len(x), MemorySink(), group="unit")
        await env.gateway.submit(spec)
        assert (await env.events.ended("copy")).kind == "succeeded"
        if agreed is not None:
            env.gateway.record_verdict("copy", agreed)
        env.gateway.release("copy")
    finally:
        await env.close()
    (row,) = read_ledger([ledger])
    assert row.task_hours > 0
    expected = 0.0 if agreed is False else CREDIT_PER_TASK_HOUR * row.task_hours
    assert row.credit == pytest.approx(expected)

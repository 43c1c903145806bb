"""The simulator: many real agents, each with its own certificate and stream, driven by
traces, against the real gateway; a task placed on the fleet runs and is correct.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from parkfleet.energymodel import CarPower
from parkfleet.gateway import ArrayInput, MemorySink
from parkfleet.sim import FleetConfig, SimulatedFleet
from tests.integration.car_env import CarEnv, digits, digits_task, start_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# Tuesday 1970-01-06 03:00 UTC: night, most cars with a charger are plugged in.
NIGHT_MS = (5 * 86_400 + 3 * 3600) * 1000


def sim_fleet(env: CarEnv, **kw: Any) -> SimulatedFleet:
    """A fleet of lenient owners with modelled compute against the test's gateway."""
    base: dict[str, Any] = {
        "seed": 3,
        "compute": "modelled",
        "modelled_items_per_second": 50_000.0,
        "strict_owners": False,
        "ramp_s": 0.0,
        "telemetry_interval_s": 0.5,
    }
    base.update(kw)
    return SimulatedFleet(FleetConfig(gateway=env.gateway.address, certs_dir=env.certs, **base))


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[CarEnv]:
    e = await start_env(tmp_path, car_wait_s=30.0, telemetry_interval_s=0.5)
    yield e
    await e.close()


async def test_fleet_connects_and_runs_a_task(env: CarEnv) -> None:
    fleet = sim_fleet(env, cars=8, pool="sim", cells=1, start_unix_ms=NIGHT_MS)
    try:
        await fleet.start()
        assert await fleet.wait_connected(timeout_s=30.0) == 8
        plugged = sum(t.state_at(NIGHT_MS / 1000 - 4 * 86_400).plugged_in for t in fleet.traces)
        assert 0 < plugged < 8  # this seed has some of each
        cap = env.gateway.capacity("sim-0")
        assert cap.cars_connected == 8  # eight identities, eight streams
        for _ in range(200):
            cap = env.gateway.capacity("sim-0")
            if cap.cars_eligible == plugged:
                break
            await asyncio.sleep(0.02)
        assert cap.cars_eligible == plugged

        model = digits()
        ref = env.gateway.models.add_file(model.model_path)
        x = model.test_inputs()
        sink = MemorySink()
        await env.gateway.submit(digits_task("sim", ref, ArrayInput(x), len(x), sink, cell="sim-0"))
        assert (await env.events.ended("sim")).kind == "succeeded"
        local = ort.InferenceSession(str(model.model_path), providers=["CPUExecutionProvider"])
        (label,) = local.run(["label"], {"input": x})
        np.testing.assert_array_equal(sink.output("label"), label)
        assert fleet.stats().tasks_done == 1

        # Certificates are cached per car: a second fleet reuses them.
        again = SimulatedFleet(fleet.config)
        again.prepare()
        assert [a.config.credentials.cert_pem for a in again.agents] == [
            a.config.credentials.cert_pem for a in fleet.agents
        ]
        await again.stop()
    finally:
        await fleet.stop()


async def test_energy_runs_on_the_wall_clock_not_the_sped_up_one(env: CarEnv) -> None:
    # An hour of traces per real second: a task's energy must still be counted on the wall
    # clock, the one its items/s are counted on (one time base).
    fleet = sim_fleet(
        env, cars=1, pool="wall", speed=3600.0, modelled_items_per_second=200.0, scenario="parked"
    )
    try:
        await fleet.start()
        assert await fleet.wait_connected(timeout_s=30.0) == 1
        model = digits()
        ref = env.gateway.models.add_file(model.model_path)
        x = model.test_inputs()[:100]  # half a second at 200 items/s
        loop = asyncio.get_running_loop()
        started = loop.time()
        await env.gateway.submit(
            digits_task("wall", ref, ArrayInput(x), len(x), MemorySink(), cell="wall-0")
        )
        assert (await env.events.ended("wall")).kind == "succeeded"
        wall_s = loop.time() - started
        (record,) = fleet.agents[0].outcomes
        power = CarPower.from_capabilities(fleet.agents[0].config.capabilities)
        assert record.outcome.energy_modelled
        assert 0 < record.outcome.energy_wh <= power.task_wh(wall_s)
    finally:
        await fleet.stop()

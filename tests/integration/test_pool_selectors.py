"""Pools cannot steal cars: a gateway places connecting and connected cars by the most
specific FleetPool selector, and refuses (with a metric and a log line) cars two pools tie for.

Real grpc.aio over 127.0.0.1 with real certificates; the cars are the small protocol
client in tests/carlink_probe.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from parkfleet.api import FleetPoolSpec
from parkfleet.certs import FleetCA
from parkfleet.gateway.cells import UNPOOLED
from tests.carlink_probe import ProbeCar, wait_until
from tests.integration.gateway_env import Env, start_gateway

pytestmark = pytest.mark.integration

GOLD = {"pool": "p", "tier": "gold"}


def spec(name: str, selector: dict[str, str], min_soc: float) -> FleetPoolSpec:
    return FleetPoolSpec.from_k8s(
        {
            "metadata": {"name": name},
            "spec": {
                "cellSize": 10,
                "selector": {"matchAttributes": selector},
                "policyFloor": {"minBatteryPercent": min_soc},
            },
        }
    )


STRICT = spec("strict", GOLD, 50)
LOOSE = spec("aaa", {}, 0)  # first by name, empty selector, loose floor
TWIN = spec("twin", GOLD, 10)


def refusals(env: Env) -> float:
    got = env.gateway.metrics.registry.get_sample_value("parkfleet_gateway_pool_refusals_total")
    return got or 0.0


def car(env: Env, car_id: str, attributes: dict[str, str]) -> ProbeCar:
    env.pair(car_id, attributes)  # its certificate carries these attributes
    return env.car(car_id)


def cell_of(env: Env, car_id: str) -> str:
    return env.gateway.registry.cars[car_id].cell.id


async def test_a_loose_pool_takes_no_cars_and_a_twin_pool_refuses_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = await start_gateway(tmp_path, FleetCA.create())
    try:
        await _loose_and_twin_pools(env, caplog)
    finally:
        await env.gateway.stop(0)


async def _loose_and_twin_pools(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="parkfleet.gateway.server")
    env.gateway.set_pools([LOOSE, STRICT])
    async with (
        car(env, "gold-1", GOLD) as gold,
        car(env, "plain-1", {"pool": "other"}) as plain,
    ):
        assert (await gold.connect()).cell == "strict-0"
        assert (await plain.connect()).cell == "aaa-0"
        # The strict pool's floor, not the loose one's, bounds the car it keeps.
        policy = env.gateway.registry.cars["gold-1"].eligibility.policy
        assert policy.min_soc_percent == 50

        # An equally specific pool appears: the car is refused, counted once, logged.
        env.gateway.set_pools([LOOSE, STRICT, TWIN])
        assert cell_of(env, "gold-1") == UNPOOLED
        assert cell_of(env, "plain-1") == "aaa-0"
        assert refusals(env) == 1
        assert "pools strict, twin" in caplog.text
        env.gateway.set_pools([LOOSE, STRICT, TWIN])  # nothing changed: not counted again
        assert refusals(env) == 1

        # A car connecting meanwhile is refused too.
        async with car(env, "gold-2", GOLD) as late:
            assert (await late.connect()).cell == UNPOOLED
            assert refusals(env) == 2
            assert "car gold-2 joins no pool" in caplog.text

            # The twin goes: the strict pool has its cars back, the loose one none of them.
            env.gateway.set_pools([LOOSE, STRICT])
            assert cell_of(env, "gold-1") == cell_of(env, "gold-2") == "strict-0"
            await wait_until(lambda: env.gateway.capacity("strict-0").cars_connected == 2)
            assert env.gateway.capacity("aaa-0").cars_connected == 1

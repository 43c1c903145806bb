"""Many cars of one process (as in the simulator) ask the real gateway for one model at
once: it is fetched once over the real link, and the shared event loop keeps running
while the model is joined and hashed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol import carlink_pb2_grpc, limits
from parkfleet.vehicle import Credentials, ModelCache, modelcache
from tests.integration.car_env import CarEnv, start_env
from tests.loop_ticks import SLOW_HASH_S, LoopTicks, slow_sha256

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CARS = 200


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[CarEnv]:
    e = await start_env(tmp_path)
    yield e
    await e.close()


async def test_cars_asking_at_once_share_one_fetch_and_the_loop_keeps_ticking(
    env: CarEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(16 * 1024 * 1024)  # 16 chunks of the link
    stored = env.gateway.models.add_bytes(data)
    ref = pb.ModelRef(uri="gateway:", sha256=stored.sha256, size_bytes=len(data))
    pair = env.pair("car-1")
    creds = Credentials(env.ca.cert_pem, pair.cert_pem, pair.key_pem)
    monkeypatch.setattr(modelcache, "hashlib", SimpleNamespace(sha256=slow_sha256))
    cache = ModelCache()  # one for the whole process, as the simulator has
    async with grpc.aio.secure_channel(
        env.gateway.address, creds.channel_credentials(), options=limits.channel_options()
    ) as channel:
        stub = carlink_pb2_grpc.CarLinkStub(channel)
        ticks = LoopTicks()
        got = await asyncio.gather(*(cache.get(ref, stub) for _ in range(CARS)))
        await ticks.stop()
    assert all(g == data for g in got)
    assert cache.fetches == 1
    sent = env.gateway.metrics.registry.get_sample_value("parkfleet_gateway_model_bytes_sent_total")
    assert sent == len(data)  # served once for all of them
    # Hashed on the loop, it would not have ticked for SLOW_HASH_S; generous for a busy box.
    assert ticks.largest_gap_s < SLOW_HASH_S / 2, ticks.largest_gap_s

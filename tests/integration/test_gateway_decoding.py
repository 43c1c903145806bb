"""Bytes no decoder accepts close only that car's stream, as a protocol violation.

Real grpc.aio over 127.0.0.1 with real certificates; the bytes go out through the
car link's own serializer (``chunks.serialize`` passes bytes as they are), so the
gateway's registered deserializer is what refuses them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from parkfleet.certs import FleetCA
from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol.chunks import serialize
from tests.carlink_probe import ProbeCar, wait_until
from tests.integration.gateway_env import Env, start_gateway
from tests.protowire import delimited

pytestmark = pytest.mark.integration

_CONNECT = "/parkfleet.carlink.v1.CarLink/Connect"


@pytest.fixture(scope="module")
def ca() -> FleetCA:
    return FleetCA.create()


@pytest.fixture
async def env(tmp_path: Path, ca: FleetCA) -> AsyncIterator[Env]:
    e = await start_gateway(tmp_path, ca)
    yield e
    await e.gateway.stop(0)


def raw_stream(car: ProbeCar) -> Any:
    """A Connect stream that writes bytes as they are."""
    return car.channel.stream_stream(
        _CONNECT, request_serializer=serialize, response_deserializer=pb.GatewayMessage.FromString
    )()


def closed(env: Env, reason: str) -> float:
    value = env.gateway.metrics.registry.get_sample_value(
        "parkfleet_gateway_streams_closed_total", {"reason": reason}
    )
    return value or 0.0


async def test_garbage_as_the_first_message_is_a_protocol_violation(env: Env) -> None:
    async with env.car("car-a") as car:
        call = raw_stream(car)
        await call.write(b"\x3a\x05\x0a\x01t")  # a result whose body runs past the message
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed" in (err.value.details() or "")
    assert closed(env, "ProtocolViolation") == 1
    assert closed(env, "InternalError") == 0


async def test_a_dims_bomb_closes_only_that_stream(env: Env) -> None:
    bomb = delimited(
        7,
        delimited(1, b"t") + delimited(4, delimited(1, b"y") + delimited(3, b"\x01" * 2**21)),
    )
    async with env.car("car-good") as good, env.car("car-bad") as bad:
        await good.connect()
        call = raw_stream(bad)
        await call.write(pb.CarMessage(hello=ProbeCar.hello()).SerializeToString())
        welcome = await call.read()
        assert welcome.WhichOneof("body") == "welcome"
        await call.write(bomb)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "more than 8 dims" in (err.value.details() or "")
        await wait_until(lambda: "car-bad" not in env.gateway.registry.cars)
        await good.telemetry()
        await wait_until(lambda: env.gateway.capacity("p-0").cars_eligible == 1)
    assert closed(env, "InternalError") == 0

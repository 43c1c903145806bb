"""The gateway's door: mTLS, identity from the certificate, version, message bounds.

Real grpc.aio over 127.0.0.1 with real certificates; the client is the small protocol
client in tests/carlink_probe.py (it is the link itself, not a mock).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from parkfleet.certs import FleetCA
from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol.limits import MAX_MESSAGE_BYTES
from tests.carlink_probe import ProbeCar, wait_until
from tests.integration.gateway_env import Env, start_gateway

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ca() -> FleetCA:
    return FleetCA.create()


@pytest.fixture
async def env(tmp_path: Path, ca: FleetCA) -> AsyncIterator[Env]:
    e = await start_gateway(tmp_path, ca)
    yield e
    await e.gateway.stop(0)


async def test_car_with_valid_certificate_is_welcomed(env: Env) -> None:
    async with env.car("car-a", options=()) as car:
        welcome = await car.connect(ProbeCar.hello(car_id="car-a"))
        assert welcome.car_id == "car-a"
        assert welcome.cell == "p-0"
        assert welcome.protocol_version == 1
        assert welcome.max_message_bytes == MAX_MESSAGE_BYTES
        await car.telemetry()
        await wait_until(lambda: env.gateway.capacity("p-0").cars_eligible == 1)
        cap = env.gateway.capacity("p-0")
        assert (cap.cars_connected, cap.gpus, cap.max_gpu_memory_mib) == (1, 1, 8192)


async def test_no_client_certificate_is_refused(env: Env) -> None:
    async with ProbeCar(env.gateway.address, env.ca.cert_pem, None) as car:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await car.connect()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert env.gateway.registry.cars == {}


async def test_certificate_from_another_ca_is_refused(env: Env) -> None:
    rogue = FleetCA.create("rogue CA").issue_car("car-a", {"pool": "p"})
    async with ProbeCar(env.gateway.address, env.ca.cert_pem, rogue) as car:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await car.connect()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert env.gateway.registry.cars == {}


async def test_hello_claiming_another_car_is_permission_denied(env: Env) -> None:
    async with env.car("car-a") as car:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await car.connect(ProbeCar.hello(car_id="car-b"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "car-b" in (err.value.details() or "")
    assert "car-a" in (err.value.details() or "")
    assert env.gateway.registry.cars == {}


async def test_wrong_protocol_version_is_failed_precondition(env: Env) -> None:
    async with env.car("car-a") as car:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await car.connect(ProbeCar.hello(protocol_version=2))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "protocol version 2 is not supported" in (err.value.details() or "")


async def test_message_before_hello_closes_stream(env: Env) -> None:
    async with env.car("car-a") as car:
        await car.open()
        await car.telemetry()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await car.recv()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "first message must be Hello" in (err.value.details() or "")


async def test_second_hello_and_unknown_task_close_stream(env: Env) -> None:
    async with env.car("car-a") as car:
        await car.connect()
        await car.send(pb.CarMessage(hello=ProbeCar.hello()))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await car.recv()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    async with env.car("car-b") as car:
        await car.connect()
        await car.send(pb.CarMessage(checkpoint=pb.TaskCheckpoint(task_id="nope", attempt=1)))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await car.recv()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown task id" in (err.value.details() or "")


async def test_malformed_fields_close_stream(env: Env) -> None:
    async with env.car("car-a") as car:
        await car.connect()
        await car.telemetry(soc_percent=250.0)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await car.recv()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "soc_percent" in (err.value.details() or "")
    await wait_until(lambda: env.gateway.registry.cars == {})


async def test_a_consent_out_of_range_closes_that_stream(env: Env) -> None:
    async with env.car("car-a") as car:
        await car.connect()
        await car.telemetry(consent=7)  # proto3 enums are open: 7 parses
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await car.recv()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "telemetry.consent 7 is not a Consent" in (err.value.details() or "")
    await wait_until(lambda: env.gateway.registry.cars == {})


async def test_oversized_message_closes_only_that_stream(env: Env) -> None:
    big = [("grpc.max_send_message_length", 3 * MAX_MESSAGE_BYTES)]
    async with env.car("car-good") as good, env.car("car-bad", options=big) as bad:
        await good.connect()
        await bad.connect()
        await good.telemetry()
        await wait_until(lambda: env.gateway.capacity("p-0").cars_eligible == 1)
        huge = pb.CarMessage(
            log=pb.TaskLog(task_id="t", lines=["x" * 1_000_000] * (MAX_MESSAGE_BYTES // 10**6 + 1))
        )
        await bad.send(huge)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await bad.recv()
        # gRPC's receive bound rejects it before any of it is parsed.
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in (err.value.details() or "")
        await wait_until(lambda: "car-bad" not in env.gateway.registry.cars)
        # The other car is unaffected: still registered, still talking.
        await good.telemetry(state=pb.DRIVING)
        await wait_until(lambda: env.gateway.capacity("p-0").cars_eligible == 0)
        assert "car-good" in env.gateway.registry.cars


async def test_reconnect_replaces_the_old_stream(env: Env) -> None:
    async with env.car("car-a") as first, env.car("car-a") as second:
        await first.connect()
        await second.connect()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await first.recv()
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert len(env.gateway.registry.cars) == 1
        await second.telemetry()
        await wait_until(lambda: env.gateway.capacity("p-0").cars_eligible == 1)
        assert env.gateway.capacity("p-0").cars_connected == 1


async def test_silent_car_is_dropped(tmp_path: Path, ca: FleetCA) -> None:
    env = await start_gateway(tmp_path, ca, telemetry_timeout_s=0.3)
    try:
        async with env.car("car-a") as car:
            await car.connect()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await car.recv()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "no telemetry" in (err.value.details() or "")
        assert env.gateway.registry.cars == {}
        assert env.gateway.capacity("p-0").cars_connected == 0
    finally:
        await env.gateway.stop(0)


async def test_fetch_model_in_bounded_chunks(env: Env) -> None:
    data = bytes(range(256)) * (5 * 1024 * 1024 // 256 + 7)
    ref = env.gateway.models.add_bytes(data)
    async with env.car("car-a") as car:
        chunks = [c async for c in car.stub.FetchModel(pb.ModelRequest(sha256=ref.sha256))]
        assert b"".join(c.data for c in chunks) == data
        assert all(len(c.data) <= 1024 * 1024 for c in chunks)
        assert [c.offset for c in chunks] == [i * 1024 * 1024 for i in range(len(chunks))]
        assert {c.total_size for c in chunks} == {len(data)}
        with pytest.raises(grpc.aio.AioRpcError) as err:
            _ = [c async for c in car.stub.FetchModel(pb.ModelRequest(sha256="0" * 64))]
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            _ = [c async for c in car.stub.FetchModel(pb.ModelRequest(sha256="../etc/passwd"))]
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

"""A car's identity over time: revoked, expired, too old, renewed, or not a car's at all.

Real grpc.aio over 127.0.0.1 with real certificates from the fleet CA; the cars are the
protocol client of tests/carlink_probe.py and, for renewal, the real vehicle agent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from parkfleet.certs import FleetCA
from parkfleet.energymodel import CarPower
from parkfleet.gateway import ArrayInput, Gateway, GatewayConfig, MemorySink
from parkfleet.policy import Policy
from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.vehicle import (
    Agent,
    AgentConfig,
    Credentials,
    ModelledCompute,
    MutableSensors,
    OrtCompute,
)
from parkfleet.vehicle.link import capabilities
from tests.carlink_probe import ProbeCar, wait_until
from tests.integration.car_env import CELL, POOL, Events, digits, digits_task
from tests.integration.gateway_env import Env, start_gateway
from tests.integration.test_gateway_tasks import Recorder, spec
from tests.integration.test_rogue_cars import refused

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ca() -> FleetCA:
    return FleetCA.create()


@pytest.fixture
async def env(tmp_path: Path, ca: FleetCA) -> AsyncIterator[Env]:
    # A short telemetry timeout makes the gateway's sweep (expiry, stream age) run each second.
    e = await start_gateway(tmp_path, ca, telemetry_timeout_s=4.0, telemetry_interval_s=0.5)
    yield e
    await e.gateway.stop(0)


async def refused_at_connect(car: ProbeCar) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await car.connect()
    return info.value.code(), info.value.details() or ""


async def test_a_revoked_car_is_cut_off_its_task_moves_and_only_a_renewal_lets_it_back(
    env: Env,
) -> None:
    rec = Recorder(env)
    sink = MemorySink()
    data = np.arange(6, dtype=np.float32).reshape(6, 1)
    victim = env.car("victim")
    await victim.connect()
    await victim.telemetry()
    await wait_until(lambda: env.gateway.capacity("p-0").cars_eligible == 1)
    await env.gateway.submit(spec(data, sink, output_names=("y",)))
    msg = await victim.recv()
    assert msg is not None
    assert msg.WhichOneof("body") == "offer"
    await victim.send(
        pb.CarMessage(accept=pb.TaskAccept(task_id=msg.offer.task_id, attempt=msg.offer.attempt))
    )
    await rec.wait("accepted")

    env.gateway.set_revocations({"victim": time.time()})
    code, details = await refused(victim)  # within 10 s
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "revoked" in details
    await victim.close()

    # The task moves to another car and finishes there.
    async with env.car("spare") as spare:
        await spare.connect()
        await spare.telemetry()
        worker = asyncio.create_task(spare.work())
        await rec.wait("succeeded")
        worker.cancel()
    assert sink.items() == list(range(6))
    status = env.gateway.task("t1")
    assert status is not None
    assert status.cars == ("victim", "spare")

    # Its certificate stays refused; one issued after the revocation is accepted.
    async with env.car("victim") as again:
        code, details = await refused_at_connect(again)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "revoked" in details
    renewed = env.ca.issue_car("victim", {"pool": "p"}, issued_after=time.time())
    async with ProbeCar(env.gateway.address, env.ca.cert_pem, renewed) as back:
        welcome = await back.connect()
    assert welcome.car_id == "victim"


async def test_a_gateway_certificate_is_no_car_and_a_car_certificate_no_gateway(
    tmp_path: Path, env: Env
) -> None:
    server_pair = env.ca.issue_gateway(["127.0.0.1", "localhost"])
    async with ProbeCar(env.gateway.address, env.ca.cert_pem, server_pair) as fake_car:
        code, _ = await refused_at_connect(fake_car)
    assert code == grpc.StatusCode.UNAVAILABLE  # the TLS handshake refused it
    # A car's certificate serving as a gateway (its id made to look like a host name).
    car_pair = env.ca.issue_car("gw.example", {"pool": "p"})
    fake = Gateway(
        GatewayConfig(
            ca_pem=env.ca.cert_pem,
            cert_pem=car_pair.cert_pem,
            key_pem=car_pair.key_pem,
            models_dir=tmp_path / "fake-models",
        )
    )
    await fake.start()
    try:
        async with ProbeCar(
            fake.address, env.ca.cert_pem, env.pair("honest"), server_name="gw.example"
        ) as car:
            code, _ = await refused_at_connect(car)
        assert code == grpc.StatusCode.UNAVAILABLE
        assert fake.capacity("p-0").cars_connected == 0
    finally:
        await fake.stop(0)


async def test_an_expired_certificate_is_refused_and_one_expiring_is_dropped(env: Env) -> None:
    expired = env.ca.issue_car("old", {"pool": "p"}, lifetime=dt.timedelta(minutes=-30))
    async with ProbeCar(env.gateway.address, env.ca.cert_pem, expired) as car:
        code, _ = await refused_at_connect(car)
    assert code == grpc.StatusCode.UNAVAILABLE  # the handshake: the certificate is expired
    short = env.ca.issue_car("brief", {"pool": "p"}, lifetime=dt.timedelta(seconds=2))
    async with ProbeCar(env.gateway.address, env.ca.cert_pem, short) as car:
        await car.connect()
        beat = asyncio.create_task(_beat(car))
        code, details = await refused(car)
        beat.cancel()
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "expired" in details


async def test_a_stream_older_than_the_maximum_age_is_closed_and_the_car_comes_back(
    tmp_path: Path, ca: FleetCA
) -> None:
    env = await start_gateway(tmp_path, ca, telemetry_timeout_s=4.0, max_stream_age_s=1.0)
    try:
        async with env.car("aging") as car:
            await car.connect()
            beat = asyncio.create_task(_beat(car))
            code, details = await refused(car)
            beat.cancel()
        assert code == grpc.StatusCode.UNAVAILABLE  # retriable: the car reconnects
        assert "connected longer than" in details
        async with env.car("aging") as car:
            assert (await car.connect()).car_id == "aging"
    finally:
        await env.gateway.stop(0)


async def test_the_agent_picks_up_a_renewed_certificate_and_resumes_its_task(
    tmp_path: Path, ca: FleetCA
) -> None:
    """The agent's certificate expires mid-task; renewed on disk meanwhile, it is used on
    the next connection, and the task resumes from its checkpoint on the same car."""
    env = await start_gateway(tmp_path, ca, telemetry_timeout_s=4.0, telemetry_interval_s=0.5)
    events = Events(env.gateway)
    cert, key = tmp_path / "car.crt", tmp_path / "car.key"
    attrs = {"pool": POOL}
    ca.issue_car("renewing", attrs, lifetime=dt.timedelta(seconds=4)).save(cert, key)
    agent = Agent(
        AgentConfig(
            address=env.gateway.address,
            credentials=Credentials(
                ca.cert_pem, cert.read_bytes(), key.read_bytes(), cert_path=cert, key_path=key
            ),
            car_id="renewing",
            policy=Policy(),
            capabilities=capabilities("test-gpu", 8192, CarPower(), ["CPUExecutionProvider"]),
            max_reconnects=5,
            backoff_base_s=0.05,
        ),
        MutableSensors(),
        ModelledCompute(OrtCompute(intra_op_threads=1), 50.0),  # 400 items: 8 s
    )
    run = asyncio.create_task(agent.run())
    try:
        model = digits()
        ref = env.gateway.models.add_file(model.model_path, name="digits")
        x = model.test_inputs()[:400]
        sink = MemorySink()
        await wait_until(lambda: env.gateway.capacity(CELL).cars_eligible == 1, 10)
        await env.gateway.submit(digits_task("long", ref, ArrayInput(x), 400, sink, batch_size=8))
        await events.wait(lambda e: e.kind == "accepted" and e.task_id == "long")
        ca.issue_car("renewing", attrs, issued_after=time.time()).save(cert, key)
        end = await events.ended("long", 60)
        assert end.kind == "succeeded"
        assert sink.items() == list(range(400))  # every item once, across the two streams
        status = env.gateway.task("long")
        assert status is not None
        assert status.cars == ("renewing", "renewing")  # the same car, on its new stream
        assert not run.done()
    finally:
        agent.stop()
        await asyncio.gather(run, return_exceptions=True)
        await env.gateway.stop(0)


async def _beat(car: ProbeCar) -> None:
    while True:
        await car.telemetry()
        await asyncio.sleep(0.5)

"""A car offered a model from anywhere but its gateway refuses the offer with a fixed
reason, and opens no file and no socket for it.

The real gateway never sends such an offer (a task's model is by hash, from the store):
the offers here come from a rogue gateway (real gRPC, real mTLS, the real protocol code),
to show the car's own check holds whatever its gateway says (defence in depth).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from parkfleet.certs import FleetCA
from parkfleet.energymodel import CarPower
from parkfleet.policy import Policy
from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.vehicle import Agent, AgentConfig, Credentials, MutableSensors, OrtCompute
from parkfleet.vehicle.link import REASON_MODEL_SOURCE, capabilities
from tests.file_access import watching
from tests.rogue_gateway import RogueGateway

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SECRET = b"root:x:0:0:the owner's own file\n"
SHA = hashlib.sha256(SECRET).hexdigest()  # the file's real digest: reading it would "verify"


class Listener:
    """A TCP server on 127.0.0.1 that counts the connections it gets."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def rogue() -> AsyncIterator[tuple[FleetCA, RogueGateway]]:
    ca = FleetCA.create()
    gateway = RogueGateway(ca)
    await gateway.start()
    yield ca, gateway
    await gateway.stop()


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    lst = Listener()
    await lst.start()
    yield lst
    await lst.stop()


async def connected_agent(ca: FleetCA, address: str) -> tuple[Agent, asyncio.Task[None]]:
    pair = ca.issue_car("car-1", {"pool": "rogue"})
    agent = Agent(
        AgentConfig(
            address=address,
            credentials=Credentials(ca.cert_pem, pair.cert_pem, pair.key_pem),
            car_id="car-1",
            policy=Policy(),
            capabilities=capabilities("test-gpu", 8192, CarPower(), ["CPUExecutionProvider"]),
            max_reconnects=2,
            backoff_base_s=0.05,
        ),
        MutableSensors(),
        OrtCompute(intra_op_threads=1),
    )
    run = asyncio.create_task(agent.run())
    async with asyncio.timeout(20):
        await agent.connected.wait()
    return agent, run


def offer(uri: str) -> pb.GatewayMessage:
    return pb.GatewayMessage(
        offer=pb.TaskOffer(
            task_id="t1",
            attempt=1,
            runtime="onnxruntime",
            model=pb.ModelRef(uri=uri, sha256=SHA, size_bytes=len(SECRET)),
            input_name="input",
            output_names=["label"],
            batch_size=8,
            item_start=0,
            item_end=8,
            resume_from=0,
            checkpoint_interval_s=1.0,
        )
    )


@pytest.mark.parametrize("where", ["/etc/passwd", "sentinel", "http", "https", "bare path"])
async def test_an_offer_naming_a_file_or_a_url_is_refused_and_nothing_is_opened(
    rogue: tuple[FleetCA, RogueGateway], listener: Listener, tmp_path: Path, where: str
) -> None:
    ca, gateway = rogue
    sentinel = tmp_path / "passwd"
    sentinel.write_bytes(SECRET)
    uri, path = {
        "/etc/passwd": ("file:///etc/passwd", "/etc/passwd"),
        "sentinel": (sentinel.as_uri(), str(sentinel)),
        "http": (f"http://127.0.0.1:{listener.port}/model.onnx", ""),
        "https": (f"https://127.0.0.1:{listener.port}/model.onnx", ""),
        "bare path": (str(sentinel), str(sentinel)),
    }[where]
    agent, run = await connected_agent(ca, gateway.address)
    try:
        with watching() as touched:
            gateway.send(offer(uri))
            refused = await gateway.wait_for("refuse")
            await asyncio.sleep(0.5)  # anything the car would do next, it has begun
    finally:
        agent.stop()
        await asyncio.gather(run, return_exceptions=True)
    assert (refused.task_id, refused.reason) == ("t1", REASON_MODEL_SOURCE)
    # A fixed text: nothing of the offer comes back (no path, no digest, no error).
    assert refused.message == "this car fetches models only from its gateway, by sha256"
    if path:
        assert path not in touched.opened, touched.opened
    assert not [a for a in touched.connected if a[-1:] == (listener.port,)]
    assert listener.connections == 0
    assert gateway.model_requests == []  # not even the gateway was asked for it
    kinds = [m.WhichOneof("body") for m in gateway.received if isinstance(m, pb.CarMessage)]
    assert "accept" not in kinds
    assert list(agent.refusals) == [("t1", REASON_MODEL_SOURCE)]


async def test_the_same_offer_from_the_gateway_is_accepted_and_fetched_over_the_link(
    rogue: tuple[FleetCA, RogueGateway],
) -> None:
    # The control: only the model's source differs, and the car takes the offer.
    ca, gateway = rogue
    agent, run = await connected_agent(ca, gateway.address)
    try:
        gateway.send(offer("gateway:"))
        await gateway.wait_for("accept")
        failed = await gateway.wait_for("failed")
    finally:
        agent.stop()
        await asyncio.gather(run, return_exceptions=True)
    assert gateway.model_requests == [SHA]  # by hash, over the link
    assert failed.reason == "ModelFetchFailed"  # this gateway has no model to give

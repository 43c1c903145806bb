"""A gateway that sends a car whatever a test wants (a test tool, like ``carlink_probe``).

Real gRPC over real mTLS with the real protocol code (the gateway's own registration of
``CarLink``, so the stream's real codec), but none of the gateway's own checks: it welcomes any car,
then sends the messages a test queues, and records everything the car says and every
model it asks for. Tests use it to see what a car does with what the real gateway would
never send (defence in depth). It lives in ``tests/``: no deployment needs it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from parkfleet.certs import FleetCA
from parkfleet.gateway.server import add_carlink_service
from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol.limits import MAX_MESSAGE_BYTES, server_options

__all__ = ["RogueGateway"]


class RogueGateway:
    """A CarLink server on 127.0.0.1 with a certificate of ``ca``.

    Attributes:
        received: Every message a car sent after its Hello, in order.
        model_requests: The sha256 of every ``FetchModel`` call.
    """

    def __init__(self, ca: FleetCA) -> None:
        self._pair = ca.issue_gateway(["127.0.0.1", "localhost"])
        self._ca_pem = ca.cert_pem
        self._outbox: asyncio.Queue[pb.GatewayMessage] = asyncio.Queue()
        self._changed = asyncio.Event()
        self._server: grpc.aio.Server | None = None
        self.received: list[Any] = []
        self.model_requests: list[str] = []
        self.address = ""

    async def start(self) -> str:
        """Listens; returns ``host:port``."""
        server = grpc.aio.server(options=server_options())
        # The real registration (and so the stream's real codec), with this class as
        # the servicer: it has the same two methods.
        add_carlink_service(self, server)  # type: ignore[arg-type]
        creds = grpc.ssl_server_credentials(
            [(self._pair.key_pem, self._pair.cert_pem)],
            root_certificates=self._ca_pem,
            require_client_auth=True,
        )
        port = server.add_secure_port("127.0.0.1:0", creds)
        await server.start()
        self._server = server
        self.address = f"127.0.0.1:{port}"
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)

    def send(self, message: pb.GatewayMessage) -> None:
        """Queues a message for the (next) connected car."""
        self._outbox.put_nowait(message)

    async def wait_for(self, kind: str, timeout_s: float = 30.0) -> Any:
        """The first message of ``kind`` (a ``CarMessage`` body field) the car sent."""
        async with asyncio.timeout(timeout_s):
            while True:
                for m in self.received:
                    if isinstance(m, pb.CarMessage) and m.WhichOneof("body") == kind:
                        return getattr(m, kind)
                self._changed.clear()
                await self._changed.wait()

    async def Connect(self, requests: Any, context: grpc.aio.ServicerContext) -> None:
        hello = await context.read()
        if hello is grpc.aio.EOF:
            return
        await context.write(
            pb.GatewayMessage(
                welcome=pb.Welcome(
                    car_id=hello.hello.car_id,
                    cell="rogue-0",
                    protocol_version=pb.PROTOCOL_VERSION,
                    telemetry_interval_s=1.0,
                    max_message_bytes=MAX_MESSAGE_BYTES,
                )
            )
        )
        reader = asyncio.create_task(self._read(context))
        try:
            while not reader.done():
                sending = asyncio.create_task(self._outbox.get())
                await asyncio.wait({sending, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not sending.done():
                    sending.cancel()
                    break
                await context.write(sending.result())
        finally:
            reader.cancel()

    async def _read(self, context: grpc.aio.ServicerContext) -> None:
        while True:
            msg = await context.read()
            if msg is grpc.aio.EOF:
                return
            self.received.append(msg)
            self._changed.set()

    async def FetchModel(self, request: pb.ModelRequest, context: grpc.aio.ServicerContext) -> Any:
        self.model_requests.append(request.sha256)
        self._changed.set()
        await context.abort(grpc.StatusCode.NOT_FOUND, "the rogue gateway serves no model")
        yield pb.ModelChunk()  # never reached: makes this a stream handler

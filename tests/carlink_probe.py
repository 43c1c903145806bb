"""A minimal car that speaks the real protocol over real gRPC and mTLS (a test client).

It is not the vehicle agent: it has no ONNX Runtime, no backoff, no policy of its
own. Tests use it to poke the gateway with exact messages (including bad ones), and
the gateway benchmark uses it because thousands of real agents would not fit on the
benchmark machine. Its optional worker answers offers by echoing each input chunk
back as every requested output (identity "inference"). It lives in ``tests/``, not in
the product package: no deployment needs it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import grpc

from parkfleet.certs import KeyPair
from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol import carlink_pb2_grpc
from parkfleet.protocol.limits import PROTOCOL_VERSION, channel_options

__all__ = ["ProbeCar", "parked_telemetry", "wait_until"]


def parked_telemetry(**fields: Any) -> pb.Telemetry:
    """Telemetry of a parked, plugged-in, charged, cool car; ``fields`` override."""
    base: dict[str, Any] = {
        "state": pb.PARKED,
        "plugged_in": True,
        "soc_percent": 80.0,
        "gpu_temp_c": 40.0,
        "free_gpu_memory_mib": 8192,
        "link_quality": 0.9,
        "unix_time_ms": int(time.time() * 1000),
    }
    base.update(fields)
    return pb.Telemetry(**base)


class ProbeCar:
    """One car's link to a gateway.

    Args:
        address: The gateway's ``host:port``.
        ca_pem: The fleet CA (to verify the gateway).
        pair: The car's certificate and key; None connects without one.
        options: Extra channel options (e.g. a larger send limit, to test the
            gateway's receive bound).
        server_name: Overrides the TLS name checked against the gateway certificate.
    """

    def __init__(
        self,
        address: str,
        ca_pem: bytes,
        pair: KeyPair | None,
        options: Sequence[tuple[str, Any]] = (),
        server_name: str | None = None,
    ) -> None:
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca_pem,
            private_key=pair.key_pem if pair is not None else None,
            certificate_chain=pair.cert_pem if pair is not None else None,
        )
        opts: dict[str, Any] = dict(channel_options())
        opts.update(dict(options))
        if server_name:
            opts["grpc.ssl_target_name_override"] = server_name
        self.channel = grpc.aio.secure_channel(address, creds, options=list(opts.items()))
        self.stub = carlink_pb2_grpc.CarLinkStub(self.channel)
        self.call: Any = None
        self.welcome: pb.Welcome | None = None

    async def connect(self, hello: pb.Hello | None = None) -> pb.Welcome:
        """Opens the stream, sends Hello, and waits for Welcome.

        Raises:
            grpc.aio.AioRpcError: The gateway closed the stream instead.
        """
        if hello is None:
            hello = self.hello()
        self.call = self.stub.Connect()
        await self.call.write(pb.CarMessage(hello=hello))
        msg = await self.recv()
        if msg is None or msg.WhichOneof("body") != "welcome":
            raise RuntimeError(f"expected Welcome, got {msg}")
        self.welcome = msg.welcome
        return msg.welcome

    @staticmethod
    def hello(
        runtimes: Sequence[str] = ("onnxruntime",),
        gpu_memory_mib: int = 8192,
        policy: pb.OwnerPolicy | None = None,
        **fields: Any,
    ) -> pb.Hello:
        """A Hello for this protocol version; ``fields`` override."""
        base: dict[str, Any] = {
            "protocol_version": PROTOCOL_VERSION,
            "agent_version": "probe",
            "capabilities": pb.Capabilities(
                gpu_model="probe",
                gpu_count=1,
                gpu_memory_mib=gpu_memory_mib,
                runtimes=list(runtimes),
            ),
            "policy": policy if policy is not None else pb.OwnerPolicy(),
        }
        base.update(fields)
        return pb.Hello(**base)

    async def open(self) -> None:
        """Opens the stream without sending anything (to test what comes first)."""
        self.call = self.stub.Connect()

    async def send(self, msg: pb.CarMessage) -> None:
        """Sends one message."""
        await self.call.write(msg)

    async def telemetry(self, **fields: Any) -> None:
        """Sends telemetry (parked and plugged in unless overridden)."""
        await self.send(pb.CarMessage(telemetry=parked_telemetry(**fields)))

    async def recv(self) -> pb.GatewayMessage | None:
        """The next gateway message; None at the end of the stream.

        Raises:
            grpc.aio.AioRpcError: The stream ended with an error status.
        """
        msg = await self.call.read()
        if msg is grpc.aio.EOF:
            return None
        assert isinstance(msg, pb.GatewayMessage)
        return msg

    async def status(self) -> tuple[grpc.StatusCode, str]:
        """The stream's final status (waits for the end)."""
        code = await self.call.code()
        details = await self.call.details()
        return code, details

    async def close(self) -> None:
        """Ends the stream and the channel."""
        if self.call is not None:
            self.call.cancel()
        await self.channel.close()

    async def work(
        self, checkpoint_every: int = 1, stop_after_items: int | None = None
    ) -> pb.GatewayMessage | None:
        """Answers offers until the stream ends: echoes inputs as outputs.

        Args:
            checkpoint_every: Send a checkpoint after this many result chunks.
            stop_after_items: Stop answering (return the next unhandled message) once
                this many items were returned; None runs until the stream ends.

        Returns:
            None at the end of the stream, else the message it stopped at.
        """
        outputs: dict[str, tuple[str, ...]] = {}
        chunks = 0
        items = 0
        while True:
            msg = await self.recv()
            if msg is None:
                return None
            kind = msg.WhichOneof("body")
            if stop_after_items is not None and items >= stop_after_items:
                return msg
            if kind == "offer":
                o = msg.offer
                outputs[o.task_id] = tuple(o.output_names)
                await self.send(
                    pb.CarMessage(accept=pb.TaskAccept(task_id=o.task_id, attempt=o.attempt))
                )
            elif kind == "input":
                c = msg.input
                tensors = [
                    pb.NamedTensor(
                        name=name, dtype=c.tensor.dtype, dims=c.tensor.dims, data=c.tensor.data
                    )
                    for name in outputs.get(c.task_id, ())
                ]
                n = c.tensor.dims[0] if c.tensor.dims else 0
                await self.send(
                    pb.CarMessage(
                        result=pb.ResultChunk(
                            task_id=c.task_id,
                            attempt=c.attempt,
                            first_item=c.first_item,
                            outputs=tensors,
                        )
                    )
                )
                items += n
                chunks += 1
                if chunks % checkpoint_every == 0 or c.last:
                    await self.send(
                        pb.CarMessage(
                            checkpoint=pb.TaskCheckpoint(
                                task_id=c.task_id, attempt=c.attempt, next_item=c.first_item + n
                            )
                        )
                    )
                if c.last:
                    await self.send(
                        pb.CarMessage(
                            done=pb.TaskDone(
                                task_id=c.task_id,
                                attempt=c.attempt,
                                items=c.first_item + n,
                                energy_wh=0.01,
                                energy_modelled=True,
                            )
                        )
                    )
            elif kind == "cancel":
                outputs.pop(msg.cancel.task_id, None)

    async def __aenter__(self) -> ProbeCar:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def wait_until(predicate: Any, timeout_s: float = 10.0, step_s: float = 0.01) -> None:
    """Polls ``predicate()`` until true (bounded); raises TimeoutError otherwise."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(step_s)

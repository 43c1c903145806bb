"""A dishonest car for tests: the real protocol code, saying whatever a malicious car would.

It is a :class:`~tests.carlink_probe.ProbeCar` (a real mTLS stream with a real fleet
certificate) with the attacks of ``docs/security.md`` as methods: claims out of range,
a fatal-sounding failure for every offer, forged figures, results shaped to exhaust the
gateway. Each attack is one message or a short sequence; what the gateway does about it
is for the tests to check.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np

from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol.chunks import serialize
from tests.carlink_probe import ProbeCar
from tests.protowire import delimited

__all__ = ["RogueCar", "dims_bomb"]

_CONNECT = "/parkfleet.carlink.v1.CarLink/Connect"


def dims_bomb(dims_bytes: int = 2**21) -> bytes:
    """A CarMessage (as bytes: no encoder writes it) whose result has one output, ``y``,
    with ``dims_bytes`` of packed dims, each a 1 (the decoding test's bomb)."""
    tensor = delimited(1, b"y") + delimited(3, b"\x01" * dims_bytes)
    return delimited(7, delimited(1, b"t") + delimited(4, tensor))


class RogueCar(ProbeCar):
    """A car that lies (see the module docstring)."""

    async def offer(self) -> pb.TaskOffer:
        """Reads until the next offer."""
        while True:
            msg = await self.recv()
            if msg is None:
                raise EOFError("the stream ended before an offer")
            if msg.WhichOneof("body") == "offer":
                return msg.offer

    async def accept(self, offer: pb.TaskOffer) -> None:
        """Takes the offer (to hold the task, or to fail it)."""
        await self.send(
            pb.CarMessage(accept=pb.TaskAccept(task_id=offer.task_id, attempt=offer.attempt))
        )

    async def fail(
        self,
        offer: pb.TaskOffer,
        reason: str = "ModelHashMismatch",
        message: str = "the model is corrupt",
        *,
        retriable: bool = False,
        energy_wh: float = 0.0,
    ) -> None:
        """Answers with a failure that, taken at its word, would fail the whole job."""
        await self.send(
            pb.CarMessage(
                failed=pb.TaskFailed(
                    task_id=offer.task_id,
                    attempt=offer.attempt,
                    reason=reason,
                    message=message,
                    retriable=retriable,
                    energy_wh=energy_wh,
                )
            )
        )

    async def done(self, offer: pb.TaskOffer, **fields: Any) -> None:
        """Claims the task done (with whatever figures ``fields`` forge)."""
        await self.send(
            pb.CarMessage(done=pb.TaskDone(task_id=offer.task_id, attempt=offer.attempt, **fields))
        )

    async def result(
        self, offer: pb.TaskOffer, first_item: int, outputs: dict[str, np.ndarray]
    ) -> None:
        """Sends results of its choosing (any shape, any dtype) for ``first_item`` on."""
        tensors = [
            pb.NamedTensor(
                name=name,
                dtype=pb.FLOAT32,
                dims=list(array.shape),
                data=np.ascontiguousarray(array, dtype="<f4").tobytes(),
            )
            for name, array in outputs.items()
        ]
        await self.send(
            pb.CarMessage(
                result=pb.ResultChunk(
                    task_id=offer.task_id,
                    attempt=offer.attempt,
                    first_item=first_item,
                    outputs=tensors,
                )
            )
        )

    async def lie(self, value: float = -1.0) -> None:
        """Answers every offer, until the stream ends, with well-formed wrong results:
        ``value`` for every item of every output asked for (shape ``[items, 1]``)."""
        while True:
            try:
                offer = await self.offer()
            except EOFError:
                return
            await self.accept(offer)
            n = offer.item_end - offer.resume_from
            wrong = np.full((n, 1), value, np.float32)
            await self.result(offer, offer.resume_from, dict.fromkeys(offer.output_names, wrong))
            await self.done(offer, items=offer.item_end)

    async def bomb(self, payload: bytes) -> tuple[grpc.StatusCode, str]:
        """One new stream on this car's channel: Hello, then ``payload`` as it is; returns
        the status the gateway ended the stream with."""
        call = self.channel.stream_stream(
            _CONNECT,
            request_serializer=serialize,
            response_deserializer=pb.GatewayMessage.FromString,
        )()
        try:
            await call.write(pb.CarMessage(hello=self.hello()).SerializeToString())
            await call.read()  # Welcome
            await call.write(payload)
            while await call.read() is not grpc.aio.EOF:
                pass
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the status below says why the stream ended
        code: grpc.StatusCode = await call.code()
        return code, await call.details() or ""

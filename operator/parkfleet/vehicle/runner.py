"""Runs one task on the car: inputs in, batched inference, results out, in item order.

The link hands the runner the task's ``InputChunk`` messages; the runner infers them
(in the compute's thread pool, several batches per hop), and queues ``ResultChunk``
messages in item order on the link's single outbound queue. While one slice runs, the
next one (from inputs already received) waits at the model, so the model does not idle
while the event loop decodes inputs and encodes results. Because that queue is FIFO, a
``TaskCheckpoint(next_item)`` queued after the results covers only items whose results
are already on their way. The task ends with ``TaskDone``, or ``TaskFailed`` (retriable
when the car stops because its policy or its link says so). Inputs and outputs live in
memory only.

A chunk carries one tensor per model input (the offer names them); each is checked (names,
items, dtypes as the model declares) before it runs. Small chunks are merged into larger
slices; chunks whose inputs differ in length past the first dimension (a text's tokens,
padded per chunk by the gateway) are merged only up to one batch, padded with zeros to the
longest, so that padding stays per batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np

from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol import limits
from parkfleet.protocol.chunks import InputData, encode_result
from parkfleet.protocol.padding import pad_concat, same_item_shape
from parkfleet.vehicle.compute import InferenceFailed, ModelSession
from parkfleet.vehicle.energy import EnergyMeter

__all__ = [
    "RESULT_CHUNK_BYTES",
    "InputError",
    "StopRequest",
    "TaskOutcome",
    "TaskRunner",
]

log = logging.getLogger(__name__)

# Results are sent in chunks of about this many bytes (well below MAX_TENSOR_BYTES).
RESULT_CHUNK_BYTES = 1024 * 1024
# Batches per inference call: big enough to keep the GPU busy, small enough that a
# stop or a checkpoint waits at most one slice.
SLICE_BATCHES = 8
# Slices of a cheap model grow (doubling, in whole batches, up to MAX_ITEMS_PER_HOP) while
# one takes less than half of this, so that the executor hop is paid rarely; a slice never
# gets smaller than SLICE_BATCHES batches.
SLICE_TARGET_S = 0.05
# Items handed to one executor hop at most: enough to amortise the hop, small enough to
# stop promptly when the policy says so.
MAX_ITEMS_PER_HOP = 16384
# Chunks at least this large go to inference alone: merging them would only copy.
MERGE_BELOW_ITEMS = 4096
# Slices handed to the model at once: one running, one queued behind it (inputs that are
# already here only; the runner never waits for inputs while results are ready).
PIPELINE_DEPTH = 2
# Input chunks buffered per task (up to ~3 MiB each); when full the link stops reading,
# and gRPC flow control holds the gateway back.
INPUT_QUEUE_CHUNKS = 8

# Messages, or result chunks already encoded (parkfleet.protocol.chunks).
Send = Callable[[pb.CarMessage | bytes], Awaitable[None]]
# An input chunk: as protobuf parsed it, or with its tensor viewing the received bytes.
Input = pb.InputChunk | InputData
# A chunk's inputs, decoded and checked: input name -> items (in the offer's order).
Inputs = dict[str, np.ndarray]


def _items(inputs: Inputs) -> int:
    return int(next(iter(inputs.values())).shape[0])


def _merged(parts: list[Inputs]) -> Inputs:
    """Chunks' inputs one after the other, padded with zeros to the longest where they differ."""
    if len(parts) == 1:
        return parts[0]
    try:
        return {name: pad_concat([p[name] for p in parts]) for name in parts[0]}
    except ValueError as e:  # another dtype or number of dims than the chunk before
        raise InputError(f"input chunks do not fit together: {e}") from None


def _same_shapes(a: Inputs, b: Inputs) -> bool:
    return all(same_item_shape([a[name], b[name]]) for name in a)


class InputError(Exception):
    """The gateway's inputs do not fit the offer (order, range, shape)."""


@dataclass(frozen=True)
class StopRequest:
    """Why a running task must stop.

    Attributes:
        reason: CamelCase reason for ``TaskFailed`` (e.g. ``NotPluggedIn``).
        message: Human-readable text.
        retriable: Whether another car may finish it.
        report: Send ``TaskFailed`` (False for a gateway cancel, which needs no answer).
    """

    reason: str
    message: str
    retriable: bool = True
    report: bool = True


@dataclass(frozen=True)
class TaskOutcome:
    """How a task ended (for the agent's counters and the simulator).

    Attributes:
        done: True when every item was delivered.
        reason: "" when done, else the failure reason.
        next_item: Every item before this has its result delivered.
        energy_wh: Energy the task used.
        energy_modelled: True when the energy is modelled, not measured.
    """

    done: bool
    reason: str
    next_item: int
    energy_wh: float
    energy_modelled: bool


async def _cancel_hops(hops: Sequence[asyncio.Future[list[np.ndarray]]], task_id: str) -> None:
    """Cancels slices at the model and waits until they are over (a cancel of the caller
    while it waits still stops the caller)."""
    for hop in hops:
        hop.cancel()
    if not hops:
        return
    await asyncio.wait(hops)
    for hop in hops:
        if hop.cancelled():
            continue
        e = hop.exception()
        if isinstance(e, InferenceFailed):
            log.info("task %s: a slice failed while the task stopped: %s", task_id, e)
        elif e is not None:
            log.error("task %s: a slice failed while the task stopped", task_id, exc_info=e)


class TaskRunner:
    """One task: feed it input chunks, run it, await its outcome.

    Args:
        offer: The accepted offer.
        send: Queues a message on the link (FIFO with everything else the car sends).
        meter: Energy meter for this task.
        clock: Monotonic seconds.
        on_energy: Called with each new increment of energy (the daily budget counts it).
    """

    def __init__(
        self,
        offer: pb.TaskOffer,
        send: Send,
        meter: EnergyMeter,
        clock: Callable[[], float] = time.monotonic,
        on_energy: Callable[[float], None] | None = None,
    ) -> None:
        self.offer = offer
        self.task_id = offer.task_id
        self.attempt = offer.attempt
        self._send = send
        self._meter = meter
        self._clock = clock
        self._on_energy = on_energy
        self._inputs: asyncio.Queue[Input | None] = asyncio.Queue(INPUT_QUEUE_CHUNKS)
        self._stop: StopRequest | None = None
        self._received_last = False
        self._next_input = offer.resume_from
        # Inputs taken from the queue: the chunk being sliced and where its next slice starts.
        self._held: Input | None = None
        # A chunk decoded but not merged (its inputs' lengths differ), and whether it is last.
        self._spilled: tuple[Inputs, bool] | None = None
        self._chunk: Inputs | None = None
        self._chunk_items = 0
        self._pos = 0
        # Set when the run starts: the inputs fed, and their types as the model declares.
        self._names: list[str] = list(offer.input_names) or [offer.input_name]
        self._types: dict[str, str] = {}
        self._taken_last = False
        self.sent_upto = offer.resume_from
        self.items_done = 0
        self._energy_reported_wh = 0.0

    # ---- fed by the link ---------------------------------------------------------

    async def feed(self, chunk: Input) -> None:
        """Queues an input chunk (waits while the buffer is full: that is backpressure)."""
        if self._stop is not None or self._received_last:
            return  # stopping: later inputs are dropped
        if chunk.last:
            self._received_last = True
        await self._inputs.put(chunk)

    def request_stop(self, stop: StopRequest) -> None:
        """Asks the task to stop after the current hop; the first request wins."""
        if self._stop is None:
            self._stop = stop
        # Wake the loop if it waits for inputs; drop queued inputs so feed() never blocks.
        while not self._inputs.empty():
            self._inputs.get_nowait()
        self._inputs.put_nowait(None)

    # ---- messages ----------------------------------------------------------------

    async def _log(self, *lines: str) -> None:
        await self._send(
            pb.CarMessage(
                log=pb.TaskLog(task_id=self.task_id, attempt=self.attempt, lines=list(lines))
            )
        )

    def _energy(self) -> tuple[float, bool]:
        reading = self._meter.reading()
        if self._on_energy is not None and reading.wh > self._energy_reported_wh:
            self._on_energy(reading.wh - self._energy_reported_wh)
            self._energy_reported_wh = reading.wh
        return reading.wh, reading.modelled

    async def _fail(self, reason: str, message: str, retriable: bool) -> TaskOutcome:
        wh, modelled = self._energy()
        await self._send(
            pb.CarMessage(
                failed=pb.TaskFailed(
                    task_id=self.task_id,
                    attempt=self.attempt,
                    reason=reason,
                    message=message[: limits.MAX_LOG_LINE_CHARS],
                    retriable=retriable,
                    next_item=self.sent_upto,
                    energy_wh=wh,
                    energy_modelled=modelled,
                )
            )
        )
        return TaskOutcome(False, reason, self.sent_upto, wh, modelled)

    async def abort(self, reason: str, message: str, retriable: bool) -> TaskOutcome:
        """Reports the task failed where it stands: it cannot start (e.g.
        ``ModelHashMismatch``), or the agent failed while running it."""
        self.request_stop(StopRequest(reason, message, retriable, report=False))
        return await self._fail(reason, message, retriable)

    # ---- the run -----------------------------------------------------------------

    def _take_inputs(self, first: Inputs, last: bool) -> None:
        """Takes ``first`` plus whatever small chunks are already queued, merged: while
        their inputs agree in shape, up to ``MERGE_BELOW_ITEMS``; padded to the longest,
        up to one batch (a chunk that would pass it waits for the next round)."""
        parts = [first]
        count = _items(first)
        limit = min(MERGE_BELOW_ITEMS, MAX_ITEMS_PER_HOP)
        batch = self.offer.batch_size or 1
        while not last and count < limit and not self._inputs.empty():
            chunk = self._inputs.get_nowait()
            if chunk is None:
                self._inputs.put_nowait(None)  # keep the wake-up for the next round
                break
            inputs = self._decode(chunk)
            n = _items(inputs)
            if not _same_shapes(first, inputs):
                if count + n > batch:
                    self._spilled = (inputs, chunk.last)
                    break
                limit = batch  # padded together: one model call at most
            parts.append(inputs)
            count += n
            last = chunk.last
        self._chunk = _merged(parts)
        self._chunk_items = count
        self._pos = 0
        self._taken_last = last

    def _next_chunk(self) -> tuple[Inputs, bool] | None:
        """The next chunk's inputs (and whether it is the last) from what is already here."""
        if self._spilled is not None:
            spilled, self._spilled = self._spilled, None
            return spilled
        first = self._held
        self._held = None
        if first is None:
            if self._inputs.empty():
                return None
            first = self._inputs.get_nowait()
        if first is None:  # the stop's wake-up
            return None
        return self._decode(first), first.last

    def _slice_ready(self, step: int) -> Inputs | None:
        """The next slice of at most ``step`` items from inputs already here, else None."""
        chunk = self._chunk
        if chunk is None or self._pos >= self._chunk_items:
            if self._taken_last:
                return None
            taken = self._next_chunk()
            if taken is None:
                return None
            self._take_inputs(*taken)
            chunk = self._chunk
            assert chunk is not None
        end = min(self._pos + step, self._chunk_items)
        x = {name: a[self._pos : end] for name, a in chunk.items()}
        self._pos = end
        return x

    async def _wait_inputs(self) -> None:
        """Waits until an input chunk (or a stop's wake-up) has arrived."""
        if self._held is None and self._spilled is None:
            self._held = await self._inputs.get()

    def _decode(self, chunk: Input) -> Inputs:
        """A chunk's inputs, checked: the offer's names, one item count, the model's types."""
        if chunk.first_item != self._next_input:
            raise InputError(
                f"input chunk starts at item {chunk.first_item}, expected {self._next_input}"
            )
        names = self._names
        tensors = list(chain((chunk.tensor,), chunk.more))
        if len(tensors) != len(names):
            raise InputError(
                f"input chunk carries {len(tensors)} input(s), the offer's are "
                f"{', '.join(map(repr, names))}"
            )
        got: Inputs = {}
        for t in tensors:
            # A one-input chunk may leave its tensor unnamed (older gateways).
            name = t.name or (names[0] if len(names) == 1 else "")
            if name not in names or name in got:
                raise InputError(
                    f"input chunk names tensor {t.name!r}"
                    + (" twice" if name in got else "")
                    + f", the offer's inputs are {', '.join(map(repr, names))}"
                )
            try:
                arr = limits.tensor_from_proto(t)
            except limits.ProtocolViolation as e:
                raise InputError(str(e)) from None
            if arr.ndim < 1 or arr.shape[0] == 0:
                raise InputError(f"input chunk carries no items of {name!r}")
            want = self._types.get(name, "")
            if want and arr.dtype != np.dtype(want):
                raise InputError(f"input {name!r} is {arr.dtype.name}; the model takes {want}")
            got[name] = arr
        inputs = {name: got[name] for name in names}
        counts = {name: a.shape[0] for name, a in inputs.items()}
        n = counts[names[0]]
        if any(c != n for c in counts.values()):
            raise InputError(f"input chunk's inputs disagree on the number of items: {counts}")
        self._next_input += n
        if self._next_input > self.offer.item_end:
            raise InputError(
                f"inputs run to item {self._next_input}, past the task's end {self.offer.item_end}"
            )
        if chunk.last and self._next_input != self.offer.item_end:
            raise InputError(
                f"last input chunk ends at item {self._next_input}, "
                f"the task ends at {self.offer.item_end}"
            )
        return inputs

    async def run(self, session: ModelSession, output_names: Sequence[str]) -> TaskOutcome:
        """Runs the task to its end or until stopped.

        Args:
            session: The loaded, verified model.
            output_names: Outputs to return (the offer's, or the model's when it names none).

        Returns:
            How it ended; the matching ``TaskDone``/``TaskFailed`` was already sent.
        """
        offer = self.offer
        names = list(output_names)
        self._types = session.input_types
        if self._names == [""] and self._types:
            self._names = [next(iter(self._types))]  # the offer names none: the model's first
        started = self._clock()
        interval = offer.checkpoint_interval_s if offer.checkpoint_interval_s > 0 else 5.0
        next_checkpoint = started + interval
        pending: list[list[np.ndarray]] = [[] for _ in names]
        pending_items = 0
        per_item_bytes = 0
        await self._log(
            f"task {self.task_id} attempt {self.attempt}: items "
            f"[{offer.resume_from}, {offer.item_end}) batch {offer.batch_size} "
            f"on {','.join(session.providers)}"
        )

        async def flush() -> None:
            nonlocal pending, pending_items
            if pending_items == 0:
                return
            # Outputs whose length follows a text's are padded like its inputs.
            outs = [pad_concat(p) for p in pending]
            per_message = max(1, RESULT_CHUNK_BYTES // max(1, per_item_bytes))
            for start in range(0, pending_items, per_message):
                end = min(pending_items, start + per_message)
                # Encoded straight to the wire: each output is copied once.
                await self._send(
                    encode_result(
                        self.task_id,
                        self.attempt,
                        self.sent_upto,
                        [(n, o[start:end]) for n, o in zip(names, outs, strict=True)],
                    )
                )
                self.sent_upto += end - start
            pending = [[] for _ in names]
            pending_items = 0

        async def checkpoint(now: float) -> None:
            await flush()
            await self._send(
                pb.CarMessage(
                    checkpoint=pb.TaskCheckpoint(
                        task_id=self.task_id, attempt=self.attempt, next_item=self.sent_upto
                    )
                )
            )
            elapsed = max(1e-9, now - started)
            await self._send(
                pb.CarMessage(
                    progress=pb.TaskProgress(
                        task_id=self.task_id,
                        attempt=self.attempt,
                        items_done=self.sent_upto,
                        items_per_second=self.items_done / elapsed,
                    )
                )
            )
            self._energy()

        batch = offer.batch_size or 1
        step = max(1, batch * SLICE_BATCHES)
        max_step = max(step, MAX_ITEMS_PER_HOP - MAX_ITEMS_PER_HOP % batch)
        # Slices at the model: the hop, its items, when it was handed over.
        inflight: deque[tuple[asyncio.Task[list[np.ndarray]], int, float]] = deque()
        last_done = started

        async def collect() -> None:
            nonlocal pending_items, per_item_bytes, next_checkpoint, step, last_done
            hop, n, handed = inflight.popleft()
            outs = await hop
            done_at = self._clock()
            # It ran from when it was handed over, or when the one before it finished.
            ran = done_at - max(handed, last_done)
            last_done = done_at
            if n == step < max_step and ran < SLICE_TARGET_S / 2:
                step = min(2 * step, max_step)
            if len(outs) != len(names) or any(o.shape[0] != n for o in outs):
                raise InputError("the model's outputs do not have one row per item")
            if per_item_bytes == 0:
                per_item_bytes = sum(o[:1].nbytes for o in outs)
            for acc, out in zip(pending, outs, strict=True):
                acc.append(out)
            pending_items += n
            self.items_done += n
            if pending_items * per_item_bytes >= RESULT_CHUNK_BYTES:
                await flush()
            now = self._clock()
            if now >= next_checkpoint:
                await checkpoint(now)
                next_checkpoint = now + interval

        async def settle() -> None:
            """After an error: results of slices that still finish are kept, then flushed."""
            while inflight:
                try:
                    await collect()
                except (InputError, InferenceFailed) as e:  # the first error is the one reported
                    log.info("task %s: a later slice failed too: %s", self.task_id, e)
                    for hop, _, _ in inflight:
                        hop.cancel()
                    inflight.clear()
            await flush()

        if offer.resume_from >= offer.item_end:
            self._received_last = True
            self._taken_last = True
        try:
            while True:
                if self._stop is not None:
                    # Stop after the slice that ran when the stop came: those behind it
                    # are dropped (their items go to the next car) unless already done.
                    done = 0
                    while done < len(inflight) and inflight[done][0].done():
                        done += 1
                    while len(inflight) > done:
                        inflight.pop()[0].cancel()
                # An input chunk can hold thousands of items: work through it a slice at a
                # time so that a stop, a checkpoint and results come between slices. Up
                # to PIPELINE_DEPTH slices of inputs already here go to the model at once.
                while self._stop is None and len(inflight) < PIPELINE_DEPTH:
                    x = self._slice_ready(step)
                    if x is None:
                        break
                    hop = asyncio.ensure_future(session.infer(x, names, batch))
                    inflight.append((hop, _items(x), self._clock()))
                if inflight:
                    await collect()
                    continue
                if self._stop is not None or self._taken_last:
                    break
                await self._wait_inputs()
        except InputError as e:
            await settle()
            return await self._fail("InvalidInput", str(e), retriable=False)
        except InferenceFailed as e:  # this car cannot do it, another might
            log.warning("task %s failed: %s", self.task_id, e)
            await settle()
            return await self._fail("InferenceError", str(e), True)
        finally:
            # Slices still at the model only when the runner is cancelled or failed itself.
            await _cancel_hops([hop for hop, _, _ in inflight], self.task_id)

        await flush()
        stop = self._stop
        if stop is not None:
            if not stop.report:
                wh, modelled = self._energy()
                return TaskOutcome(False, stop.reason, self.sent_upto, wh, modelled)
            await self._send(
                pb.CarMessage(
                    checkpoint=pb.TaskCheckpoint(
                        task_id=self.task_id, attempt=self.attempt, next_item=self.sent_upto
                    )
                )
            )
            return await self._fail(stop.reason, stop.message, stop.retriable)
        wh, modelled = self._energy()
        seconds = self._clock() - started
        # The log goes before TaskDone: after it the gateway forgets the task.
        await self._log(
            f"task {self.task_id} done: {self.items_done} items in {seconds:.2f}s, "
            f"{wh:.4f} Wh{' (modelled)' if modelled else ''}"
        )
        await self._send(
            pb.CarMessage(
                checkpoint=pb.TaskCheckpoint(
                    task_id=self.task_id, attempt=self.attempt, next_item=self.sent_upto
                )
            )
        )
        await self._send(
            pb.CarMessage(
                done=pb.TaskDone(
                    task_id=self.task_id,
                    attempt=self.attempt,
                    items=self.sent_upto - offer.resume_from,
                    energy_wh=wh,
                    energy_modelled=modelled,
                    seconds=seconds,
                )
            )
        )
        return TaskOutcome(True, "", self.sent_upto, wh, modelled)

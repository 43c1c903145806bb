"""The car's end of the car link: connect, hello, telemetry, tasks, reconnect.

``Agent.run()`` keeps one mTLS stream to the gateway open: it sends ``Hello``, waits for
``Welcome`` (or follows a ``Redirect``), then sends telemetry every period and answers
task offers. It enforces the owner's policy itself (decision 6): it refuses offers the
policy forbids and stops a running task within one telemetry period once the policy turns
work off. The owner's consent (a settings file re-read every period, or ``set_consent``)
is part of that policy: paused stops work at once; withdrawn also tells the gateway and
ends ``run()`` with ``Withdrawn``, for good. A lost stream is retried with jittered
exponential backoff; a refusal the car cannot fix by retrying (bad identity, wrong
protocol version) ends ``run()`` with ``LinkRefused``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from parkfleet import __version__
from parkfleet.backoff import Backoff
from parkfleet.energymodel import CarPower
from parkfleet.policy import Conditions, Eligibility, Policy
from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol import carlink_pb2_grpc, limits
from parkfleet.protocol.chunks import InputData, decode_gateway_message, serialize
from parkfleet.protocol.claims import MAX_EXPECTED_STAY_S
from parkfleet.protocol.consent import ConsentName, consent_name, consent_value
from parkfleet.vehicle.compute import Compute, ModelLoadError
from parkfleet.vehicle.consentfile import ConsentFile
from parkfleet.vehicle.energy import DailyEnergy, EnergyMeter, PowerReader
from parkfleet.vehicle.metrics import AgentMetrics
from parkfleet.vehicle.modelcache import (
    ModelCache,
    ModelFetchError,
    ModelHashMismatch,
    from_gateway,
)
from parkfleet.vehicle.runner import StopRequest, TaskOutcome, TaskRunner
from parkfleet.vehicle.sensors import SensorReading, Sensors

__all__ = [
    "REASON_AGENT_ERROR",
    "REASON_MODEL_SOURCE",
    "RUNTIME",
    "Agent",
    "AgentConfig",
    "Credentials",
    "GaveUp",
    "LinkRefused",
    "TaskRecord",
    "Withdrawn",
    "capabilities",
]

log = logging.getLogger(__name__)

RUNTIME = "onnxruntime"
# TaskFailed reason when the agent itself failed (a bug), not the model or the inputs.
REASON_AGENT_ERROR = "AgentError"
# TaskRefuse reason for an offer whose model is not on the gateway: a car fetches models
# only from its gateway, by hash (decision 5). Fixed text: nothing of the offer is echoed.
REASON_MODEL_SOURCE = "UnsupportedModelSource"
_MODEL_SOURCE_MESSAGE = "this car fetches models only from its gateway, by sha256"
# Messages queued for the stream; results are ~1 MiB each, so this bounds memory too.
OUTBOUND_QUEUE = 32
# The stream's method: its codec (parkfleet.protocol.chunks) passes encoded result chunks
# through and reads input chunks without copying their tensors; otherwise it is protobuf.
_CONNECT = f"/{pb.DESCRIPTOR.services_by_name['CarLink'].full_name}/Connect"
# Status codes a retry cannot fix: the car's identity or version is wrong.
_FATAL = frozenset(
    {
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)


class LinkRefused(Exception):
    """The gateway refused this car for a reason retrying cannot fix."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class GaveUp(Exception):
    """The reconnect attempts are spent."""


class Withdrawn(Exception):
    """The car's owner withdrew it from the fleet: the link ends for good."""

    def __init__(self, car_id: str) -> None:
        super().__init__(f"car {car_id or '?'}: its owner withdrew it from the fleet")
        self.car_id = car_id


@dataclass(frozen=True)
class TaskRecord:
    """A task this car ran, as it ended.

    Attributes:
        task_id: The task.
        attempt: The attempt it ran as.
        outcome: How it ended.
        telemetry_sent: Telemetry messages the agent had sent when it ended (a logical
            clock: tests check a policy stop lands within one telemetry period).
    """

    task_id: str
    attempt: int
    outcome: TaskOutcome
    telemetry_sent: int


class _StreamEnded(Exception):
    """The gateway closed the stream (cleanly or not); reconnect."""


# How the stream's writer, reader and telemetry end when the stream does: a write after
# the call finished raises InvalidStateError; sends without a stream raise _StreamEnded.
_LINK_ENDED = (_StreamEnded, asyncio.InvalidStateError)


@dataclass(frozen=True)
class Credentials:
    """The car's mTLS material, PEM.

    Attributes:
        ca_pem: The fleet CA (to verify the gateway).
        cert_pem: The car's client certificate.
        key_pem: The car's private key.
        cert_path: The certificate's file, re-read at each connection (a renewed
            certificate is used from the next one on); None: never re-read.
        key_path: The key's file, re-read with it.
    """

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    cert_path: Path | None = None
    key_path: Path | None = None

    def reloaded(self) -> Credentials:
        """The certificate and key as their files hold them now (``parkfleet certs renew``
        replaced them), or these when unchanged, unreadable or not from files. Blocking:
        call it in a thread."""
        if self.cert_path is None or self.key_path is None:
            return self
        try:
            key = self.key_path.read_bytes()
            cert = self.cert_path.read_bytes()
        except OSError:
            return self
        if cert == self.cert_pem and key == self.key_pem:
            return self
        return dataclasses.replace(self, cert_pem=cert, key_pem=key)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """gRPC credentials presenting the car's certificate."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem,
            private_key=self.key_pem,
            certificate_chain=self.cert_pem,
        )


@dataclass
class AgentConfig:
    """How an agent connects and what it says about itself.

    Attributes:
        address: The gateway, ``host:port``.
        credentials: The car's certificate and the fleet CA.
        car_id: The id in the certificate (sent in Hello as a consistency check; "" = omit).
        policy: The owner's policy, enforced here and sent in Hello.
        capabilities: What the car has.
        telemetry_interval_s: Telemetry period until the gateway's Welcome says otherwise.
        backoff_base_s: First reconnect delay bound.
        backoff_cap_s: Largest reconnect delay.
        max_reconnects: Reconnect attempts in a row before giving up (None = forever).
        max_tasks: Tasks run at once.
        channel_options: Extra gRPC channel options (on top of the protocol's).
        server_name_override: TLS name to expect from the gateway (tests, IP-less certs).
        consent_file: The owner's consent in the car's settings
            (``vehicle/consentfile.py``), re-read every telemetry period; None: active
            unless ``Agent.set_consent`` says otherwise.
    """

    address: str
    credentials: Credentials
    policy: Policy
    capabilities: pb.Capabilities
    car_id: str = ""
    telemetry_interval_s: float = 10.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    max_reconnects: int | None = None
    max_tasks: int = 1
    channel_options: Sequence[tuple[str, int | str]] = field(default_factory=tuple)
    server_name_override: str = ""
    consent_file: Path | None = None


def capabilities(
    gpu_model: str, gpu_memory_mib: int, power: CarPower, providers: list[str]
) -> pb.Capabilities:
    """What a car offers, for its Hello (with its power model: the gateway's own
    energy account of the car's tasks is kept with it)."""
    return pb.Capabilities(
        gpu_model=gpu_model,
        gpu_count=1,
        gpu_memory_mib=gpu_memory_mib,
        runtimes=[RUNTIME],
        execution_providers=providers,
        gpu_power_w=power.gpu_power_w,
        awake_base_w=power.awake_base_w,
        charging_efficiency=power.charging_efficiency,
    )


def _telemetry(
    reading: SensorReading, energy_today_wh: float, consent: pb.Consent.ValueType
) -> pb.Telemetry:
    return pb.Telemetry(
        state=pb.PARKED if reading.parked else pb.DRIVING,
        plugged_in=reading.plugged_in,
        soc_percent=min(100.0, max(0.0, reading.soc_percent)),
        gpu_temp_c=reading.gpu_temp_c,
        free_gpu_memory_mib=max(0, reading.free_gpu_memory_mib),
        link_quality=min(1.0, max(0.0, reading.link_quality)),
        energy_used_today_wh=energy_today_wh,
        unix_time_ms=reading.unix_time_ms,
        consent=consent,
        # Only while parked; bounded as the gateway checks it (a claim out of range
        # would close the stream).
        expected_stay_s=(
            min(MAX_EXPECTED_STAY_S, max(0.0, reading.expected_stay_s)) if reading.parked else 0.0
        ),
    )


class Agent:
    """One car's agent.

    Args:
        config: Connection and identity settings.
        sensors: Where telemetry comes from.
        compute: Runs models (ONNX Runtime, possibly shared with other agents).
        models: Model cache (a private in-memory one by default).
        metrics: Counters (a private registry by default).
        power_reader: Measured GPU power, when the car has a sensor for it.
        rng: Random source for backoff jitter.
    """

    def __init__(
        self,
        config: AgentConfig,
        sensors: Sensors,
        compute: Compute,
        models: ModelCache | None = None,
        metrics: AgentMetrics | None = None,
        power_reader: PowerReader | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.address = config.address
        self.sensors = sensors
        self.compute = compute
        self.models = models if models is not None else ModelCache()
        self.metrics = metrics if metrics is not None else AgentMetrics()
        self._power_reader = power_reader
        self._power = CarPower.from_capabilities(config.capabilities)
        self._backoff = Backoff(
            base_s=config.backoff_base_s,
            cap_s=config.backoff_cap_s,
            max_attempts=config.max_reconnects,
            rng=rng or random.Random(),
        )
        self._credentials = config.credentials
        self._eligibility = Eligibility(config.policy)
        self._daily = DailyEnergy(config.policy.local_day)
        self._tasks: dict[str, TaskRunner] = {}
        self._task_handles: set[asyncio.Task[None]] = set()
        self._outbound: asyncio.Queue[pb.CarMessage | bytes] | None = None
        self._stopping = asyncio.Event()
        self._telemetry_interval = config.telemetry_interval_s
        self._telemetry_kick = asyncio.Event()
        self._consent_file = ConsentFile(config.consent_file) if config.consent_file else None
        self._consent: pb.Consent.ValueType = pb.CONSENT_ACTIVE
        # The gateway was told of a withdrawal (or refused the car after one): final.
        self._withdrawn = False
        #: Set while a stream is up (after Welcome).
        self.connected = asyncio.Event()
        #: Recent tasks as they ended, newest last (for tests and the simulator).
        self.outcomes: deque[TaskRecord] = deque(maxlen=64)
        #: Telemetry messages sent so far.
        self.telemetry_sent = 0
        #: Recent refusals as (task_id, reason).
        self.refusals: deque[tuple[str, str]] = deque(maxlen=64)

    # ---- public ------------------------------------------------------------------

    @property
    def running_tasks(self) -> list[str]:
        """Ids of the tasks running now."""
        return list(self._tasks)

    def stop(self) -> None:
        """Asks ``run()`` to end: running tasks stop (retriable) and the stream closes."""
        self._stopping.set()

    def kick_telemetry(self) -> None:
        """Sends telemetry now instead of at the next period (e.g. the car just moved)."""
        self._telemetry_kick.set()

    @property
    def consent(self) -> ConsentName:
        """The owner's consent as the agent last read it."""
        return consent_name(self._consent)

    def set_consent(self, consent: ConsentName) -> None:
        """The owner's consent, set in-process (the simulator; a car without a consent
        file): takes effect at once, telemetry included. A consent file, when there is
        one, is the owner's setting again from its next read on.
        """
        self._consent = consent_value(consent)
        self.kick_telemetry()

    async def run(self) -> None:
        """Connects and stays connected until ``stop()``.

        Raises:
            Withdrawn: The owner withdrew the car (the gateway was told), or the settings
                said so before it started: it does not connect again.
            LinkRefused: The gateway refused the car for a reason retrying cannot fix.
            GaveUp: ``max_reconnects`` attempts in a row failed.
        """
        await self._read_consent()
        if self._consent == pb.CONSENT_WITHDRAWN:
            raise Withdrawn(self.config.car_id)
        while not self._stopping.is_set():
            try:
                await self._session()
            except LinkRefused:
                if self._withdrawn or self._consent == pb.CONSENT_WITHDRAWN:
                    raise Withdrawn(self.config.car_id) from None
                # Refused (expired, revoked): a renewed certificate on disk may still do.
                if not await self._renewed():
                    raise
                log.info(
                    "car link to %s refused; connecting with the renewed certificate", self.address
                )
                continue
            except (grpc.aio.AioRpcError, _StreamEnded, OSError) as e:
                log.info("car link to %s ended: %s", self.address, e)
            if self._withdrawn:
                raise Withdrawn(self.config.car_id)
            if self._stopping.is_set():
                break
            delay = self._backoff.next_delay()
            if delay is None:
                raise GaveUp(f"gave up on {self.address} after {self._backoff.attempts} tries")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    # ---- one stream --------------------------------------------------------------

    def _hello(self) -> pb.CarMessage:
        return pb.CarMessage(
            hello=pb.Hello(
                protocol_version=limits.PROTOCOL_VERSION,
                agent_version=__version__,
                capabilities=self.config.capabilities,
                policy=self.config.policy.to_proto(),
                car_id=self.config.car_id,
            )
        )

    async def _renewed(self) -> bool:
        """Re-reads the certificate files; whether they hold a new certificate."""
        fresh = await asyncio.to_thread(self._credentials.reloaded)
        changed = fresh is not self._credentials
        self._credentials = fresh
        return changed

    def _channel(self) -> grpc.aio.Channel:
        options: list[tuple[str, int | str]] = list(limits.channel_options())
        # Each car its own connection, even when a simulator runs thousands in one process.
        options.append(("grpc.use_local_subchannel_pool", 1))
        if self.config.server_name_override:
            options.append(("grpc.ssl_target_name_override", self.config.server_name_override))
        options.extend(self.config.channel_options)
        return grpc.aio.secure_channel(
            self.address, self._credentials.channel_credentials(), options=options
        )

    async def _session(self) -> None:
        await self._renewed()  # each connection presents the certificate on disk now
        async with self._channel() as channel:
            stub = carlink_pb2_grpc.CarLinkStub(channel)
            call = channel.stream_stream(
                _CONNECT,
                request_serializer=serialize,
                response_deserializer=decode_gateway_message,
            )()
            self.metrics.connects.inc()
            try:
                await self._converse(stub, call)
            except grpc.aio.AioRpcError as e:
                self._count_disconnect(e.code())
                if e.code() in _FATAL:
                    raise LinkRefused(e.code(), e.details() or "") from None
                raise
            finally:
                call.cancel()

    def _count_disconnect(self, code: grpc.StatusCode) -> None:
        self.metrics.disconnects.labels(code.name).inc()

    async def _converse(
        self, stub: carlink_pb2_grpc.CarLinkStub, call: grpc.aio.StreamStreamCall
    ) -> None:
        await call.write(self._hello())
        first = await call.read()
        if first == grpc.aio.EOF:
            code = await call.code()
            details = await call.details()
            self._count_disconnect(code)
            if code in _FATAL:
                raise LinkRefused(code, details or "")
            raise _StreamEnded(f"closed before welcome: {code.name} {details}")
        kind = first.WhichOneof("body")
        if kind == "redirect":
            self.address = first.redirect.address
            self._backoff.reset()
            raise _StreamEnded(f"redirected to {first.redirect.address}: {first.redirect.reason}")
        if kind != "welcome":
            raise _StreamEnded(f"gateway sent {kind} before welcome")
        if first.welcome.telemetry_interval_s > 0:
            self._telemetry_interval = first.welcome.telemetry_interval_s
        # The gateway's ledger counts the energy of the owner's day too: a restarted agent
        # goes on from its figure, not from 0 (the larger of the two counts).
        self._daily.seed(first.welcome.energy_used_today_wh, self.sensors.read().unix_time_ms)
        self._backoff.reset()

        outbound: asyncio.Queue[pb.CarMessage | bytes] = asyncio.Queue(OUTBOUND_QUEUE)
        self._outbound = outbound
        self.connected.set()
        self.metrics.connected.inc()
        writer = asyncio.create_task(self._write(call, outbound))
        telemetry = asyncio.create_task(self._telemetry_loop())
        reader = asyncio.create_task(self._read(stub, call))
        stopper = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait(
                {writer, telemetry, reader, stopper}, return_when=asyncio.FIRST_COMPLETED
            )
            if stopper.done() or (self._withdrawn and not call.done()):
                await self._wind_down(writer)
            if self._withdrawn:
                # The gateway closes the stream once it has the withdrawal: cancelling
                # first could drop it unread (bounded: an old gateway never closes).
                await asyncio.wait({reader}, timeout=5.0)
        finally:
            self.connected.clear()
            self.metrics.connected.dec()
            for t in (writer, telemetry, reader, stopper):
                t.cancel()
            await self._cancel_tasks()
            self._outbound = None
            results = await asyncio.gather(
                writer, telemetry, reader, stopper, return_exceptions=True
            )
        for name, r in zip(("writer", "telemetry", "reader", "stopper"), results, strict=True):
            if isinstance(r, grpc.aio.AioRpcError):
                raise r
            if isinstance(r, Exception) and not isinstance(r, _LINK_ENDED):
                # A bug: the stream ends (and reconnects with backoff), logged in full.
                log.error("car %s: the link's %s failed", self.config.car_id, name, exc_info=r)
        code = await call.code() if call.done() else grpc.StatusCode.CANCELLED
        details = (await call.details()) if call.done() else "agent closed the stream"
        self._count_disconnect(code)
        if code in _FATAL:
            raise LinkRefused(code, details or "")
        raise _StreamEnded(f"stream ended: {code.name} {details}")

    async def _wind_down(self, writer: asyncio.Task[None]) -> None:
        """On stop: running tasks report where they are, then the queue drains (bounded)."""
        for runner in list(self._tasks.values()):
            runner.request_stop(StopRequest("AgentStopping", "the agent is shutting down"))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                while self._task_handles:
                    await asyncio.wait(set(self._task_handles))
                outbound = self._outbound
                if outbound is not None and not writer.done():
                    # The writer ends early when the gateway closes the stream meanwhile.
                    drained = asyncio.ensure_future(outbound.join())
                    try:
                        await asyncio.wait({drained, writer}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        drained.cancel()

    async def _cancel_tasks(self) -> None:
        handles = list(self._task_handles)
        for h in handles:
            h.cancel()
        if handles:
            await asyncio.gather(*handles, return_exceptions=True)
        self._tasks.clear()

    async def _write(
        self, call: grpc.aio.StreamStreamCall, outbound: asyncio.Queue[pb.CarMessage | bytes]
    ) -> None:
        while True:
            msg = await outbound.get()
            try:
                await call.write(msg)
            finally:
                outbound.task_done()

    async def _send(self, msg: pb.CarMessage | bytes) -> None:
        outbound = self._outbound
        if outbound is None:
            raise _StreamEnded("no stream")
        await outbound.put(msg)

    async def _read(
        self, stub: carlink_pb2_grpc.CarLinkStub, call: grpc.aio.StreamStreamCall
    ) -> None:
        while True:
            msg = await call.read()
            if msg == grpc.aio.EOF:
                return
            if isinstance(msg, InputData):  # an input chunk, its tensor viewing the bytes
                runner = self._tasks.get(msg.task_id)
                if runner is not None and runner.attempt == msg.attempt:
                    await runner.feed(msg)
                continue
            kind = msg.WhichOneof("body")
            if kind == "input":
                runner = self._tasks.get(msg.input.task_id)
                if runner is not None and runner.attempt == msg.input.attempt:
                    await runner.feed(msg.input)
            elif kind == "offer":
                await self._on_offer(stub, msg.offer)
            elif kind == "cancel":
                runner = self._tasks.get(msg.cancel.task_id)
                if runner is not None and msg.cancel.attempt in (0, runner.attempt):
                    runner.request_stop(
                        StopRequest(msg.cancel.reason or "Cancelled", "cancelled", report=False)
                    )
            elif kind == "redirect":
                self.address = msg.redirect.address
                return
            # A second Welcome or an unknown body is ignored: newer gateways may add some.

    # ---- policy and telemetry ----------------------------------------------------

    def _conditions(self) -> tuple[SensorReading, Conditions, float]:
        reading = self.sensors.read()
        today = reading.energy_used_today_wh + self._daily.today(reading.unix_time_ms)
        return (
            reading,
            Conditions(
                parked=reading.parked,
                plugged_in=reading.plugged_in,
                soc_percent=reading.soc_percent,
                gpu_temp_c=reading.gpu_temp_c,
                energy_used_today_wh=today,
                unix_time_ms=reading.unix_time_ms,
                consent=self._consent,
            ),
            today,
        )

    async def _read_consent(self) -> None:
        if self._consent_file is not None:
            self._consent = consent_value(await self._consent_file.read())

    async def _telemetry_loop(self) -> None:
        while True:
            await self._read_consent()
            reading, conditions, today = self._conditions()
            await self._send(pb.CarMessage(telemetry=_telemetry(reading, today, self._consent)))
            self.telemetry_sent += 1
            verdict = self._eligibility.update(conditions)
            if not verdict.eligible:
                # The owner's policy is law: stop now, the gateway resumes elsewhere.
                for runner in list(self._tasks.values()):
                    runner.request_stop(StopRequest(verdict.reason, verdict.message))
            if conditions.consent == pb.CONSENT_WITHDRAWN:
                self._withdrawn = True
                log.warning("car %s: withdrawn by its owner; leaving", self.config.car_id)
                return  # the link ends (its tasks and queue wind down first)
            self._telemetry_kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._telemetry_kick.wait(), self._telemetry_interval)

    # ---- tasks -------------------------------------------------------------------

    async def _refuse(self, offer: pb.TaskOffer, reason: str, message: str) -> None:
        self.refusals.append((offer.task_id, reason))
        self.metrics.offers.labels(reason).inc()
        await self._send(
            pb.CarMessage(
                refuse=pb.TaskRefuse(
                    task_id=offer.task_id, attempt=offer.attempt, reason=reason, message=message
                )
            )
        )

    async def _on_offer(self, stub: carlink_pb2_grpc.CarLinkStub, offer: pb.TaskOffer) -> None:
        existing = self._tasks.get(offer.task_id)
        if existing is not None:
            if offer.attempt <= existing.attempt:
                return  # stale or duplicate offer
            existing.request_stop(StopRequest("Superseded", "a newer attempt", report=False))
        elif len(self._tasks) >= self.config.max_tasks:
            await self._refuse(offer, "Busy", f"already running {len(self._tasks)} task(s)")
            return
        if not from_gateway(offer.model):
            # Refused before anything is opened for it, whatever the gateway said.
            await self._refuse(offer, REASON_MODEL_SOURCE, _MODEL_SOURCE_MESSAGE)
            return
        if offer.runtime not in ("", RUNTIME):
            await self._refuse(
                offer, "UnsupportedRuntime", f"runtime {offer.runtime!r}; this car runs {RUNTIME}"
            )
            return
        if not offer.item_start <= offer.resume_from <= offer.item_end:
            await self._refuse(
                offer,
                "InvalidOffer",
                f"resume_from {offer.resume_from} outside [{offer.item_start}, {offer.item_end}]",
            )
            return
        reading, conditions, _ = self._conditions()
        verdict = self._eligibility.update(conditions)
        if not verdict.eligible:
            await self._refuse(offer, verdict.reason, verdict.message)
            return
        if offer.gpu_memory_mib > reading.free_gpu_memory_mib:
            await self._refuse(
                offer,
                "InsufficientGpuMemory",
                f"needs {offer.gpu_memory_mib} MiB, {reading.free_gpu_memory_mib} MiB free",
            )
            return
        # On the wall clock, like the task's items/s (the simulator's too: one time base).
        meter = EnergyMeter(self._power, self._power_reader)
        runner = TaskRunner(
            offer,
            self._send,
            meter,
            on_energy=lambda wh: self._daily.add(wh, self.sensors.read().unix_time_ms),
        )
        self._tasks[offer.task_id] = runner
        self.metrics.offers.labels("Accepted").inc()
        await self._send(
            pb.CarMessage(accept=pb.TaskAccept(task_id=offer.task_id, attempt=offer.attempt))
        )
        handle = asyncio.create_task(self._run_task(stub, runner))
        self._task_handles.add(handle)
        handle.add_done_callback(self._task_ended)

    def _task_ended(self, handle: asyncio.Task[None]) -> None:
        self._task_handles.discard(handle)
        if handle.cancelled():
            return
        e = handle.exception()
        if isinstance(e, _StreamEnded):
            log.debug("a task of %s ended with its stream: %s", self.config.car_id, e)
        elif e is not None:
            log.error("a task of %s died", self.config.car_id, exc_info=e)

    async def _run_task(self, stub: carlink_pb2_grpc.CarLinkStub, runner: TaskRunner) -> None:
        offer = runner.offer
        try:
            try:
                outcome = await self._load_and_run(stub, runner)
            except _StreamEnded:
                raise  # nobody to tell: the gateway moves the task when the stream goes
            except Exception as e:
                # A bug of this agent, not the task's fault: logged in full, and the task
                # goes back to the gateway as retriable, so that another car takes it.
                log.exception("task %s attempt %d: the agent failed", offer.task_id, offer.attempt)
                outcome = await runner.abort(
                    REASON_AGENT_ERROR, f"{type(e).__name__}: {e}", retriable=True
                )
        finally:
            if self._tasks.get(offer.task_id) is runner:
                del self._tasks[offer.task_id]
        self.outcomes.append(TaskRecord(offer.task_id, offer.attempt, outcome, self.telemetry_sent))
        self.metrics.tasks.labels("Done" if outcome.done else outcome.reason).inc()
        self.metrics.items.inc(max(0, outcome.next_item - offer.resume_from))
        self.metrics.energy.labels("modelled" if outcome.energy_modelled else "measured").inc(
            outcome.energy_wh * 3600.0  # Wh on the wire, joules (the base unit) in metrics
        )

    async def _load_and_run(
        self, stub: carlink_pb2_grpc.CarLinkStub, runner: TaskRunner
    ) -> TaskOutcome:
        offer = runner.offer
        try:
            model, fetched = await self.models.lookup(offer.model, stub)
        except ModelHashMismatch as e:
            self.metrics.model_fetches.labels("HashMismatch").inc()
            return await runner.abort("ModelHashMismatch", str(e), retriable=False)
        except ModelFetchError as e:
            self.metrics.model_fetches.labels("FetchFailed").inc()
            return await runner.abort("ModelFetchFailed", str(e), retriable=True)
        self.metrics.model_fetches.labels("fetched" if fetched else "hit").inc()
        try:
            session = await self.compute.session(offer.model.sha256.lower(), model)
        except ModelLoadError as e:  # ORT rejects the model: no car will do better
            return await runner.abort("ModelLoadFailed", str(e), retriable=False)
        names = list(offer.output_names) or session.output_names
        return await runner.run(session, names)

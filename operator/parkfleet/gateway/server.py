"""The CarLink gRPC service: one stream per car, identity from its certificate only.

Everything a car sends is checked; a violation closes that car's stream with a
status that says why (INVALID_ARGUMENT for malformed messages, FAILED_PRECONDITION
for a protocol version this gateway does not speak, PERMISSION_DENIED for identity),
never the gateway. Oversized messages never reach this code: gRPC's own receive
limit (from :mod:`parkfleet.protocol.limits`) ends the stream with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeAlias

import grpc

from parkfleet.api.fleetpool import FleetPoolSpec
from parkfleet.certs import CarIdentity, car_identity
from parkfleet.energymodel import CarPower
from parkfleet.gateway.cells import DEFAULT_POOL, UNPOOLED, PoolCell, cell_of, pool_cell_of
from parkfleet.gateway.consent import ConsentBook, MemoryConsentBook
from parkfleet.gateway.metrics import GatewayMetrics
from parkfleet.gateway.modelstore import ModelStore
from parkfleet.gateway.registry import CarState, Registry
from parkfleet.gateway.tasks import TaskManager
from parkfleet.policy import Eligibility, Policy
from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol import carlink_pb2_grpc
from parkfleet.protocol.chunks import ResultData, decode_car_message, serialize
from parkfleet.protocol.claims import (
    MAX_GPU_COUNT,
    MAX_GPU_MEMORY_MIB,
    check_hello_claims,
    check_report_claims,
    check_telemetry_claims,
)
from parkfleet.protocol.consent import ConsentName, consent_name
from parkfleet.protocol.limits import (
    MAX_MESSAGE_BYTES,
    ProtocolViolation,
    check_protocol_version,
    validate_car_message,
)
from parkfleet.revocations import Revocations, revoked
from parkfleet.shards import shard_of
from parkfleet.taskport import ModelNotFound

__all__ = [
    "REASON_EXPIRED",
    "REASON_LINK_CLOSED",
    "REASON_MAX_AGE",
    "REASON_PROTOCOL_VIOLATION",
    "REASON_REPLACED",
    "REASON_REVOKED",
    "REASON_TELEMETRY_TIMEOUT",
    "REASON_WITHDRAWN",
    "CarLinkService",
    "add_carlink_service",
]

log = logging.getLogger(__name__)

REASON_LINK_CLOSED = "LinkClosed"
REASON_PROTOCOL_VIOLATION = "ProtocolViolation"
REASON_TELEMETRY_TIMEOUT = "TelemetryTimeout"
REASON_REPLACED = "Reconnected"
REASON_INTERNAL_ERROR = "InternalError"
REASON_REVOKED = "Revoked"
REASON_EXPIRED = "CertificateExpired"
REASON_NOT_A_CAR = "NotACarCertificate"
REASON_MAX_AGE = "MaxStreamAge"
# The car's owner withdrew it: its stream closes and its identity is refused from then on.
REASON_WITHDRAWN = "Withdrawn"
_WITHDRAWN_MESSAGE = "this car's owner withdrew it from the fleet"
# Messages that mean the car is still computing (a result or a done may have been in
# flight when the policy stopped it: they prove nothing).
_WORK_KINDS = frozenset({"progress", "checkpoint"})


# A car's call ended by gRPC itself, the gateway not stopping: its connection broke.
_LINK_LOST = "the car's connection was lost (reset, or the gateway's pings went unanswered)"
# How a car's stream breaks from its side (reset, closed while written to).
_STREAM_ERRORS = (grpc.RpcError, grpc.aio.AbortError, ConnectionError, EOFError)
# grpc ships no type hints (mypy sees Any); the alias documents what flows: result chunks
# arrive as ResultData (their tensors viewing the received bytes), input chunks leave as
# bytes encoded by parkfleet.protocol.chunks.
_Context: TypeAlias = (
    "grpc.aio.ServicerContext[pb.CarMessage | ResultData, pb.GatewayMessage | bytes]"
)


class _CarWithdrawn(Exception):
    """The car reported its owner's withdrawal: its stream closes PERMISSION_DENIED."""


def add_carlink_service(service: CarLinkService, server: grpc.aio.Server) -> None:
    """Registers ``CarLink`` on ``server``, as the generated code does, with the stream's
    codec from :mod:`parkfleet.protocol.chunks` (tensor payloads copied once at most).
    """
    handlers = {
        "Connect": grpc.stream_stream_rpc_method_handler(
            service.Connect,
            request_deserializer=decode_car_message,
            response_serializer=serialize,
        ),
        "FetchModel": grpc.unary_stream_rpc_method_handler(
            service.FetchModel,
            request_deserializer=pb.ModelRequest.FromString,
            response_serializer=pb.ModelChunk.SerializeToString,
        ),
    }
    name = pb.DESCRIPTOR.services_by_name["CarLink"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


class CarLinkService(carlink_pb2_grpc.CarLinkServicer):
    """Serves ``CarLink``.

    Args:
        registry: Connected cars.
        tasks: Task placement and follow-up.
        models: The model store behind ``FetchModel``.
        metrics: Where to count.
        cells_per_pool: Cells a pool's cars are hashed over (without a ``cell`` attribute).
        telemetry_interval_s: Told to cars in Welcome.
        hello_timeout_s: How long a new stream may take to send Hello.
        pool_floors: Per pool, a policy the owner policies are tightened to.
        max_gpus_per_car: A Hello claiming more GPUs closes its stream.
        max_gpu_memory_mib: A Hello claiming more GPU memory closes its stream.
        consent_book: Where owners' consent changes are recorded and withdrawals are
            looked up (in memory when None: withdrawals last the process's life).
    """

    def __init__(
        self,
        registry: Registry,
        tasks: TaskManager,
        models: ModelStore,
        metrics: GatewayMetrics,
        *,
        cells_per_pool: int = 1,
        telemetry_interval_s: float = 10.0,
        hello_timeout_s: float = 10.0,
        pool_floors: Mapping[str, Policy] | None = None,
        max_gpus_per_car: int = MAX_GPU_COUNT,
        max_gpu_memory_mib: int = MAX_GPU_MEMORY_MIB,
        consent_book: ConsentBook | None = None,
    ) -> None:
        self._registry = registry
        self._tasks = tasks
        self._models = models
        self._metrics = metrics
        self.cells_per_pool = cells_per_pool
        self.telemetry_interval_s = telemetry_interval_s
        self.hello_timeout_s = hello_timeout_s
        self.pool_floors: dict[str, Policy] = dict(pool_floors or {})
        self.max_gpus_per_car = max_gpus_per_car
        self.max_gpu_memory_mib = max_gpu_memory_mib
        self.consent_book: ConsentBook = (
            consent_book if consent_book is not None else MemoryConsentBook()
        )
        # None: cells come from the certificate's pool/cell attributes (no Kubernetes);
        # a list: the FleetPools' selectors decide (the node agent sets it).
        self.pools: list[FleetPoolSpec] | None = None
        # Sharding (decision 8): this gateway's shard, and every shard's car address. A
        # car whose cell another shard owns is redirected there in answer to its Hello.
        self.shard = 0
        self.shard_addresses: list[str] = []
        # The fleet admin's revocation list (parkfleet.revocations; the node agent sets it).
        self.revocations: Revocations = {}
        # Set by the gateway before its server stops: the calls gRPC then cancels are a
        # shutdown, not lost cars.
        self.stopping = False

    def place(self, identity: CarIdentity) -> PoolCell:
        """The pool, cell and pool floor of a car."""
        if self.pools is None:
            pool = identity.attributes.get("pool") or DEFAULT_POOL
            cell = cell_of(identity.car_id, identity.attributes, self.cells_per_pool)
            return PoolCell(pool, cell, self.pool_floors.get(pool))
        placed = pool_cell_of(identity.car_id, identity.attributes, self.pools, self._cars_in())
        if placed.refused:
            self._metrics.pool_refusals.inc()
            log.warning(
                "car %s joins no pool: the selectors of pools %s match it and none is the "
                "most specific",
                identity.car_id,
                ", ".join(placed.contenders),
            )
        return placed

    def owner_of(self, placed: PoolCell) -> int | None:
        """The shard that owns a car's cell, or None when sharding does not apply."""
        if not self.shard_addresses or self.pools is None:
            return None
        pool = next((p for p in self.pools if p.name == placed.pool), None)
        if pool is None or pool.shards <= 1:
            return None
        return shard_of(placed.cell, pool.shards)

    def _cars_in(self, car_id: str = "") -> Callable[[str], int]:
        """Counts the cars of a cell, not counting ``car_id`` (a car being re-placed)."""
        cells = self._registry.cells

        def count(cell: str) -> int:
            c = cells.get(cell)
            if c is None:
                return 0
            return len(c.cars) - (1 if car_id in c.cars else 0)

        return count

    def set_pools(self, pools: list[FleetPoolSpec]) -> int:
        """Lets FleetPools decide cells and floors, also for cars already connected.

        Returns:
            How many connected cars changed cell.
        """
        self.pools = list(pools)
        moved = 0
        refused: dict[tuple[str, ...], int] = {}
        for car in list(self._registry.cars.values()):
            placed = pool_cell_of(
                car.car_id, dict(car.attributes), self.pools, self._cars_in(car.car_id)
            )
            if placed.refused and car.cell.id != UNPOOLED:
                refused[placed.contenders] = refused.get(placed.contenders, 0) + 1
            policy = car.owner_policy
            if placed.floor is not None:
                policy = policy.stricter(placed.floor)
            if policy != car.eligibility.policy:
                self._registry.set_policy(car, policy)
            shard = self.owner_of(placed)
            if shard is not None and shard != self.shard:
                # Its cell moved to another shard: the car reconnects and is redirected.
                car.close(
                    grpc.StatusCode.UNAVAILABLE,
                    "Resharded",
                    f"cell {placed.cell} now belongs to gateway shard {shard}",
                )
                continue
            if placed.cell != car.cell.id:
                self._registry.move(car, self._registry.cell(placed.cell, placed.pool))
                moved += 1
        for contenders, n in sorted(refused.items()):
            # One line per tie, not per car: a pool change may refuse thousands at once.
            self._metrics.pool_refusals.inc(n)
            log.warning(
                "%d connected cars lose their pool: the selectors of pools %s match them and "
                "none is the most specific",
                n,
                ", ".join(contenders),
            )
        return moved

    def set_revocations(self, revocations: Revocations) -> int:
        """Takes the revocation list; closes the live streams of the cars it revokes
        (their tasks move to other cars).

        Returns:
            How many streams were closed.
        """
        self.revocations = dict(revocations)
        closed = 0
        for car_id in self.revocations.keys() & self._registry.cars.keys():
            car = self._registry.cars[car_id]
            if revoked(self.revocations, car_id, car.cert_issued_at):
                car.close(
                    grpc.StatusCode.PERMISSION_DENIED,
                    REASON_REVOKED,
                    "this car's certificate was revoked by the fleet admin",
                )
                closed += 1
        return closed

    def close_expired(self, now: float, max_age_s: float, busy_grace_s: float) -> int:
        """Closes the streams of cars whose certificate has expired (for good: the car
        needs a new one), and of cars connected longer than ``max_age_s`` (they
        reconnect at once, presenting their certificate again; each car's limit is up to
        a tenth shorter, by its id, so that cars connected together leave apart; a busy
        car is given ``busy_grace_s`` more to finish its task). ``max_age_s`` 0: no
        maximum.

        Returns:
            How many streams were closed.
        """
        closed = 0
        for car in list(self._registry.cars.values()):
            if car.close_code is not None:
                continue
            if car.cert_expires_at <= now:
                car.close(
                    grpc.StatusCode.PERMISSION_DENIED,
                    REASON_EXPIRED,
                    "this car's certificate has expired",
                )
                closed += 1
                continue
            age = now - car.connected_at
            # Spread over the last tenth of the age, by car: cars that connected together
            # (a gateway restart) do not all reconnect in the same second.
            limit = max_age_s * (1.0 - 0.1 * zlib.crc32(car.car_id.encode()) / 2**32)
            if max_age_s > 0 and age > limit + (busy_grace_s if car.busy else 0.0):
                car.close(
                    grpc.StatusCode.UNAVAILABLE,
                    REASON_MAX_AGE,
                    f"connected longer than {max_age_s:g} s: reconnect",
                )
                closed += 1
        return closed

    async def _identity(self, context: _Context) -> CarIdentity:
        certs = context.auth_context().get("x509_pem_cert")
        if not certs:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no client certificate")
        try:
            identity = car_identity(certs[0])
        except ValueError as e:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"unusable certificate: {e}")
        # The TLS layer already refuses a certificate without clientAuth; said again here.
        if not identity.client_auth:
            self._metrics.streams_closed.labels(REASON_NOT_A_CAR).inc()
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "not a car's certificate (no clientAuth)"
            )
        if revoked(self.revocations, identity.car_id, identity.issued_at):
            self._metrics.streams_closed.labels(REASON_REVOKED).inc()
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "this car's certificate was revoked by the fleet admin",
            )
        if self.consent_book.is_withdrawn(identity.car_id):
            self._metrics.streams_closed.labels(REASON_WITHDRAWN).inc()
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, _WITHDRAWN_MESSAGE)
        if identity.expires_at <= time.time():
            self._metrics.streams_closed.labels(REASON_EXPIRED).inc()
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "this car's certificate has expired"
            )
        return identity

    async def Connect(  # type: ignore[override]  # read/write handler, no iterator
        self, request_iterator: AsyncIterator[pb.CarMessage | ResultData], context: _Context
    ) -> None:
        """One car's link, from Hello until it ends."""
        identity = await self._identity(context)
        try:
            async with asyncio.timeout(self.hello_timeout_s):
                first = await context.read()
        except TimeoutError:
            self._metrics.streams_closed.labels("HelloTimeout").inc()
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no Hello within {self.hello_timeout_s:g} s"
            )
        except ProtocolViolation as e:  # the deserializer refused the car's first bytes
            self._metrics.streams_closed.labels(REASON_PROTOCOL_VIOLATION).inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if first is grpc.aio.EOF:
            return
        assert isinstance(first, pb.CarMessage | ResultData)
        car = await self._admit(identity, first, context)
        if car is None:
            return
        reason = REASON_LINK_CLOSED
        details = "the car closed its stream"
        code: grpc.StatusCode | None = None
        try:
            await car.send(
                pb.GatewayMessage(
                    welcome=pb.Welcome(
                        car_id=car.car_id,
                        cell=car.cell.id,
                        protocol_version=pb.PROTOCOL_VERSION,
                        telemetry_interval_s=self.telemetry_interval_s,
                        max_message_bytes=MAX_MESSAGE_BYTES,
                        energy_used_today_wh=self._tasks.accounted_today_wh(car),
                    )
                )
            )
            await self._serve(car, context)
        except ProtocolViolation as e:
            code, reason, details = (
                grpc.StatusCode.INVALID_ARGUMENT,
                REASON_PROTOCOL_VIOLATION,
                str(e),
            )
        except _CarWithdrawn as e:
            code, reason, details = grpc.StatusCode.PERMISSION_DENIED, REASON_WITHDRAWN, str(e)
        except asyncio.CancelledError:
            if car.close_code is not None:  # closed by the gateway (car.close)
                code, reason, details = car.close_code, car.close_reason, car.close_details
            elif self.stopping:
                reason, details = "Shutdown", "the gateway is stopping"
                raise
            else:  # gRPC ended the call: the connection broke (reset, or pings unanswered)
                reason, details = REASON_LINK_CLOSED, _LINK_LOST
                raise
        except _STREAM_ERRORS as e:  # a broken stream (e.g. reset by the peer): this car only
            reason, details = REASON_LINK_CLOSED, f"stream error: {e!r}"
        except Exception:  # a bug of ours: this car's stream closes, and it is said loudly
            log.exception("car %s: handling its stream failed", car.car_id)
            code, reason, details = (
                grpc.StatusCode.INTERNAL,
                REASON_INTERNAL_ERROR,
                "the gateway failed handling this stream",
            )
        finally:
            self._registry.remove(car)
            self._tasks.car_lost(car, reason, details, departed=not self.stopping)
            self._metrics.streams_closed.labels(reason).inc()
        if code is not None:
            await context.abort(code, details)

    async def _admit(
        self, identity: CarIdentity, first: pb.CarMessage | ResultData, context: _Context
    ) -> CarState | None:
        """Checks Hello and registers the car; aborts the stream when it must not join."""
        try:
            if isinstance(first, ResultData):
                raise ProtocolViolation("the first message must be Hello, not result")
            kind = validate_car_message(first)
            if kind != "hello":
                raise ProtocolViolation(f"the first message must be Hello, not {kind}")
            check_hello_claims(first.hello, self.max_gpus_per_car, self.max_gpu_memory_mib)
        except ProtocolViolation as e:
            self._metrics.streams_closed.labels(REASON_PROTOCOL_VIOLATION).inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        assert isinstance(first, pb.CarMessage)  # abort() raised otherwise
        hello = first.hello
        try:
            check_protocol_version(hello.protocol_version)
        except ProtocolViolation as e:
            self._metrics.streams_closed.labels("VersionMismatch").inc()
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        if hello.car_id and hello.car_id != identity.car_id:
            self._metrics.streams_closed.labels("IdentityMismatch").inc()
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"Hello claims car id {hello.car_id!r} but the client certificate is for "
                f"{identity.car_id!r}; a car can only speak for itself",
            )
        self._metrics.message("hello")
        placed = self.place(identity)
        shard = self.owner_of(placed)
        if shard is not None and shard != self.shard:
            if shard >= len(self.shard_addresses):
                self._metrics.streams_closed.labels("NoShardAddress").inc()
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"cell {placed.cell} belongs to shard {shard}, "
                    "whose address this gateway does not know",
                )
            self._metrics.streams_closed.labels("Redirected").inc()
            await context.write(
                pb.GatewayMessage(
                    redirect=pb.Redirect(
                        address=self.shard_addresses[shard],
                        reason=f"cell {placed.cell} belongs to gateway shard {shard}",
                    )
                )
            )
            return None
        cell = self._registry.cell(placed.cell, placed.pool)
        caps = hello.capabilities
        owner = self._registry.intern(Policy.from_proto(hello.policy))
        policy = owner.stricter(placed.floor) if placed.floor is not None else owner
        car = CarState(
            car_id=identity.car_id,
            cell=cell,
            context=context,
            handler=asyncio.current_task(),
            gpu_count=caps.gpu_count or 1,
            gpu_memory_mib=caps.gpu_memory_mib,
            runtimes=self._registry.intern(frozenset(caps.runtimes)),
            eligibility=Eligibility(self._registry.intern(policy)),
        )
        car.owner_policy = owner
        car.power = CarPower.from_capabilities(caps)
        car.local_day = owner.local_day(int(time.time() * 1000))
        car.attributes = self._registry.intern(tuple(sorted(identity.attributes.items())))
        car.owner = self._registry.intern(identity.owner)
        car.cert_issued_at = identity.issued_at
        car.cert_expires_at = identity.expires_at
        car.connected_at = time.time()
        car.reputation = self._tasks.reputation.state(identity.car_id)
        # A paused car that reconnects (or a gateway that restarted) is no change.
        car.consent = "paused" if self.consent_book.is_paused(identity.car_id) else "active"
        old = self._registry.add(car)
        if old is not None:
            self._tasks.car_lost(old, REASON_REPLACED, "the car connected again", departed=False)
            old.close(
                grpc.StatusCode.ALREADY_EXISTS,
                REASON_REPLACED,
                "replaced by a newer connection of the same car",
            )
        return car

    async def _serve(self, car: CarState, context: _Context) -> None:
        registry = self._registry
        tasks = self._tasks
        metrics = self._metrics
        observe = metrics.telemetry_seconds.observe
        observe_age = metrics.telemetry_age.observe
        wall = time.time
        count = metrics.message
        while True:
            msg = await context.read()
            if msg is grpc.aio.EOF:
                return
            if isinstance(msg, ResultData):  # most of a task's bytes: decoded without copies
                count(msg.validate())
                await tasks.on_result(car, msg)
                continue
            assert isinstance(msg, pb.CarMessage)
            t0 = time.perf_counter()
            kind = validate_car_message(msg)
            count(kind)
            if kind == "telemetry":
                t = msg.telemetry
                check_telemetry_claims(t)
                # The time since the last telemetry is accounted first (offered, its task's
                # seconds and energy), so that the daily budget includes it.
                tasks.on_telemetry(car, car.eligible)
                # The budget's day by the gateway's clock (the car's is only its claim).
                car.local_day = car.owner_policy.local_day(int(wall() * 1000))
                verdict = registry.update_telemetry(car, t, tasks.accounted_today_wh(car))
                if verdict is not None:
                    if verdict.eligible:
                        tasks.car_available()
                    elif car.busy:
                        tasks.car_ineligible(car, verdict.reason, verdict.message)
                consent = consent_name(msg.telemetry.consent)  # in range: checked above
                if consent != car.consent:
                    self._consent_changed(car, consent)
                observe(time.perf_counter() - t0)
                sent_ms = msg.telemetry.unix_time_ms
                if sent_ms:
                    observe_age(max(0.0, wall() - sent_ms / 1000.0))
            elif kind == "hello":
                raise ProtocolViolation("Hello may be sent only once per stream")
            else:
                check_report_claims(kind, msg)
                if kind in _WORK_KINDS:
                    tasks.check_stopped(car, kind)
                await tasks.on_message(car, kind, msg)

    def _consent_changed(self, car: CarState, consent: ConsentName) -> None:
        """Records a change of the owner's consent; a withdrawal ends the car's stream.

        Raises:
            _CarWithdrawn: The owner withdrew the car (its task has already moved).
        """
        self._registry.set_consent(car, consent)
        pool = car.cell.pool
        self.consent_book.record_consent(
            car.car_id, pool, car.owner, consent, int(time.time() * 1000)
        )
        self._metrics.consent_changes.labels(pool, consent).inc()
        log.info("car %s: its owner's consent is now %s", car.car_id, consent)
        if consent == "withdrawn":
            raise _CarWithdrawn(_WITHDRAWN_MESSAGE)

    async def FetchModel(
        self, request: pb.ModelRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ModelChunk]:
        """Streams a model from the store by its sha256 (to a car allowed to connect)."""
        await self._identity(context)
        try:
            async for chunk in self._models.chunks(request.sha256):
                self._metrics.model_bytes.inc(len(chunk.data))
                yield chunk
        except ModelNotFound as e:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(e))

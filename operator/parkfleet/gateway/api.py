"""The gateway as an object: what ``parkfleet gateway`` runs, and the
:class:`~parkfleet.taskport.TaskPort` its node agent drives in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, start_http_server

from parkfleet.api.fleetpool import FleetPoolSpec
from parkfleet.certs import CA_CERT_FILE, GATEWAY_CERT_FILE, GATEWAY_KEY_FILE
from parkfleet.contract import DEFAULT_CAR_WAIT_S, CarCounts
from parkfleet.gateway.consent import ConsentBook
from parkfleet.gateway.events import EventBus
from parkfleet.gateway.ledger import Ledger
from parkfleet.gateway.metrics import GatewayMetrics
from parkfleet.gateway.modelfetch import FetchConfig
from parkfleet.gateway.modelstore import ModelStore
from parkfleet.gateway.registry import Registry
from parkfleet.gateway.reputation import Reputation, ReputationRule
from parkfleet.gateway.server import (
    REASON_TELEMETRY_TIMEOUT,
    CarLinkService,
    add_carlink_service,
)
from parkfleet.gateway.tasks import DEFAULT_MAX_ATTEMPTS, Placement, TaskManager
from parkfleet.objectstore import S3Credentials
from parkfleet.policy import Policy
from parkfleet.protocol.limits import server_options
from parkfleet.revocations import Revocations
from parkfleet.taskport import ModelInfo, TaskEvent, TaskSpec, TaskStatus

__all__ = ["Gateway", "GatewayConfig"]

log = logging.getLogger(__name__)


@dataclass
class GatewayConfig:
    """How a gateway runs.

    Attributes:
        ca_pem: The fleet CA certificate: client certificates must chain to it.
        cert_pem: The gateway's serving certificate.
        key_pem: Its key.
        models_dir: The model store directory.
        listen: ``host:port`` to listen on (port 0 picks a free one).
        telemetry_interval_s: Telemetry period told to cars.
        telemetry_timeout_s: A car silent this long is lost (its stream is closed).
        hello_timeout_s: Time a new stream has to send Hello.
        cells_per_pool: Cells a pool's cars are hashed over (without a ``cell`` attribute).
        car_wait_s: Default time a task may wait for a car before failing
            ``NoEligibleCar`` (a pod's task takes its pool's ``gateway.graceSeconds``).
        offer_timeout_s: Time a car has to answer an offer.
        stall_timeout_s: A running task whose car says nothing about it this long moves
            to another car (0: never).
        start_timeout_s: The same before an attempt's first checkpoint, progress or
            result (the car may be fetching and loading the model).
        metrics_port: Serve Prometheus metrics on this port (None: not served).
        metrics_addr: The address it listens on (all interfaces, for Prometheus in a
            cluster; loopback for a local run).
        pool_floors: Per pool, a policy floor applied to cars that connect.
        max_gpus_per_car: A car claiming more GPUs is refused (its stream closes).
        max_gpu_memory_mib: A car claiming more GPU memory is refused.
        max_attempts: Cars a task may fail on (reported failures, stalls) before it
            fails ``AttemptsExhausted``; a car that leaves is no failure.
        grpc_options: Extra gRPC server options, over :func:`server_options` (tuning).
        model_fetch: How the gateway downloads a model a pod names by ``https://`` URI
            (size and time limits, the CA bundle it trusts).
        reputation: When a car is quarantined or trusted (``gateway/reputation.py``).
        max_stream_age_s: A car's stream is closed after this long (it reconnects at
            once, presenting its certificate again); 0: never.
        max_stream_age_busy_grace_s: ...a busy car's this much later (its task ends).
        ledger_path: The owner ledger's SQLite file (``gateway/ledger.py``); None keeps
            it in memory (lost when the gateway stops).
        placement: ``aware``: placement weighs the cars' claimed stays against each
            task's estimated run time; ``blind``: it does not (``gateway/placement.py``).
    """

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    models_dir: Path
    listen: str = "127.0.0.1:0"
    telemetry_interval_s: float = 10.0
    telemetry_timeout_s: float = 30.0
    hello_timeout_s: float = 10.0
    cells_per_pool: int = 1
    car_wait_s: float = DEFAULT_CAR_WAIT_S
    offer_timeout_s: float = 30.0
    stall_timeout_s: float = 120.0
    start_timeout_s: float = 900.0
    metrics_port: int | None = None
    metrics_addr: str = "0.0.0.0"
    pool_floors: Mapping[str, Policy] = field(default_factory=dict)
    max_gpus_per_car: int = 8
    max_gpu_memory_mib: int = 256 * 1024
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    shard: int = 0
    shard_addresses: list[str] = field(default_factory=list)
    grpc_options: Sequence[tuple[str, Any]] = ()
    model_fetch: FetchConfig = field(default_factory=FetchConfig)
    max_stream_age_s: float = 6 * 3600.0
    max_stream_age_busy_grace_s: float = 3600.0
    reputation: ReputationRule = field(default_factory=ReputationRule)
    ledger_path: Path | None = None
    placement: Placement = "aware"

    @classmethod
    def from_certs_dir(cls, certs: Path, models_dir: Path, **kwargs: Any) -> GatewayConfig:
        """Reads ``ca.crt``, ``gateway.crt`` and ``gateway.key`` (``parkfleet certs``)."""
        return cls(
            ca_pem=(certs / CA_CERT_FILE).read_bytes(),
            cert_pem=(certs / GATEWAY_CERT_FILE).read_bytes(),
            key_pem=(certs / GATEWAY_KEY_FILE).read_bytes(),
            models_dir=models_dir,
            **kwargs,
        )


class Gateway:
    """A fleet gateway: the CarLink server plus its registry, tasks and models.

    Args:
        config: How to run.
        registry: Prometheus registry for its metrics (a fresh one when None).
        task_manager: The task manager's class (a benchmark's baseline strategy
            subclasses it).
        consent_book: Where owners' consent is recorded (``gateway/consent.py``); the
            owner ledger when None.
    """

    def __init__(
        self,
        config: GatewayConfig,
        registry: CollectorRegistry | None = None,
        task_manager: type[TaskManager] = TaskManager,
        consent_book: ConsentBook | None = None,
    ) -> None:
        self.config = config
        self.metrics = GatewayMetrics(registry)
        self.registry = Registry(self.metrics)
        self.models = ModelStore(config.models_dir, config.model_fetch, self.metrics)
        self._bus = EventBus()
        self.ledger = Ledger(config.ledger_path)
        self._tasks = task_manager(
            self.registry,
            self.metrics,
            self._bus,
            car_wait_s=config.car_wait_s,
            offer_timeout_s=config.offer_timeout_s,
            max_attempts=config.max_attempts,
            stall_timeout_s=config.stall_timeout_s,
            start_timeout_s=config.start_timeout_s,
            reputation=Reputation(config.reputation),
            ledger=self.ledger,
            telemetry_interval_s=config.telemetry_interval_s,
            placement=config.placement,
        )
        self._service = CarLinkService(
            self.registry,
            self._tasks,
            self.models,
            self.metrics,
            cells_per_pool=config.cells_per_pool,
            telemetry_interval_s=config.telemetry_interval_s,
            hello_timeout_s=config.hello_timeout_s,
            pool_floors=config.pool_floors,
            max_gpus_per_car=config.max_gpus_per_car,
            max_gpu_memory_mib=config.max_gpu_memory_mib,
            consent_book=consent_book if consent_book is not None else self.ledger,
        )
        self._service.shard = config.shard
        self._service.shard_addresses = list(config.shard_addresses)
        self._server: grpc.aio.Server | None = None
        self._port = 0
        self._loops: list[asyncio.Task[None]] = []
        self._metrics_server: Any = None

    @property
    def port(self) -> int:
        """The port the server listens on (after :meth:`start`)."""
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` cars connect to (after :meth:`start`)."""
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self._port}"

    async def start(self) -> None:
        """Starts listening, placing tasks and watching for silent cars."""
        await self.ledger.open()
        options = dict(server_options())
        options.update(dict(self.config.grpc_options))
        server = grpc.aio.server(options=list(options.items()))
        add_carlink_service(self._service, server)
        creds = grpc.ssl_server_credentials(
            [(self.config.key_pem, self.config.cert_pem)],
            root_certificates=self.config.ca_pem,
            require_client_auth=True,
        )
        self._port = server.add_secure_port(self.config.listen, creds)
        if self._port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        await server.start()
        self._server = server
        if self.config.metrics_port is not None:
            self._metrics_server = start_http_server(
                self.config.metrics_port,
                addr=self.config.metrics_addr,
                registry=self.metrics.registry,
            )
        loop = asyncio.get_running_loop()
        self._loops = [
            loop.create_task(self._schedule_loop(), name="gateway-schedule"),
            loop.create_task(self._sweep_loop(), name="gateway-sweep"),
        ]
        log.info("gateway listening on %s", self.address)

    async def stop(self, grace: float = 2.0) -> None:
        """Stops: open streams get ``grace`` seconds, then everything ends."""
        for t in self._loops:
            t.cancel()
        for t in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._loops = []
        if self._server is not None:
            self._service.stopping = True
            await self._server.stop(grace)
            self._server = None
        await self._tasks.close()
        await self.ledger.close()
        self._bus.close()
        if self._metrics_server is not None:
            server = self._metrics_server[0] if isinstance(self._metrics_server, tuple) else None
            if server is not None:
                server.shutdown()
            self._metrics_server = None

    async def wait_for_termination(self) -> None:
        """Waits until the server stops."""
        if self._server is not None:
            await self._server.wait_for_termination()

    # ---- the node agent's port (parkfleet.taskport.TaskPort) -------------------------

    def capacity(self, cell: str) -> CarCounts:
        """One cell's cars now: connected, eligible, busy, the eligible cars' GPUs (the
        Node's allocatable: the scheduler subtracts what pods bound to it request) and
        the largest GPU memory of any connected car. Walks that cell's cars only."""
        c = self.registry.cells.get(cell)
        if c is None:
            return CarCounts()
        gpus = 0
        memory = 0
        for car in c.cars.values():
            memory = max(memory, car.gpu_memory_mib)
            if car.eligible and car.reputation != "quarantined":
                gpus += car.gpu_count
        return CarCounts(
            cars_connected=len(c.cars),
            cars_eligible=c.eligible,
            cars_busy=c.busy,
            gpus=gpus,
            max_gpu_memory_mib=memory,
        )

    async def submit(self, spec: TaskSpec) -> None:
        """Queues a task for its cell; events follow on :meth:`events`.

        Raises:
            ValueError: The spec is invalid or its id belongs to a live task.
        """
        self._tasks.submit(spec)

    async def cancel(self, task_id: str, reason: str) -> None:
        """Cancels a task (its car is told to stop); no-op when unknown or ended."""
        self._tasks.cancel(task_id, reason)

    def events(self) -> AsyncIterator[TaskEvent]:
        """A new subscription to task events, from now until the gateway stops."""
        return self._bus.subscribe()

    async def resolve_model(
        self,
        name: str = "",
        sha256: str = "",
        uri: str = "",
        credentials: S3Credentials | None = None,
    ) -> ModelInfo:
        """A model of the store by name or digest, with its input and output names; with
        an ``https://`` or ``s3://`` URI (the latter read with ``credentials``),
        downloaded into the store first when it lacks ``sha256`` (see
        :meth:`parkfleet.taskport.TaskPort.resolve_model`).

        Raises:
            ModelNotFound: No such model, or a malformed name or digest.
            ModelUnreadable: The file is not a model the runtime loads.
            ModelFetchFailed: The URI is refused or its download failed.
        """
        return await self.models.resolve(name=name, sha256=sha256, uri=uri, credentials=credentials)

    def release(self, task_id: str) -> None:
        """Drops an ended task's record (the caller has taken its outcome)."""
        self._tasks.release(task_id)

    def record_verdict(self, task_id: str, agreed: bool) -> list[str]:
        """The vote on an ended, not yet released task: whether its results agreed with
        the kept result. Counts for or against the cars that delivered them.

        Returns:
            The cars this verdict quarantined (no more offers for them).
        """
        return self._tasks.record_verdict(task_id, agreed)

    def trusted(self, car_id: str) -> bool:
        """Whether a car's reputation is ``trusted`` (a long clean record)."""
        return self._tasks.reputation.state(car_id) == "trusted"

    def quarantined(self, car_id: str) -> bool:
        """Whether a car's reputation is ``quarantined`` (it gets no more work)."""
        return self._tasks.reputation.state(car_id) == "quarantined"

    def set_revocations(self, revocations: Revocations) -> None:
        """Takes the fleet admin's revocation list (``parkfleet.revocations``): revoked
        cars are refused at Hello, and their live streams closed now (their tasks move)."""
        closed = self._service.set_revocations(revocations)
        if closed:
            log.warning("revocation list: closed the streams of %d revoked cars", closed)

    def set_pools(self, pools: Sequence[FleetPoolSpec]) -> None:
        """Lets the FleetPools decide every car's cell and floor (the node agent calls it)."""
        moved = self._service.set_pools(list(pools))
        if moved:
            log.info("FleetPools changed: %d connected cars changed cell", moved)
        self._tasks.kick.set()

    # ---- for operators and tests ---------------------------------------------------------

    def task(self, task_id: str) -> TaskStatus | None:
        """A task's status, or None when unknown (or released)."""
        task = self._tasks.tasks.get(task_id)
        return task.status() if task is not None else None

    # ---- background loops -------------------------------------------------------------

    async def _schedule_loop(self) -> None:
        kick = self._tasks.kick
        while True:
            # Woken on change; the timeout drives grace and offer deadlines. (Not
            # asyncio.wait_for: on 3.11 it can swallow a cancel that races completion.)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await kick.wait()
            kick.clear()
            try:
                self._tasks.schedule()
            except Exception:
                log.exception("scheduling failed")

    async def _sweep_loop(self) -> None:
        timeout = self.config.telemetry_timeout_s
        interval = max(0.05, min(timeout / 4, 5.0))
        details = f"no telemetry for {timeout:g} s"
        while True:
            await asyncio.sleep(interval)
            deadline = time.monotonic() - timeout
            for car in list(self.registry.silent_since(deadline)):
                car.close(grpc.StatusCode.UNAVAILABLE, REASON_TELEMETRY_TIMEOUT, details)
            try:
                self._service.close_expired(
                    time.time(),
                    self.config.max_stream_age_s,
                    self.config.max_stream_age_busy_grace_s,
                )
                self._tasks.move_stalled()
            except Exception:
                log.exception("closing expired streams or moving stalled tasks failed")

"""A simulated fleet: N cars in one process, each with its own certificate and stream.

Time base: the sped-up clock moves only the traces (when cars park, drive, charge). A
task's compute, its seconds and its energy run on the wall clock, the same clock its
items/s are counted on, so energy per item means the same in the simulator as on a car.

Every car runs the real agent (``parkfleet.vehicle.Agent``); only its sensors are
simulated (``TraceSensors`` over a seeded availability trace and a sped-up clock) and,
for large fleets, its compute rate (``ModelledCompute``: real outputs from one shared
ONNX Runtime pool, held to a modelled per-car rate so the CPU stays bounded).

Each car also has a true power of its own and a meter of it (``parkfleet.sim.truemeter``):
what the models of its energy are checked against (``true_energy_wh``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from parkfleet.certs import CA_CERT_FILE, OWNER_ATTRIBUTE, FleetCA, car_identity, car_paths
from parkfleet.energymodel import CarPower
from parkfleet.policy import Policy
from parkfleet.protocol.consent import ConsentName
from parkfleet.sim.sensors import SimClock, TraceSensors
from parkfleet.sim.traces import CarTrace, fleet_traces
from parkfleet.sim.truemeter import MeteredCompute, TrueMeter, TruePower
from parkfleet.vehicle.compute import Compute, CorruptCompute, ModelledCompute, OrtCompute
from parkfleet.vehicle.link import (
    Agent,
    AgentConfig,
    Credentials,
    GaveUp,
    LinkRefused,
    Withdrawn,
    capabilities,
)
from parkfleet.vehicle.metrics import AgentMetrics
from parkfleet.vehicle.modelcache import ModelCache

__all__ = [
    "OWNER_TIME_ZONES",
    "FleetConfig",
    "FleetStats",
    "SimulatedFleet",
    "car_credentials",
    "owner_policy",
]

log = logging.getLogger(__name__)

ComputeMode = Literal["real", "modelled"]


@dataclass
class FleetConfig:
    """What to simulate.

    Attributes:
        cars: Number of cars.
        gateway: Gateway ``host:port``.
        certs_dir: Folder with the fleet CA (``ca.crt``/``ca.key``); car certificates are
            issued into ``cars/`` there on first use and reused afterwards.
        seed: Seed for traces and owner policies.
        speed: Simulated seconds per real second.
        cells: Cells the cars are spread over (pinned by the ``cell`` attribute).
        pool: The pool attribute of every car.
        compute: ``real`` (ONNX Runtime per task) or ``modelled`` (shared, rate-limited).
        modelled_items_per_second: One car's modelled rate.
        start_unix_ms: Simulated start time (default: now).
        days: Days of trace per car (wraps).
        telemetry_interval_s: Until the gateway's Welcome says otherwise.
        ramp_s: Connections are spread over this many real seconds.
        car_id_prefix: Car ids are ``{prefix}{index:06d}``.
        strict_owners: When False, every owner allows work while plugged in and nothing
            else, and lives in UTC (handy for tests); when True, owners draw realistic
            policies and time zones (``owner_policy``).
        server_name_override: TLS name to expect from the gateway.
        max_reconnects: Per car, None = forever.
        scenario: ``day`` (realistic traces), ``parked`` (always parked, plugged in) or
            ``stays`` (short stays between drives, departures spread out).
        mean_stay_s: ``stays``: the mean parked stay (trace seconds).
        mean_drive_s: ``stays``: the mean drive between stays.
        departure_noise: Each car reports the time to its trace's next departure, off by
            up to this fraction of the stay (``TraceSensors``); negative: reports none.
        corrupt: Fault injection: every car returns wrong results (tests of redundancy).
        cars_per_owner: Consecutive cars that share an owner (the certificate's ``owner``
            attribute, ``{prefix}owner-{index // cars_per_owner:06d}``): copies of one
            unit never go to two cars of one owner.
        true_meter_interval_s: How often every car's true meter samples whether its
            agent holds a task (wall-clock seconds).
    """

    cars: int
    gateway: str
    certs_dir: Path
    seed: int = 0
    speed: float = 1.0
    cells: int = 1
    pool: str = "sim"
    compute: ComputeMode = "real"
    modelled_items_per_second: float = 2000.0
    start_unix_ms: int | None = None
    days: int = 7
    telemetry_interval_s: float = 10.0
    ramp_s: float = 1.0
    car_id_prefix: str = "sim-"
    strict_owners: bool = True
    server_name_override: str = ""
    max_reconnects: int | None = None
    extra_attributes: dict[str, str] = field(default_factory=dict)
    scenario: str = "day"
    mean_stay_s: float = 400.0
    mean_drive_s: float = 60.0
    departure_noise: float = 0.0
    corrupt: bool = False
    cars_per_owner: int = 1
    true_meter_interval_s: float = 0.05


@dataclass
class FleetStats:
    """A snapshot of the fleet, from the agents' own view."""

    cars: int
    connected: int
    busy: int
    tasks_done: int
    tasks_failed: int
    refusals: int
    items: float


# Where simulated owners live: their traces and blocked hours are in this local time. Two
# follow summer time on either side of the Atlantic, one is half an hour off the hour.
OWNER_TIME_ZONES: tuple[str, ...] = (
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "Asia/Kolkata",
)


def owner_policy(rng: random.Random) -> Policy:
    """Draws an owner's policy: most only while charging, many with a battery floor, a
    fifth blocking 07-09 local, each in one of ``OWNER_TIME_ZONES``."""
    floor = rng.choice((0.0, 0.0, 20.0, 40.0, 60.0))
    blocked: tuple[tuple[int, int], ...] = ()
    if rng.random() < 0.2:
        blocked = ((7, 9),)
    return Policy(
        only_while_plugged_in=rng.random() < 0.9,
        min_soc_percent=floor,
        resume_soc_percent=floor + 5.0 if floor else 0.0,
        blocked_hours=blocked,
        daily_energy_wh=rng.choice((0.0, 0.0, 1000.0, 3000.0)),
        max_gpu_temp_c=85.0,
        # Drawn last, so the draws above are the ones they were before owners had zones.
        time_zone=rng.choice(OWNER_TIME_ZONES),
    )


def car_credentials(
    ca: FleetCA, ca_pem: bytes, directory: Path, car_id: str, attributes: dict[str, str]
) -> Credentials:
    """A car's credentials, issued once and cached in ``directory/cars``.

    A cached certificate is reused only when its attributes are the ones asked for.
    """
    cert_path, key_path = car_paths(directory, car_id)
    if cert_path.exists() and key_path.exists():
        cert_pem = cert_path.read_bytes()
        try:
            same = dict(car_identity(cert_pem).attributes) == attributes
        except ValueError as e:
            log.info("cached certificate of %s unusable (%s); issuing a new one", car_id, e)
            same = False
        if same:
            return Credentials(
                ca_pem=ca_pem,
                cert_pem=cert_pem,
                key_pem=key_path.read_bytes(),
                cert_path=cert_path,
                key_path=key_path,
            )
    pair = ca.issue_car(car_id, attributes)
    pair.save(cert_path, key_path)
    return Credentials(
        ca_pem=ca_pem,
        cert_pem=pair.cert_pem,
        key_pem=pair.key_pem,
        cert_path=cert_path,
        key_path=key_path,
    )


def _busy(holder: list[Agent]) -> bool:
    return bool(holder and holder[0].running_tasks)


class SimulatedFleet:
    """N simulated cars.

    Args:
        config: What to simulate.
        compute: Shared compute (default: one ORT pool; rate-limited when ``modelled``).
        metrics: Shared counters for every car.
    """

    def __init__(
        self,
        config: FleetConfig,
        compute: Compute | None = None,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else AgentMetrics()
        start = config.start_unix_ms
        if start is None:
            start = int(time.time() * 1000)
        self.clock = SimClock(start, config.speed)
        self._own_compute: OrtCompute | None = None
        if compute is None:
            # One pool for the whole fleet: CPU use is bounded whatever N is.
            self._own_compute = OrtCompute(intra_op_threads=1, workers=2)
            compute = self._own_compute
        if config.compute == "modelled":
            compute = ModelledCompute(compute, config.modelled_items_per_second)
        if config.corrupt:
            compute = CorruptCompute(compute)
        self.compute = compute
        self.models = ModelCache()  # one verified copy per model for the whole process
        self.traces: list[CarTrace] = []
        self.agents: list[Agent] = []
        #: Each car's true power meter, by index like ``agents``.
        self.meters: list[TrueMeter] = []
        self._runs: list[asyncio.Task[None]] = []
        self._metering: asyncio.Task[None] | None = None

    def prepare(self) -> None:
        """Issues (or loads) every car's certificate and builds the agents; ``start`` calls it."""
        cfg = self.config
        ca = FleetCA.load(cfg.certs_dir)
        ca_pem = (cfg.certs_dir / CA_CERT_FILE).read_bytes()
        self.traces = fleet_traces(
            cfg.seed, cfg.cars, cfg.days, cfg.scenario, cfg.mean_stay_s, cfg.mean_drive_s
        )
        providers = ["CPUExecutionProvider"]
        if isinstance(self.compute, OrtCompute):
            providers = self.compute.providers
        for i, trace in enumerate(self.traces):
            car_id = f"{cfg.car_id_prefix}{i:06d}"
            owner = f"{cfg.car_id_prefix}owner-{i // max(1, cfg.cars_per_owner):06d}"
            attrs = {
                "pool": cfg.pool,
                "cell": str(i % max(1, cfg.cells)),
                OWNER_ATTRIBUTE: owner,
                **cfg.extra_attributes,
            }
            creds = car_credentials(ca, ca_pem, cfg.certs_dir, car_id, attrs)
            rng = random.Random(f"{cfg.seed}:policy:{i}")
            policy = owner_policy(rng) if cfg.strict_owners else Policy()
            holder: list[Agent] = []
            nominal = CarPower()
            meter = TrueMeter(TruePower.draw(nominal, random.Random(f"{cfg.seed}:power:{i}")))
            sensors = TraceSensors(
                trace,
                self.clock,
                utc_offset_minutes=policy.utc_offset_minutes,
                time_zone=policy.time_zone,
                busy=functools.partial(_busy, holder),
                departure_noise=cfg.departure_noise,
                noise_seed=f"{cfg.seed}:{i}",
            )
            agent = Agent(
                AgentConfig(
                    address=cfg.gateway,
                    credentials=creds,
                    car_id=car_id,
                    policy=policy,
                    capabilities=capabilities("sim-gpu", 8192, nominal, providers),
                    telemetry_interval_s=cfg.telemetry_interval_s,
                    max_reconnects=cfg.max_reconnects,
                    server_name_override=cfg.server_name_override,
                ),
                sensors,
                MeteredCompute(self.compute, meter),
                models=self.models,
                metrics=self.metrics,
                rng=random.Random(f"{cfg.seed}:backoff:{i}"),
            )
            holder.append(agent)
            self.agents.append(agent)
            self.meters.append(meter)

    async def start(self) -> None:
        """Issues (or loads) certificates and connects every car, spread over ``ramp_s``."""
        await asyncio.to_thread(self.prepare)
        self._metering = asyncio.create_task(self._meter_loop())
        gap = self.config.ramp_s / max(1, len(self.agents))
        for agent in self.agents:
            self._runs.append(asyncio.create_task(self._run_agent(agent)))
            if gap > 0:
                await asyncio.sleep(gap)

    async def _meter_loop(self) -> None:
        # A pass over every car costs ~µs a car: a large fleet samples less often.
        interval = max(self.config.true_meter_interval_s, len(self.agents) / 20_000)
        try:
            while True:
                self._observe()
                await asyncio.sleep(interval)
        except Exception:  # a bug: the true energy stops counting, said in full
            log.exception("the fleet's true meters stopped")

    def _observe(self) -> None:
        for agent, meter in zip(self.agents, self.meters, strict=True):
            meter.observe(bool(agent.running_tasks))

    def true_energy_wh(self) -> float:
        """Every car's true energy at the socket so far, in Wh."""
        return sum(m.wh for m in self.meters)

    def true_energy_wh_by_car(self) -> dict[str, float]:
        """Each car's true energy at the socket so far, in Wh, by car id."""
        return {a.config.car_id: m.wh for a, m in zip(self.agents, self.meters, strict=True)}

    async def _run_agent(self, agent: Agent) -> None:
        try:
            await agent.run()
        except Withdrawn as e:
            log.info("%s", e)
        except (LinkRefused, GaveUp) as e:
            log.warning("car %s stopped: %s", agent.config.car_id, e)
        except Exception:  # a bug: this car stops, the others go on; said in full
            log.exception("car %s failed", agent.config.car_id)

    async def wait_connected(self, count: int | None = None, timeout_s: float = 60.0) -> int:
        """Waits until ``count`` cars (default all) are connected, or the timeout passes."""
        want = len(self.agents) if count is None else count
        waits = [asyncio.create_task(a.connected.wait()) for a in self.agents]
        seen = 0
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    for fut in asyncio.as_completed(waits):
                        await fut
                        seen += 1
                        if seen >= want:
                            break
        finally:
            for w in waits:
                w.cancel()
        return self.stats().connected

    def set_consent(self, car: int | str, consent: ConsentName) -> None:
        """Sets a car's owner consent (by index or car id), as its owner would on the car.

        Raises:
            KeyError: No such car.
        """
        if isinstance(car, int):
            agent = self.agents[car]
        else:
            found = [a for a in self.agents if a.config.car_id == car]
            if not found:
                raise KeyError(car)
            agent = found[0]
        agent.set_consent(consent)

    def stats(self) -> FleetStats:
        """Counts over every car."""
        done = failed = 0
        for agent in self.agents:
            for record in agent.outcomes:
                if record.outcome.done:
                    done += 1
                else:
                    failed += 1
        return FleetStats(
            cars=len(self.agents),
            connected=sum(a.connected.is_set() for a in self.agents),
            busy=sum(bool(a.running_tasks) for a in self.agents),
            tasks_done=done,
            tasks_failed=failed,
            refusals=sum(len(a.refusals) for a in self.agents),
            items=self.metrics.registry.get_sample_value("parkfleet_agent_items_total") or 0.0,
        )

    async def stop(self) -> None:
        """Stops every car (running tasks report a retriable stop) and waits for them."""
        for agent in self.agents:
            agent.stop()
        if self._runs:
            await asyncio.gather(*self._runs, return_exceptions=True)
        if self._metering is not None:
            self._metering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._metering
            self._metering = None
            self._observe()  # the last stretch, up to the cars' stop
        if self._own_compute is not None:
            self._own_compute.close()

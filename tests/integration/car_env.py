"""Shared setup for the car-side integration tests: a real gateway, real agents, real certs.

Nothing here is a fake: the gateway is ``parkfleet.gateway.Gateway`` listening on
127.0.0.1 with mTLS, agents are ``parkfleet.vehicle.Agent`` (in-process) or
``parkfleet agent`` subprocesses, and inference is ONNX Runtime on the digits model.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parkfleet.certs import FleetCA, KeyPair
from parkfleet.energymodel import CarPower
from parkfleet.gateway import Gateway, MemorySink, ModelRef, TaskEvent, TaskSpec
from parkfleet.models.digits import DigitsModel, build_digits
from parkfleet.policy import Policy
from parkfleet.vehicle import Agent, AgentConfig, Credentials, MutableSensors, OrtCompute, Sensors
from parkfleet.vehicle.link import capabilities

from .gateway_env import start_gateway

REPO = Path(__file__).resolve().parents[2]
POOL = "cars"
CELL = f"{POOL}-0"


def digits() -> DigitsModel:
    """The digits model, built once into the repo's cache (as ``make`` does)."""
    return build_digits(REPO / ".cache" / "models")


class SlowInput:
    """Inputs from an array, each read taking a while (a slow volume).

    It keeps a task running long enough to be interrupted, without touching the link.
    """

    def __init__(self, array: np.ndarray, delay_s: float) -> None:
        self.array = array
        self.delay_s = delay_s

    async def read(self, start: int, end: int) -> np.ndarray:
        await asyncio.sleep(self.delay_s)
        return self.array[start:end]


class Events:
    """Collects every task event of a gateway while a test runs, each with the time it
    was seen (``time.monotonic()`` of the gateway's process: the tests run it in theirs).
    """

    def __init__(self, gateway: Gateway) -> None:
        self.events: list[TaskEvent] = []
        self.seen_at: list[float] = []
        self._changed = asyncio.Event()
        stream = gateway.events()
        self._task = asyncio.get_running_loop().create_task(self._collect(stream))

    async def _collect(self, stream: AsyncIterator[TaskEvent]) -> None:
        async for e in stream:
            self.events.append(e)
            self.seen_at.append(time.monotonic())
            self._changed.set()

    def at(self, event: TaskEvent) -> float:
        """When ``event`` (one of :attr:`events`) was seen."""
        return self.seen_at[next(i for i, e in enumerate(self.events) if e is event)]

    def of(self, kind: str, task_id: str | None = None) -> list[TaskEvent]:
        return [e for e in self.events if e.kind == kind and task_id in (None, e.task_id)]

    async def wait(
        self, predicate: Callable[[TaskEvent], bool], timeout_s: float = 60.0
    ) -> TaskEvent:
        """The first event (past or future) matching ``predicate``."""
        async with asyncio.timeout(timeout_s):
            while True:
                for e in self.events:
                    if predicate(e):
                        return e
                self._changed.clear()
                await self._changed.wait()

    async def ended(self, task_id: str, timeout_s: float = 60.0) -> TaskEvent:
        return await self.wait(
            lambda e: e.task_id == task_id and e.kind in ("succeeded", "failed", "cancelled"),
            timeout_s,
        )


@dataclass
class CarEnv:
    """A running gateway, its CA and certificate folder."""

    ca: FleetCA
    gateway: Gateway
    certs: Path
    events: Events
    agents: list[Agent] = field(default_factory=list)
    runs: list[asyncio.Task[None]] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def pair(self, car_id: str) -> KeyPair:
        return self.ca.issue_car(car_id, {"pool": POOL})

    def start_agent(
        self,
        car_id: str,
        policy: Policy | None = None,
        sensors: Sensors | None = None,
        compute: Any = None,
    ) -> Agent:
        """An in-process agent, running until the env stops."""
        pair = self.pair(car_id)
        compute = compute or OrtCompute(intra_op_threads=1)
        agent = Agent(
            AgentConfig(
                address=self.gateway.address,
                credentials=Credentials(self.ca.cert_pem, pair.cert_pem, pair.key_pem),
                car_id=car_id,
                policy=policy or Policy(),
                capabilities=capabilities("test-gpu", 8192, CarPower(), ["CPUExecutionProvider"]),
                max_reconnects=5,
                backoff_base_s=0.05,
            ),
            sensors or MutableSensors(),
            compute,
        )
        self.agents.append(agent)
        self.runs.append(asyncio.get_running_loop().create_task(agent.run()))
        return agent

    def spawn_agent(
        self, car_id: str, *extra: str, wrap: Sequence[str] = ()
    ) -> subprocess.Popen[bytes]:
        """A real ``parkfleet agent`` process (its command after ``wrap``: e.g. the
        ``ip netns exec NS`` of :meth:`netns_env.CarLink.wrap`)."""
        pair = self.pair(car_id)
        cert, key = self.certs / f"{car_id}.crt", self.certs / f"{car_id}.key"
        pair.save(cert, key)
        proc = subprocess.Popen(
            [
                *wrap,
                sys.executable,
                "-m",
                "parkfleet.cli",
                "agent",
                "--gateway",
                self.gateway.address,
                "--cert",
                str(cert),
                "--key",
                str(key),
                "--ca",
                str(self.certs / "ca.crt"),
                "--max-reconnects",
                "3",
                "--log-level",
                "warning",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.procs.append(proc)
        return proc

    async def wait_eligible(self, count: int, timeout_s: float = 30.0) -> None:
        async with asyncio.timeout(timeout_s):
            while True:
                cap = self.gateway.capacity(CELL)
                if cap.cars_eligible >= count:
                    return
                await asyncio.sleep(0.02)

    async def wait_connected(self, count: int, timeout_s: float = 60.0) -> None:
        """Until exactly ``count`` cars are connected."""
        async with asyncio.timeout(timeout_s):
            while True:
                if self.gateway.capacity(CELL).cars_connected == count:
                    return
                await asyncio.sleep(0.02)

    async def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for agent in self.agents:
            agent.stop()
        await asyncio.gather(*self.runs, return_exceptions=True)
        for proc in self.procs:
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
            if proc.stderr is not None:
                proc.stderr.close()
        await self.gateway.stop(0)


async def start_env(
    tmp_path: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost"), **config: Any
) -> CarEnv:
    """A gateway (``config``: its :class:`GatewayConfig`) whose certificate names ``hosts``."""
    ca = FleetCA.create()
    certs = tmp_path / "certs"
    ca.save(certs)
    gateway = (await start_gateway(tmp_path, ca, hosts=hosts, **config)).gateway
    return CarEnv(ca=ca, gateway=gateway, certs=certs, events=Events(gateway))


def digits_task(
    task_id: str,
    model: ModelRef,
    inputs: Any,
    items: int,
    sink: MemorySink,
    **kw: Any,
) -> TaskSpec:
    base: dict[str, Any] = {
        "task_id": task_id,
        "cell": CELL,
        "runtime": "onnxruntime",
        "model": model,
        "input_name": "input",
        "output_names": ("label", "probabilities"),
        "batch_size": 64,
        "item_start": 0,
        "item_end": items,
        "inputs": inputs,
        "sink": sink,
        "checkpoint_interval_s": 0.2,
    }
    base.update(kw)
    return TaskSpec(**base)

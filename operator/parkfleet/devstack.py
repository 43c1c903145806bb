"""The whole of parkfleet on one machine, as separate processes: for the demo and tests.

A :class:`DevStack` prepares a working folder (fleet CA and gateway certificate, the
digits model, the gateway's data root) and starts the operator, a gateway with its
node agent, a simulated fleet and single real agents as child processes, each with
its own log. ``make demo`` and the end-to-end tests use it, so both exercise the same
commands a person would type.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from parkfleet.certs import FleetCA, car_paths
from parkfleet.contract import data_area
from parkfleet.devcluster import die_with_parent
from parkfleet.models.digits import DigitsModel, build_digits
from parkfleet.pidfiles import PidFile, terminate

__all__ = [
    "ADMISSION_WEBHOOK",
    "REVOCATIONS",
    "DevStack",
    "Proc",
    "StackError",
    "free_port",
    "stop_recorded",
]

log = logging.getLogger(__name__)

# SIGTERM to SIGKILL: the operator and the gateway stop within 8 s of SIGTERM, even with
# the API server gone (parkfleet.stopping); SIGKILL is the last resort.
STOP_TIMEOUT_S = 15.0

# The ValidatingWebhookConfiguration a local operator keeps pointing at itself.
ADMISSION_WEBHOOK = "admission.parkfleet.io"
# The ConfigMap of revoked cars the stack's gateways watch (`parkfleet certs revoke --configmap`).
REVOCATIONS = "default/parkfleet-revocations"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a process about to listen on it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


REPO_ROOT = Path(__file__).resolve().parents[2]


class StackError(RuntimeError):
    """A process of the stack did not start; the message ends with its log."""


@dataclass
class Proc:
    """One process of the stack.

    Attributes:
        name: Short name (also its log's name).
        popen: The process.
        log: Its combined stdout and stderr.
        record: Its pid file (what ``stop_recorded`` finds it by).
    """

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    offset: int = 0  # where this run's output starts in the (appended) log
    record: PidFile | None = None

    def alive(self) -> bool:
        """Whether it still runs."""
        return self.popen.poll() is None

    def text(self) -> str:
        """What this run of it has logged so far."""
        if not self.log.exists():
            return ""
        with self.log.open("rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")

    def wait_for_line(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """Waits until its log has a line matching ``pattern``.

        Raises:
            StackError: It exited first, or the line did not come in time.
        """
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = rx.search(self.text())
            if m:
                return m
            if not self.alive():
                raise StackError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")
            time.sleep(0.1)
        raise StackError(f"{self.name}: no line /{pattern}/ after {timeout:.0f}s:\n{self.tail()}")

    def tail(self, lines: int = 25) -> str:
        """The last lines of its log."""
        return "\n".join(self.text().splitlines()[-lines:])

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL (logged) if it still runs after ``timeout``."""
        terminate(self.name, self.popen.pid, self.alive, timeout, group=True)
        if self.record is not None:
            self.record.remove()

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to say goodbye (a car driving off)."""
        if self.alive():
            self.popen.kill()
            self.popen.wait()
        if self.record is not None:
            self.record.remove()


@dataclass
class DevStack:
    """parkfleet's processes on one machine.

    Args:
        root: Working folder (certificates, model store, data root, logs).
        kubeconfig: The cluster to use.
        telemetry_interval_s: How often cars report (short in tests).
        detach: Let the processes outlive this one (``make demo --keep``).
    """

    root: Path
    kubeconfig: Path
    telemetry_interval_s: float = 2.0
    detach: bool = False
    procs: dict[str, Proc] = field(default_factory=dict)
    gateway_address: str = ""
    kubelet_port: int = 0
    admission_port: int = 0
    model: DigitsModel | None = None

    @property
    def certs(self) -> Path:
        """Fleet CA, gateway certificate, car certificates."""
        return self.root / "fleet"

    @property
    def data(self) -> Path:
        """The gateway's data root: task inputs and results, one area per namespace."""
        return self.root / "data"

    def area(self, namespace: str = "default") -> Path:
        """A namespace's area of the data root: the paths its pods and jobs name."""
        return self.data / data_area(namespace)

    @property
    def logs(self) -> Path:
        """One log per process."""
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        """One pid file per running process (``stop_recorded`` stops what they name)."""
        return pid_dir(self.root)

    def env(self) -> dict[str, str]:
        """The environment of every process: the cluster's kubeconfig, unbuffered output."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}

    def prepare(
        self, models_dir: Path | None = None, namespaces: Sequence[str] = ("default",)
    ) -> DigitsModel:
        """Creates the fleet CA and gateway certificate, builds the model, and lays out the
        digits inputs (``digits/inputs.npy``, ``digits/labels.npy``) in each namespace's
        area of the data root."""
        self.logs.mkdir(parents=True, exist_ok=True)
        if not (self.certs / "ca.crt").exists():
            ca = FleetCA.create()
            ca.save(self.certs)
            ca.issue_gateway(["127.0.0.1", "localhost"]).save(
                self.certs / "gateway.crt", self.certs / "gateway.key"
            )
        self.model = build_digits(models_dir or REPO_ROOT / ".cache" / "models")
        for namespace in namespaces:
            inputs = self.area(namespace) / "digits" / "inputs.npy"
            inputs.parent.mkdir(parents=True, exist_ok=True)
            if not inputs.exists():
                shutil.copyfile(self.model.directory / "digits_inputs.npy", inputs)
                shutil.copyfile(
                    self.model.directory / "digits_labels.npy", inputs.with_name("labels.npy")
                )
        return self.model

    def labels(self) -> np.ndarray:
        """The true labels of the digits inputs (for accuracy)."""
        labels: np.ndarray = np.load(self.area() / "digits" / "labels.npy")
        return labels

    def _spawn(self, name: str, args: Sequence[str], entry: Sequence[str] = ()) -> Proc:
        """Starts ``parkfleet ARGS`` (or ``python ENTRY ARGS``) as ``name``."""
        log = self.logs / f"{name}.log"
        offset = log.stat().st_size if log.exists() else 0
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [sys.executable, *(entry or ("-m", "parkfleet.cli")), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=self.root,
                start_new_session=True,
                preexec_fn=None if self.detach else die_with_parent,
            )
        record = PidFile.write(self.pids / f"{name}.pid", popen.pid)
        proc = Proc(name, popen, log, offset, record)
        old = self.procs.get(name)
        if old is not None and old.alive():
            old.stop()
        self.procs[name] = proc
        return proc

    def start_operator(self, metrics_port: int | None = None, extra: Sequence[str] = ()) -> Proc:
        """``parkfleet operator`` with its admission webhook (on the same port across
        restarts), serving ``/metrics`` on ``metrics_port`` when given, with ``extra``
        arguments; waits until the webhook is configured."""
        self.admission_port = self.admission_port or free_port()
        extra = [*extra, *([f"--metrics-port={metrics_port}"] if metrics_port is not None else [])]
        proc = self._spawn(
            "operator",
            [
                "operator",
                f"--admission-port={self.admission_port}",
                "--admission-addr=127.0.0.1",
                f"--admission-manage={ADMISSION_WEBHOOK}",
                "--metrics-addr=127.0.0.1",
                *extra,
            ],
        )
        proc.wait_for_line(r"Reconfiguring the validating webhook", timeout=60)
        return proc

    def start_gateway(self, *extra: str, entry: Sequence[str] = ()) -> Proc:
        """``parkfleet gateway`` (shard 0) with its node agent; waits until it serves.

        Args:
            entry: Run ``python ENTRY gateway ...`` instead (a benchmark's own gateway).
        """
        proc, address, kubelet_port = self._gateway(
            "gateway", self.gateway_address or "127.0.0.1:0", self.kubelet_port, extra, entry
        )
        # Keep the same ports on restart: cars reconnect to the same address.
        self.gateway_address, self.kubelet_port = address, kubelet_port
        return proc

    def start_shard(self, shard: int, listen: str, *extra: str) -> Proc:
        """Another gateway shard (``gateway-N``), listening on ``listen``."""
        proc, _, _ = self._gateway(f"gateway-{shard}", listen, 0, (f"--shard={shard}", *extra))
        return proc

    def _gateway(
        self,
        name: str,
        listen: str,
        kubelet_port: int,
        extra: Sequence[str],
        entry: Sequence[str] = (),
    ) -> tuple[Proc, str, int]:
        assert self.model is not None, "prepare() first"
        proc = self._spawn(
            name,
            [
                "gateway",
                f"--listen={listen}",
                f"--certs={self.certs}",
                f"--models={self.root / 'store'}",
                f"--model=digits={self.model.model_path}",
                f"--kubeconfig={self.kubeconfig}",
                f"--data-dir={self.data}",
                f"--kubelet-port={kubelet_port}",
                f"--telemetry-interval-s={self.telemetry_interval_s}",
                f"--telemetry-timeout-s={max(3 * self.telemetry_interval_s, 3.0)}",
                "--metrics-addr=127.0.0.1",
                f"--revocations-configmap={REVOCATIONS}",
                *extra,
            ],
            entry,
        )
        deadline = time.monotonic() + 60
        while True:
            text = proc.text()
            m = re.search(r"node agent: shard \d+, kubelet API port (\d+)", text)
            a = re.search(r"listening on (\S+)", text)
            if m and a:
                return proc, a.group(1), int(m.group(1))
            if not proc.alive() or time.monotonic() > deadline:
                raise StackError(f"{name} did not start:\n{proc.tail()}")
            time.sleep(0.1)

    def start_fleet(
        self,
        cars: int,
        cells: int,
        pool: str = "demo",
        *,
        scenario: str = "parked",
        speed: float = 1.0,
        prefix: str = "sim-",
        name: str = "fleet",
        extra: Sequence[str] = (),
        start_hour: float | None = 18.0,
    ) -> Proc:
        """``parkfleet simulate``: ``cars`` simulated cars of ``pool`` over ``cells``.

        The simulated clock starts at ``start_hour`` (UTC, today), not at the wall clock's
        hour: a fifth of the simulated owners block 07-09 in their own time zone
        (``parkfleet.sim.fleet.OWNER_TIME_ZONES``), so a fleet started at the wall clock's
        time would offer fewer cars at some hours of the day than at others. 18:00 UTC
        leaves more than three hours before any owner's blocked window on any day of the
        year, summer time included (Tokyo's 07:00 is 22:00 UTC; Los Angeles' 09:00 in
        winter is 17:00 UTC). None starts at the wall clock's time.
        """
        when = [] if start_hour is None else [f"--start-hour={start_hour:g}"]
        return self._spawn(
            name,
            [
                "simulate",
                f"--cars={cars}",
                f"--cells={cells}",
                f"--pool={pool}",
                f"--gateway={self.gateway_address}",
                f"--certs={self.certs}",
                f"--scenario={scenario}",
                f"--speed={speed}",
                f"--car-prefix={prefix}",
                f"--telemetry-interval={self.telemetry_interval_s}",
                "--ramp=1",
                "--report-every=5",
                *when,
                *extra,
            ],
        )

    def start_agent(self, car_id: str, attributes: Mapping[str, str], sensors: str = "") -> Proc:
        """One real ``parkfleet agent`` process (a car of its own)."""
        cert, key = car_paths(self.certs, car_id)
        if not cert.exists():
            FleetCA.load(self.certs).issue_car(car_id, attributes).save(cert, key)
        args = [
            "agent",
            f"--gateway={self.gateway_address}",
            f"--cert={cert}",
            f"--key={key}",
            f"--ca={self.certs / 'ca.crt'}",
            f"--telemetry-interval={self.telemetry_interval_s}",
        ]
        if sensors:
            args.append(f"--sensors={sensors}")
        return self._spawn(f"agent-{car_id}", args)

    def stop(self) -> None:
        """Stops every process (cars first, the operator last)."""
        _stop_in_order({name: proc.stop for name, proc in self.procs.items()})


def pid_dir(root: Path) -> Path:
    """Where a stack working in ``root`` keeps its processes' pid files."""
    return root / "pids"


def stop_recorded(root: Path, timeout: float = STOP_TIMEOUT_S) -> list[str]:
    """Stops what a :class:`DevStack` in ``root`` started, by its pid files.

    For a stack started by another process (``make demo DEMO_ARGS=--keep``, then
    ``make demo-down``): the same order and signals as :meth:`DevStack.stop`.

    Returns:
        The names of the processes that were still running, in the order they were stopped.
    """
    records = [r for p in sorted(pid_dir(root).glob("*.pid")) if (r := PidFile.read(p))]
    live = {p.path.stem: p for p in records if p.running()}
    for record in records:
        if record.path.stem not in live:
            record.remove()  # it ended on its own (or the machine restarted)
    return _stop_in_order(
        {name: functools.partial(_stop_record, record, timeout) for name, record in live.items()}
    )


def _stop_record(record: PidFile, timeout: float) -> None:
    terminate(record.path.stem, record.pid, record.running, timeout, group=True)
    record.remove()


def _stop_in_order(stops: Mapping[str, Callable[[], None]]) -> list[str]:
    # Cars first, then the gateway, the operator last; every one is tried even if one fails.
    last = ("gateway", "operator")
    order = sorted(stops, key=lambda n: last.index(n) if n in last else -1)
    failed: list[BaseException] = []
    for name in order:
        try:
            stops[name]()
        except Exception as exc:  # stop the others, then let it be seen
            log.exception("stopping %s failed", name)
            failed.append(exc)
    if failed:
        raise failed[0]
    return order

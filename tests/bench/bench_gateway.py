"""Gateway benchmark: cars per core (one process; several on one core), and dims bombs.

Not a test (pytest does not collect ``bench_*.py``). Run ``make bench-gateway`` or
``.venv/bin/python tests/bench/bench_gateway.py [--ramp 1000,5000,10000]``.

What runs:
- the gateway (the real ``parkfleet.gateway.Gateway``, in its own process pinned to
  one core; in-process so the benchmark can submit tasks through its API);
- lightweight protocol clients (each car: its own certificate, its own mTLS channel
  and stream, Hello, then telemetry every ``--interval`` s spread over the period),
  in one or more processes pinned to the other cores. They are NOT the real vehicle
  agent: thousands of agents would not fit on the benchmark machine;
- one probe car in pool ``rtt`` that answers tiny tasks, for the task round trip.

What it measures, per step of the ramp:
- ``telemetry_p99_ms``: p99 of the gateway's ``parkfleet_gateway_telemetry_age_seconds``
  histogram (car timestamp -> processed by the gateway; one-way latency including
  queueing in the gateway; same clock on both sides here). The protocol has no
  telemetry acknowledgement, so this is measured on the gateway side. Quantiles are
  interpolated inside histogram buckets (like PromQL's histogram_quantile).
- ``processing_p99_ms``: gateway CPU time per telemetry message (same method).
- ``memory_per_car_kib``: (gateway RSS now - RSS before any car) / cars.
- ``task_rtt_p50_ms`` / ``task_rtt_p99_ms``: submit -> succeeded event of a 1-item task
  (offer, accept, input, result, checkpoint, done) over loopback, while the load runs.

Baseline, measured in the same run (``--floor N``, 5,000 cars): the same clients against a
bare ``grpc.aio`` server of the same service and options that only answers Hello with
Welcome and reads on (``grpc_floor``), once with the gateway's mTLS and once in
plaintext. Its memory per connection is what grpcio itself costs (for TLS, BoringSSL's
buffer pair and gRPC's frame buffer are allocated per connection at fixed sizes); the
gateway's ``memory_per_car_kib`` less that floor is what parkfleet adds.

Equivalent load (``--equivalent 50000``): one process cannot hold 50,000 connections here
(the sandbox's hard limit on open files is 20,000 and cannot be raised), so a second pass
runs the largest ramp step with the telemetry period shortened until its message rate
equals that many cars at ``--interval``. It shows the CPU and latency side of that target,
not its memory (that is ``memory_per_car_kib`` times cars).

Dims bomb (``--dims-bomb CARS``, in ``gateway_passes.py``): the same gateway process with
that many honest cars, their telemetry p50/p99 (the same histogram method) over a window
without an attacker, then over an equal window while ``--dims-bomb-rogues`` rogue cars
(``tests/rogue_car.py``, real mTLS, a certificate each) send 2 MiB dims bombs on stream after
stream until the window ends; with bombs sent and refused (INVALID_ARGUMENT), the gateway's
CPU share and its CPU time per bomb. JSON key ``dims_bomb``.

One core past the open-file limit (``--one-core-processes K --one-core-cars T1,T2``, in
``gateway_passes.py``): K gateway processes, each on its own port and under 20,000 cars, ALL
pinned to the gateway core; per total of the ramp: cars per process, telemetry p99 per
process and its max, the core's busy share, memory per car; ``cars_per_core_multi`` is the
largest total whose every process kept p99 within ``GOAL_P99_MS``. JSON key ``one_core``.

``--ramp ''`` skips the single-process ramp (and ``--floor``, ``--equivalent``): the other
passes then update only their own keys of the JSON.

Writes ``.cache/bench/gateway.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / ".cache" / "bench" / "gateway.json"
# Run as a script: the lightweight cars (tests/carlink_probe.py) import from the repo root.
sys.path.insert(0, str(ROOT))
GOAL_P99_MS = 50.0


# ---- shared helpers ------------------------------------------------------------------


def rss_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def pin(cores: set[int]) -> None:
    if cores:
        os.sched_setaffinity(0, cores)


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


# ---- server role: the gateway ----------------------------------------------------------


def buckets(histogram: Any) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) pairs of an unlabelled histogram."""
    out = []
    for metric in histogram.collect():
        for s in metric.samples:
            if s.name.endswith("_bucket"):
                out.append((float(s.labels["le"]), s.value))
    return sorted(out)


def quantile(
    q: float, before: list[tuple[float, float]], after: list[tuple[float, float]]
) -> float:
    """histogram_quantile over the difference of two cumulative bucket snapshots."""
    delta = [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=True)]
    total = delta[-1][1] if delta else 0
    if total <= 0:
        return math.nan
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in delta:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            span = count - prev_count
            frac = (rank - prev_count) / span if span > 0 else 1.0
            return prev_le + (le - prev_le) * frac
        prev_le, prev_count = le, count
    return prev_le


def violations(metrics: Any) -> float:
    """Streams the gateway closed as protocol violations so far."""
    value = metrics.registry.get_sample_value(
        "parkfleet_gateway_streams_closed_total", {"reason": "ProtocolViolation"}
    )
    return float(value or 0.0)


class GcPauses:
    """Pauses of this process's garbage collector (a full collection stalls every car)."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._start = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        elif info["generation"] == 2:
            self.pauses.append(time.perf_counter() - self._start)

    def since(self, mark: int) -> dict[str, Any]:
        """Full collections after ``mark`` (a length of ``pauses``): count, longest in ms."""
        new = self.pauses[mark:]
        return {"gc_full": len(new), "gc_full_max_ms": round(max(new, default=0.0) * 1000, 1)}


async def server_main(args: argparse.Namespace) -> None:
    from parkfleet.gateway import ArrayInput, Gateway, GatewayConfig, MemorySink, TaskSpec
    from parkfleet.taskport import ModelRef

    raise_nofile()
    config = GatewayConfig.from_certs_dir(
        Path(args.certs),
        Path(args.models),
        listen="127.0.0.1:0",
        telemetry_interval_s=args.interval,
        telemetry_timeout_s=args.interval * 3,
        hello_timeout_s=60,
        grpc_options=[tuple(json.loads(o)) for o in args.grpc_option],
    )
    gw = Gateway(config)
    await gw.start()
    emit({"listening": gw.address, "rss_kib": rss_kib()})
    metrics = gw.metrics
    gc_pauses = GcPauses()
    snap: dict[str, Any] = {}
    events = gw.events()
    reader = await stdin_reader()
    seq = 0
    while True:
        line = (await reader.readline()).decode().strip()
        if not line or line == "quit":
            break
        cmd, *rest = line.split()
        if cmd == "cars":
            emit({"cars": len(gw.registry.cars), "rss_kib": rss_kib()})
        elif cmd == "snap":
            snap = {
                "t": time.monotonic(),
                "cpu": time.process_time(),
                "age": buckets(metrics.telemetry_age),
                "proc": buckets(metrics.telemetry_seconds),
                "violations": violations(metrics),
                "gc": len(gc_pauses.pauses),
            }
            emit({"ok": True})
        elif cmd == "window":
            age, proc = buckets(metrics.telemetry_age), buckets(metrics.telemetry_seconds)
            seconds = time.monotonic() - snap["t"]
            count = age[-1][1] - snap["age"][-1][1]
            emit(
                {
                    "cars": len(gw.registry.cars),
                    "rss_kib": rss_kib(),
                    "telemetry_per_s": count / seconds,
                    "cpu_share": (time.process_time() - snap["cpu"]) / seconds,
                    "age_p50_ms": quantile(0.5, snap["age"], age) * 1000,
                    "age_p99_ms": quantile(0.99, snap["age"], age) * 1000,
                    "proc_p50_ms": quantile(0.5, snap["proc"], proc) * 1000,
                    "proc_p99_ms": quantile(0.99, snap["proc"], proc) * 1000,
                    # For quantiles over several gateways (the one-core pass).
                    "age_before": snap["age"],
                    "age_after": age,
                    "violations": violations(metrics) - snap["violations"],
                    **gc_pauses.since(snap["gc"]),
                }
            )
        elif cmd == "rtt":
            n = int(rest[0])
            times = []
            for _ in range(n):
                seq += 1
                task_id = f"rtt-{seq}"
                spec = TaskSpec(
                    task_id=task_id,
                    cell="rtt-0",
                    runtime="onnxruntime",
                    model=ModelRef(sha256="0" * 64),
                    input_name="x",
                    output_names=("y",),
                    batch_size=1,
                    item_start=0,
                    item_end=1,
                    inputs=ArrayInput(np.ones((1, 4), np.float32)),
                    sink=MemorySink(),
                    car_wait_s=30,
                )
                t0 = time.perf_counter()
                await gw.submit(spec)
                async for e in events:
                    if e.task_id == task_id and e.kind in ("succeeded", "failed"):
                        break
                times.append((time.perf_counter() - t0) * 1000)
                gw.release(task_id)
            emit(
                {
                    "rtt_p50_ms": float(np.percentile(times, 50)),
                    "rtt_p99_ms": float(np.percentile(times, 99)),
                }
            )
    await gw.stop(1.0)


async def bare_main(args: argparse.Namespace) -> None:
    """A bare grpc.aio CarLink server: Welcome for a Hello, then reads; nothing else."""
    from parkfleet.protocol import carlink_pb2 as pb
    from parkfleet.protocol import carlink_pb2_grpc
    from parkfleet.protocol.limits import PROTOCOL_VERSION, server_options

    raise_nofile()
    streams = 0
    welcome = pb.GatewayMessage(welcome=pb.Welcome(protocol_version=PROTOCOL_VERSION))

    class Bare(carlink_pb2_grpc.CarLinkServicer):
        async def Connect(  # type: ignore[override]  # read/write handler, no iterator
            self, request_iterator: Any, context: Any
        ) -> None:
            nonlocal streams
            await context.read()
            await context.write(welcome)
            streams += 1
            try:
                while await context.read() is not grpc.aio.EOF:
                    pass
            finally:
                streams -= 1

    server = grpc.aio.server(options=server_options())
    carlink_pb2_grpc.add_CarLinkServicer_to_server(Bare(), server)  # type: ignore[abstract]
    if args.plaintext:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        certs = Path(args.certs)
        creds = grpc.ssl_server_credentials(
            [((certs / "gateway.key").read_bytes(), (certs / "gateway.crt").read_bytes())],
            root_certificates=(certs / "ca.crt").read_bytes(),
            require_client_auth=True,
        )
        port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    emit({"listening": f"127.0.0.1:{port}", "rss_kib": rss_kib()})
    reader = await stdin_reader()
    while (line := (await reader.readline()).decode().strip()) not in ("", "quit"):
        if line == "cars":
            emit({"cars": streams, "rss_kib": rss_kib()})
    await server.stop(1.0)


# ---- clients role: lightweight cars ------------------------------------------------------


async def clients_main(args: argparse.Namespace) -> None:
    from parkfleet.certs import FleetCA
    from parkfleet.protocol import carlink_pb2 as pb
    from parkfleet.protocol import carlink_pb2_grpc
    from parkfleet.protocol.limits import MAX_MESSAGE_BYTES, PROTOCOL_VERSION
    from tests.carlink_probe import ProbeCar, parked_telemetry

    raise_nofile()
    ca = FleetCA.load(Path(args.certs))
    ca_pem = ca.cert_pem
    if args.rtt_car:
        pair = ca.issue_car("rtt-car", {"pool": "rtt"})
        car = ProbeCar(args.address, ca_pem, pair)
        await car.connect()
        await car.telemetry()
        emit({"connected": 1, "seconds": 0})
        worker = asyncio.create_task(car.work())
        alive = asyncio.create_task(_keep_alive(car, args.interval))
        await wait_stdin_eof()
        worker.cancel()
        alive.cancel()
        return

    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    hello = pb.CarMessage(
        hello=pb.Hello(
            protocol_version=PROTOCOL_VERSION,
            agent_version="bench",
            capabilities=pb.Capabilities(
                gpu_model="bench", gpu_count=1, gpu_memory_mib=8192, runtimes=["onnxruntime"]
            ),
        )
    )
    calls: list[Any] = []
    senders: list[asyncio.Task[None]] = []
    failures = 0
    sem = asyncio.Semaphore(64)

    async def telemetry(call: Any) -> None:
        # Spread over the period so load is steady, not bursts.
        await asyncio.sleep(random.random() * args.interval)
        msg = pb.CarMessage(telemetry=parked_telemetry())
        while True:
            msg.telemetry.unix_time_ms = int(time.time() * 1000)
            await call.write(msg)
            await asyncio.sleep(args.interval)

    async def connect(i: int) -> None:
        nonlocal failures
        car_id = f"bench-{args.first + i}"
        pair = ca.issue_car(car_id, {"pool": "bench"})
        creds = grpc.ssl_channel_credentials(ca_pem, pair.key_pem, pair.cert_pem)
        async with sem:
            try:
                channel = (
                    grpc.aio.insecure_channel(args.address, options=options)
                    if args.plaintext
                    else grpc.aio.secure_channel(args.address, creds, options=options)
                )
                call = carlink_pb2_grpc.CarLinkStub(channel).Connect()
                await call.write(hello)
                await call.read()  # Welcome
                calls.append((channel, call))
                # Telemetry starts at once: a car silent past the timeout would be dropped.
                senders.append(asyncio.create_task(telemetry(call)))
            except Exception:
                failures += 1

    t0 = time.monotonic()
    await asyncio.gather(*(connect(i) for i in range(args.count)))
    emit({"connected": len(calls), "failed": failures, "seconds": time.monotonic() - t0})

    await wait_stdin_eof()
    for s in senders:
        s.cancel()


async def _keep_alive(car: Any, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        await car.telemetry()


async def stdin_reader() -> asyncio.StreamReader:
    """This process's stdin, to read the driver's commands without blocking the loop."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def wait_stdin_eof() -> None:
    """Returns when the driver closes this process's stdin (its signal to end)."""
    reader = await stdin_reader()
    while await reader.readline():
        pass


# ---- driver -------------------------------------------------------------------------------


class Proc:
    """A child role process, talked to in JSON lines over stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, cores: set[int], *argv: str) -> Proc:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            preexec_fn=lambda: pin(cores),
            env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
        )
        return cls(proc)

    async def read(self, timeout: float = 300) -> dict[str, Any]:  # noqa: ASYNC109
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not line:
                raise RuntimeError(f"child exited ({self.proc.returncode})")
            if line.startswith(b"{"):
                got: dict[str, Any] = json.loads(line)
                return got

    async def ask(self, cmd: str, timeout: float = 300) -> dict[str, Any]:  # noqa: ASYNC109
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.read(timeout)

    async def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def make_certs(work: Path) -> Path:
    """A fleet CA and the gateway's certificate for 127.0.0.1, in ``work/certs``."""
    from parkfleet.certs import FleetCA

    certs = work / "certs"
    ca = FleetCA.create()
    ca.save(certs)
    ca.issue_gateway(["127.0.0.1", "localhost"]).save(certs / "gateway.crt", certs / "gateway.key")
    return certs


async def start_server(
    args: argparse.Namespace, cores: set[int], certs: Path, models: Path, interval: float
) -> tuple[Proc, dict[str, Any]]:
    """A gateway process (the server role) pinned to ``cores``, and its first line."""
    server = await Proc.start(
        cores, "server", "--certs", str(certs), "--models", str(models),
        "--interval", str(interval), *[f"--grpc-option={o}" for o in args.grpc_option],
    )  # fmt: skip
    return server, await server.read()


async def start_clients(
    cores: set[int],
    address: str,
    certs: Path,
    first: int,
    count: int,
    per_proc: int,
    timeout: float,  # noqa: ASYNC109
    *flags: str,
) -> tuple[list[Proc], int]:
    """``count`` lightweight cars (ids from ``first``), ``per_proc`` to a process, connected.

    Returns:
        The client processes and how many connections failed.
    """
    procs: list[Proc] = []
    started = 0
    try:
        while started < count:
            n = min(per_proc, count - started)
            procs.append(
                await Proc.start(
                    cores, "clients", "--address", address, "--certs", str(certs),
                    "--first", str(first + started), "--count", str(n), *flags,
                )
            )  # fmt: skip
            started += n
        failed = 0
        for p in procs:
            failed += (await p.read(timeout=timeout)).get("failed", 0)
    except BaseException:
        for p in procs:
            await p.close()
        raise
    return procs, failed


async def stop_all(server: Proc, clients: list[Proc]) -> None:
    with contextlib.suppress(Exception):
        await server.ask("quit", timeout=30)
    await server.close()
    for c in clients:
        await c.close()


async def driver(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    cpus = sorted(os.sched_getaffinity(0))
    gateway_cores = {cpus[0]}
    client_cores = set(cpus[1:]) or set(cpus)
    ramp = [int(x) for x in args.ramp.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    certs = make_certs(work)
    interval = str(args.interval)

    server, hello = await start_server(args, gateway_cores, certs, work / "models", args.interval)
    address = hello["listening"]
    # Baseline: after start, with the rtt car only (it is not counted per car).
    clients: list[Proc] = [
        await Proc.start(
            client_cores, "clients", "--address", address, "--certs", str(certs),
            "--interval", interval, "--rtt-car",
        )
    ]  # fmt: skip
    await clients[0].read()
    await asyncio.sleep(1.0)
    rss0 = (await server.ask("cars"))["rss_kib"]
    steps: list[dict[str, Any]] = []
    total = 0
    limited_by = "ramp finished"
    try:
        for n in ramp:
            elapsed = time.monotonic() - started
            if elapsed > args.time_cap_s * 0.6 and steps:
                limited_by = f"time cap ({args.time_cap_s:g} s)"
                break
            t0 = time.monotonic()
            new, failed = await start_clients(
                client_cores, address, certs, total, n - total, args.per_proc, args.time_cap_s,
                "--interval", interval,
            )  # fmt: skip
            total = max(total, n)
            clients.extend(new)
            connect_s = time.monotonic() - t0
            # Let a full telemetry period pass so every car is in steady state.
            await asyncio.sleep(args.interval)
            await server.ask("snap")
            await asyncio.sleep(args.interval * 1.5)
            window = await server.ask("window")
            rtt = await server.ask(f"rtt {args.rtt}")
            cars = window["cars"] - 1  # minus the rtt car
            row = {
                "cars": cars,
                "cars_started": total,
                "connect_failed": failed,
                "connect_s": round(connect_s, 1),
                "telemetry_per_s": round(window["telemetry_per_s"], 1),
                "gateway_cpu_share": round(window["cpu_share"], 3),
                "telemetry_p50_ms": round(window["age_p50_ms"], 2),
                "telemetry_p99_ms": round(window["age_p99_ms"], 2),
                "processing_p99_ms": round(window["proc_p99_ms"], 4),
                "gateway_rss_mib": round(window["rss_kib"] / 1024, 1),
                "memory_per_car_kib": round((window["rss_kib"] - rss0) / max(cars, 1), 1),
                "task_rtt_p50_ms": round(rtt["rtt_p50_ms"], 2),
                "task_rtt_p99_ms": round(rtt["rtt_p99_ms"], 2),
            }
            steps.append(row)
            print_row(row, header=len(steps) == 1)
            if failed or cars < total:
                limited_by = (
                    f"{failed} connections failed and {total - failed - cars} cars dropped "
                    f"of {total}"
                )
                break
            if row["telemetry_p99_ms"] > GOAL_P99_MS:
                limited_by = f"telemetry p99 above {GOAL_P99_MS:g} ms"
                break
        else:
            limited_by = "ramp finished (raise --ramp; the fd limit caps one process near 20k)"
    finally:
        await stop_all(server, clients)

    good = [
        s
        for s in steps
        if s["telemetry_p99_ms"] <= GOAL_P99_MS
        and not s["connect_failed"]
        and s["cars"] == s["cars_started"]
    ]
    best = good[-1] if good else (steps[-1] if steps else {})
    return {
        "cars_per_core": best.get("cars", 0) if good else 0,
        "largest_n": steps[-1]["cars"] if steps else 0,
        "limited_by": limited_by,
        "telemetry_p99_ms": best.get("telemetry_p99_ms"),
        "memory_per_car_kib": best.get("memory_per_car_kib"),
        "task_rtt_p50_ms": best.get("task_rtt_p50_ms"),
        "task_rtt_p99_ms": best.get("task_rtt_p99_ms"),
        "telemetry_interval_s": args.interval,
        "gateway_cores": sorted(gateway_cores),
        "client_cores": sorted(client_cores),
        "client_processes": len(clients),
        "machine": {
            "cpus": os.cpu_count(),
            "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        },
        "notes": (
            "clients are lightweight protocol clients (own cert, mTLS channel and stream per "
            "car), not the real vehicle agent; telemetry latency is measured gateway-side from "
            "the car timestamp (no ack in the protocol); gateway and clients share the machine "
            "with other work"
        ),
        "steps": steps,
        "seconds": round(time.monotonic() - started, 1),
    }


async def grpc_floor(args: argparse.Namespace, cars: int) -> dict[str, Any]:
    """Memory per connection of a bare grpc.aio server (mTLS and plaintext), same clients."""
    cpus = sorted(os.sched_getaffinity(0))
    server_cores, client_cores = {cpus[0]}, set(cpus[1:]) or set(cpus)
    certs = make_certs(Path(tempfile.mkdtemp(prefix="bench-gateway-floor-")))
    out: dict[str, Any] = {"cars": cars}
    for mode in ("mtls", "plaintext"):
        flag = ["--plaintext"] if mode == "plaintext" else []
        server = await Proc.start(server_cores, "bare", "--certs", str(certs), *flag)
        clients: list[Proc] = []
        try:
            address = (await server.read())["listening"]
            await asyncio.sleep(1.0)
            rss0 = (await server.ask("cars"))["rss_kib"]
            clients, _ = await start_clients(
                client_cores, address, certs, 0, cars, args.per_proc, args.time_cap_s, *flag
            )
            await asyncio.sleep(2.0)
            got = await server.ask("cars")
            out[f"{mode}_streams"] = got["cars"]
            out[f"{mode}_memory_per_car_kib"] = round(
                (got["rss_kib"] - rss0) / max(got["cars"], 1), 1
            )
        finally:
            await stop_all(server, clients)
    print(
        f"grpc.aio floor at {cars} connections: mTLS {out['mtls_memory_per_car_kib']} KiB, "
        f"plaintext {out['plaintext_memory_per_car_kib']} KiB per connection",
        flush=True,
    )
    return out


def equivalent_load(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    """Reruns the largest step with telemetry as often as ``args.equivalent`` cars send it."""
    cars = int(result["largest_n"])
    interval = round(args.interval * cars / args.equivalent, 3)
    again = argparse.Namespace(**{**vars(args), "ramp": str(cars), "interval": interval})
    print(f"\nequivalent load: {cars} cars, telemetry every {interval} s", flush=True)
    step = asyncio.run(driver(again))["steps"][-1]
    equivalent = round(step["telemetry_per_s"] * args.interval)
    return {
        "cars": step["cars"],
        "interval_s": interval,
        "telemetry_per_s": step["telemetry_per_s"],
        "equivalent_cars": equivalent,
        "telemetry_p50_ms": step["telemetry_p50_ms"],
        "telemetry_p99_ms": step["telemetry_p99_ms"],
        "gateway_cpu_share": step["gateway_cpu_share"],
        "task_rtt_p99_ms": step["task_rtt_p99_ms"],
        "meets_goal": step["telemetry_p99_ms"] <= GOAL_P99_MS
        and step["cars"] == step["cars_started"],
    }


COLUMNS = [
    ("cars", 7), ("connect_s", 9), ("telemetry_per_s", 15), ("gateway_cpu_share", 17),
    ("telemetry_p50_ms", 16), ("telemetry_p99_ms", 16), ("processing_p99_ms", 17),
    ("memory_per_car_kib", 18), ("task_rtt_p50_ms", 15), ("task_rtt_p99_ms", 15),
]  # fmt: skip


def print_row(row: dict[str, Any], header: bool, columns: list[tuple[str, int]] = COLUMNS) -> None:
    """One table row (after the header line when ``header``); lists print as ``a/b``."""

    def cell(value: Any) -> str:
        return "/".join(map(str, value)) if isinstance(value, list) else str(value)

    if header:
        print(" ".join(name.rjust(w) for name, w in columns), flush=True)
    print(" ".join(cell(row[name]).rjust(w) for name, w in columns), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role")
    p = sub.add_parser("server")
    p.add_argument("--certs", required=True)
    p.add_argument("--models", required=True)
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--grpc-option", action="append", default=[])
    p = sub.add_parser("bare")
    p.add_argument("--certs", required=True)
    p.add_argument("--plaintext", action="store_true")
    p = sub.add_parser("clients")
    p.add_argument("--address", required=True)
    p.add_argument("--certs", required=True)
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--rtt-car", action="store_true")
    p.add_argument("--plaintext", action="store_true")
    p = sub.add_parser("rogue")
    p.add_argument("--address", required=True)
    p.add_argument("--certs", required=True)
    p.add_argument("--rogues", type=int, default=1)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--dims-bytes", type=int, default=2**21)
    parser.add_argument(
        "--ramp",
        default="1000,5000,10000,19000",
        help="cars of the single-process steps ('': skip it, and --floor and --equivalent; "
        "the other passes then update the keys they own in the JSON)",
    )
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--per-proc", type=int, default=5000)
    parser.add_argument("--rtt", type=int, default=50)
    parser.add_argument("--time-cap-s", type=float, default=300.0)
    parser.add_argument(
        "--equivalent",
        type=int,
        default=0,
        help="then the largest step at the telemetry rate of this many cars (0: skip)",
    )
    parser.add_argument(
        "--grpc-option", action="append", default=[], help='gateway option as JSON ["k", v]'
    )
    parser.add_argument(
        "--floor",
        type=int,
        default=5000,
        help="connections for the bare grpc.aio memory baseline (0: skip)",
    )
    parser.add_argument(
        "--dims-bomb",
        type=int,
        default=0,
        metavar="CARS",
        help="honest cars beside rogue cars sending dims bombs (0: skip)",
    )
    parser.add_argument("--dims-bomb-rogues", type=int, default=1, help="rogue cars")
    parser.add_argument(
        "--dims-bomb-seconds", type=float, default=20.0, help="each window: without, with"
    )
    parser.add_argument(
        "--dims-bomb-bytes", type=int, default=2**21, help="packed dims in one bomb"
    )
    parser.add_argument(
        "--one-core-processes",
        type=int,
        default=0,
        metavar="K",
        help="gateway processes pinned together to one core (0: skip)",
    )
    parser.add_argument(
        "--one-core-cars",
        default="10000,20000,30000",
        help="totals of that pass's ramp, split evenly over the K processes",
    )
    args = parser.parse_args()
    if args.role == "server":
        asyncio.run(server_main(args))
        return 0
    if args.role == "clients":
        asyncio.run(clients_main(args))
        return 0
    if args.role == "bare":
        asyncio.run(bare_main(args))
        return 0
    from tests.bench import gateway_passes

    if args.role == "rogue":
        asyncio.run(gateway_passes.rogue_main(args))
        return 0
    if args.ramp:
        result = single_process(args)
    else:  # the other keys stay as the last full run left them
        result = json.loads(OUT.read_text()) if OUT.exists() else {}
    if args.dims_bomb:
        result["dims_bomb"] = asyncio.run(gateway_passes.dims_bomb_pass(args))
        gateway_passes.print_dims_bomb(result["dims_bomb"])
    if args.one_core_processes:
        print(
            f"\none core, {args.one_core_processes} gateway processes pinned to it together:",
            flush=True,
        )
        result["one_core"] = asyncio.run(gateway_passes.one_core_pass(args))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    if args.ramp:
        print_summary(args, result)
    bomb = result.get("dims_bomb")
    if args.dims_bomb and bomb:
        print(
            f"dims bomb: {bomb['bombs_sent']} bombs sent, {bomb['bombs_refused']} refused; "
            f"honest telemetry p50/p99 ms {bomb['without']['telemetry_p50_ms']}/"
            f"{bomb['without']['telemetry_p99_ms']} without, "
            f"{bomb['with_bombs']['telemetry_p50_ms']}/{bomb['with_bombs']['telemetry_p99_ms']}"
            f" with ({bomb['with_bombs']['gateway_cpu_ms_per_bomb']} ms of gateway CPU a bomb)"
            f" -> {'meets' if bomb['meets_goal'] else 'misses'} the p99 goal under attack"
        )
    one = result.get("one_core")
    if args.one_core_processes and one:
        print(
            f"one core: cars_per_core_multi={one['cars_per_core_multi']} over "
            f"{one['processes']} processes (largest N {one['largest_n']}, limited by: "
            f"{one['limited_by']})"
        )
    print(f"clients: lightweight protocol clients, not the real agent. wrote {OUT}")
    return 0


def single_process(args: argparse.Namespace) -> dict[str, Any]:
    """The ramp on one gateway process, then its memory floor and equivalent load."""
    result = asyncio.run(driver(args))
    if args.floor:
        floor = result["grpc_floor"] = asyncio.run(grpc_floor(args, args.floor))
        at = next((s for s in result["steps"] if s["cars"] >= args.floor), None)
        if at is not None:
            floor["gateway_memory_per_car_kib_at_same_n"] = at["memory_per_car_kib"]
            floor["parkfleet_adds_kib"] = round(
                at["memory_per_car_kib"] - floor["mtls_memory_per_car_kib"], 1
            )
    if args.equivalent and result["largest_n"]:
        result["equivalent_load"] = equivalent_load(args, result)
    return result


def print_summary(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """The single-process figures in a few lines."""
    print(
        f"\ncars_per_core={result['cars_per_core']} (largest N {result['largest_n']}, "
        f"limited by: {result['limited_by']}); memory_per_car_kib={result['memory_per_car_kib']}; "
        f"task_rtt p50/p99 ms={result['task_rtt_p50_ms']}/{result['task_rtt_p99_ms']}"
    )
    eq = result.get("equivalent_load")
    if eq:
        print(
            f"equivalent load: {eq['cars']} cars at {eq['interval_s']} s = the telemetry rate "
            f"of {eq['equivalent_cars']} cars at {args.interval:g} s: p99 "
            f"{eq['telemetry_p99_ms']} ms, gateway core {eq['gateway_cpu_share']:.0%} busy "
            f"-> {'meets' if eq['meets_goal'] else 'misses'} the p99 goal"
        )
    fl = result.get("grpc_floor")
    if fl:
        print(
            f"memory baseline at {fl['cars']} connections: bare grpc.aio mTLS "
            f"{fl['mtls_memory_per_car_kib']} KiB, plaintext {fl['plaintext_memory_per_car_kib']}"
            f" KiB; the gateway {fl.get('gateway_memory_per_car_kib_at_same_n')} KiB "
            f"(parkfleet adds {fl.get('parkfleet_adds_kib')})"
        )


if __name__ == "__main__":
    sys.exit(main())

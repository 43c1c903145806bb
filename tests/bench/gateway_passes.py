"""Two more passes of the gateway benchmark (``bench_gateway.py``, which runs them).

Dims bomb (``--dims-bomb CARS``): one real gateway process on one core, ``CARS`` honest
lightweight cars on the other core(s), and telemetry latency (the gateway's
``parkfleet_gateway_telemetry_age_seconds``, p50 and p99) measured over two equal windows
of the same run: first with no attacker, then while ``--dims-bomb-rogues`` rogue cars
(``tests/rogue_car.py``: real mTLS, a certificate each) send dims bombs over and over. A
bomb is a result whose one output packs ``--dims-bomb-bytes`` (2 MiB) of dims, as in
``tests/integration/test_gateway_decoding.py``; each goes on a new stream after Hello and
Welcome, and when the gateway closes that stream the rogue opens the next one at once
(on the same channel: no handshake slows the attacker), until the window ends.

One core, several processes (``--one-core-processes K --one-core-cars T1,T2,...``): one
process cannot hold more cars than its open-file limit (20,000 here, a hard limit), so
``K`` real gateway processes, each on its own port, are ALL pinned to the same core (the
benchmark's gateway core), the cars split evenly among them and their clients on the other
core(s). Each total of the ramp is held for a window; the largest total whose worst
per-process telemetry p99 stays within ``GOAL_P99_MS`` is ``cars_per_core_multi``. The
core's busy share comes from ``/proc/stat`` (it counts whatever else runs there), beside
the gateways' own CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import math
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from tests.bench.bench_gateway import (
    GOAL_P99_MS,
    Proc,
    emit,
    make_certs,
    print_row,
    quantile,
    start_clients,
    start_server,
    stdin_reader,
    stop_all,
    wait_stdin_eof,
)

__all__ = ["dims_bomb_pass", "one_core_pass", "print_dims_bomb", "rogue_main"]


def split_cores() -> tuple[set[int], set[int]]:
    """The gateway core (the first this process may use) and the clients' cores."""
    cpus = sorted(os.sched_getaffinity(0))
    return {cpus[0]}, set(cpus[1:]) or set(cpus)


def cpu_jiffies(cores: set[int]) -> tuple[int, int]:
    """(busy, total) clock ticks of ``cores`` since boot, from ``/proc/stat``."""
    busy = total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            ticks = [int(x) for x in fields[:8]]  # guest time is already inside user
            idle = ticks[3] + ticks[4]  # idle, iowait
            busy += sum(ticks) - idle
            total += sum(ticks)
    return busy, total


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share of the ticks between two ``cpu_jiffies`` readings that were busy."""
    total = after[1] - before[1]
    return round((after[0] - before[0]) / total, 3) if total > 0 else math.nan


# ---- dims bomb ------------------------------------------------------------------------------


async def rogue_main(args: argparse.Namespace) -> None:
    """The rogue role: ``--rogues`` cars that, told ``go``, send dims bombs for ``--seconds``."""
    from parkfleet.certs import FleetCA
    from tests.rogue_car import RogueCar, dims_bomb

    ca = FleetCA.load(Path(args.certs))
    payload = dims_bomb(args.dims_bytes)
    cars = [
        RogueCar(args.address, ca.cert_pem, ca.issue_car(f"rogue-{i}", {"pool": "bench"}))
        for i in range(args.rogues)
    ]
    reader = await stdin_reader()
    emit({"ready": len(cars), "bomb_bytes": len(payload)})
    await reader.readline()  # go
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.seconds
    codes: collections.Counter[str] = collections.Counter()
    details: set[str] = set()
    stream_ms: list[float] = []

    async def attack(car: RogueCar) -> None:
        while loop.time() < deadline:
            t0 = time.perf_counter()
            code, why = await car.bomb(payload)
            stream_ms.append((time.perf_counter() - t0) * 1000)
            codes[code.name] += 1
            if len(details) < 4:
                details.add(why)

    overran = False
    try:
        # Bounded even if the gateway kept a bomb's stream open: its telemetry timeout ends it.
        async with asyncio.timeout(args.seconds + 60):
            await asyncio.gather(*(attack(c) for c in cars))
    except TimeoutError:
        overran = True
    for car in cars:
        await car.close()
    sent = sum(codes.values())
    emit(
        {
            "bombs_sent": sent,
            "bombs_refused": codes.get(grpc.StatusCode.INVALID_ARGUMENT.name, 0),
            "codes": dict(codes),
            "details": sorted(details),
            "bomb_bytes": len(payload),
            "seconds": args.seconds,
            "overran": overran,
            "stream_p50_ms": round(float(sorted(stream_ms)[len(stream_ms) // 2]), 2)
            if stream_ms
            else None,
        }
    )
    await wait_stdin_eof()


def _window_row(window: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {
        "seconds": seconds,
        "cars": window["cars"],
        "telemetry_per_s": round(window["telemetry_per_s"], 1),
        "telemetry_p50_ms": round(window["age_p50_ms"], 2),
        "telemetry_p99_ms": round(window["age_p99_ms"], 2),
        "processing_p99_ms": round(window["proc_p99_ms"], 4),
        "gateway_cpu_share": round(window["cpu_share"], 3),
        "protocol_violations": int(window["violations"]),
        "gc_full": window["gc_full"],
        "gc_full_max_ms": window["gc_full_max_ms"],
    }


async def dims_bomb_pass(args: argparse.Namespace) -> dict[str, Any]:
    """Honest cars' telemetry latency without, then with, rogue cars sending dims bombs."""
    started = time.monotonic()
    gateway_cores, client_cores = split_cores()
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-bomb-"))
    certs = make_certs(work)
    seconds = args.dims_bomb_seconds
    server, hello = await start_server(args, gateway_cores, certs, work / "models", args.interval)
    address = hello["listening"]
    clients: list[Proc] = []
    try:
        clients, failed = await start_clients(
            client_cores, address, certs, 0, args.dims_bomb, args.per_proc, args.time_cap_s,
            "--interval", str(args.interval),
        )  # fmt: skip
        rogue = await Proc.start(
            client_cores, "rogue", "--address", address, "--certs", str(certs),
            "--rogues", str(args.dims_bomb_rogues), "--seconds", str(seconds),
            "--dims-bytes", str(args.dims_bomb_bytes),
        )  # fmt: skip
        clients.append(rogue)
        await rogue.read()  # its certificates issued, its channels made
        await asyncio.sleep(args.interval)  # every honest car past its first telemetry
        await server.ask("snap")
        core0 = cpu_jiffies(gateway_cores)
        await asyncio.sleep(seconds)
        quiet = await server.ask("window")
        core1 = cpu_jiffies(gateway_cores)
        await server.ask("snap")
        attack = await rogue.ask("go", timeout=seconds + 90)
        under = await server.ask("window")
        core2 = cpu_jiffies(gateway_cores)
    finally:
        await stop_all(server, clients)
    without = {**_window_row(quiet, seconds), "core_busy_share": busy_share(core0, core1)}
    with_bombs = {
        **_window_row(under, seconds),
        "core_busy_share": busy_share(core1, core2),
        "bombs_sent": attack["bombs_sent"],
        "bombs_refused": attack["bombs_refused"],
        "bombs_per_s": round(attack["bombs_sent"] / seconds, 1),
        "bomb_stream_p50_ms": attack["stream_p50_ms"],
    }
    # What one bomb costs the gateway: its extra CPU time over the quiet window, per bomb.
    extra_cpu_s = (under["cpu_share"] - quiet["cpu_share"]) * seconds
    with_bombs["gateway_cpu_ms_per_bomb"] = (
        round(extra_cpu_s * 1000 / attack["bombs_sent"], 2) if attack["bombs_sent"] else None
    )
    return {
        "honest_cars": args.dims_bomb,
        "connect_failed": failed,
        "rogue_cars": args.dims_bomb_rogues,
        "bomb_bytes": attack["bomb_bytes"],
        "bombs_sent": attack["bombs_sent"],
        "bombs_refused": attack["bombs_refused"],
        "refusal_codes": attack["codes"],
        "refusal_details": attack["details"],
        "attacker_overran": attack["overran"],
        "without": without,
        "with_bombs": with_bombs,
        "telemetry_p99_ms_without": without["telemetry_p99_ms"],
        "telemetry_p99_ms_with": with_bombs["telemetry_p99_ms"],
        "meets_goal": with_bombs["telemetry_p99_ms"] <= GOAL_P99_MS and not failed,
        "gateway_cores": sorted(gateway_cores),
        "client_cores": sorted(client_cores),
        "notes": (
            "honest cars: lightweight protocol clients; rogues: tests/rogue_car.py over real "
            "mTLS, a new stream per bomb on the same channel; both on the client cores"
        ),
        "seconds": round(time.monotonic() - started, 1),
    }


BOMB_COLUMNS = [
    ("window", 12), ("cars", 6), ("telemetry_p50_ms", 16), ("telemetry_p99_ms", 16),
    ("gateway_cpu_share", 17), ("core_busy_share", 15), ("bombs_sent", 10),
    ("bombs_refused", 13),
]  # fmt: skip


def print_dims_bomb(result: dict[str, Any]) -> None:
    """The two windows of the dims-bomb pass as table rows."""
    print(
        f"\ndims bomb: {result['honest_cars']} honest cars, {result['rogue_cars']} rogue car(s), "
        f"{result['bomb_bytes']} B per bomb, {result['without']['seconds']:g} s windows",
        flush=True,
    )
    for name, key in (("no attacker", "without"), ("dims bombs", "with_bombs")):
        row = {"bombs_sent": "-", "bombs_refused": "-", **result[key], "window": name}
        print_row(row, header=key == "without", columns=BOMB_COLUMNS)


# ---- one core, several gateway processes ----------------------------------------------------


def even_split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` shares that differ by at most one."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def one_core_pass(args: argparse.Namespace) -> dict[str, Any]:
    """K gateway processes on one core; the ramp of totals; ``cars_per_core_multi``."""
    started = time.monotonic()
    k = args.one_core_processes
    ramp = [int(x) for x in args.one_core_cars.split(",")]
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    most = max(even_split(max(ramp), k))
    # A process needs descriptors beyond its cars (listener, pipes, files): keep a margin.
    if most > nofile - 500:
        raise SystemExit(
            f"--one-core-cars {max(ramp)} over {k} processes is {most} cars per process, "
            f"past the open-file limit {nofile} (less a margin of 500): raise "
            "--one-core-processes"
        )
    core, client_cores = split_cores()
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-one-core-"))
    certs = make_certs(work)
    servers: list[Proc] = []
    addresses: list[str] = []
    clients: list[Proc] = []
    held = [0] * k
    steps: list[dict[str, Any]] = []
    limited_by = "ramp finished"
    try:
        for i in range(k):
            server, hello = await start_server(
                args, core, certs, work / f"models-{i}", args.interval
            )
            servers.append(server)
            addresses.append(hello["listening"])
        await asyncio.sleep(1.0)
        rss0 = [(await s.ask("cars"))["rss_kib"] for s in servers]
        for total in ramp:
            if time.monotonic() - started > args.time_cap_s * 0.6 and steps:
                limited_by = f"time cap ({args.time_cap_s:g} s)"
                break
            t0 = time.monotonic()
            target = even_split(total, k)
            starts = [
                start_clients(
                    client_cores, addresses[i], certs, i * 1_000_000 + held[i],
                    target[i] - held[i], args.per_proc, args.time_cap_s,
                    "--interval", str(args.interval),
                )
                for i in range(k)
            ]  # fmt: skip
            got = await asyncio.gather(*starts)
            failed = 0
            for procs, n_failed in got:
                clients.extend(procs)
                failed += n_failed
            held = [max(h, t) for h, t in zip(held, target, strict=True)]
            connect_s = time.monotonic() - t0
            await asyncio.sleep(args.interval)  # every new car past its first telemetry
            ticks0 = cpu_jiffies(core), cpu_jiffies(client_cores)
            await asyncio.gather(*(s.ask("snap") for s in servers))
            await asyncio.sleep(args.interval * 1.5)
            windows = await asyncio.gather(*(s.ask("window") for s in servers))
            ticks1 = cpu_jiffies(core), cpu_jiffies(client_cores)
            row = _one_core_row(total, windows, rss0, failed, connect_s)
            row["core_busy_share"] = busy_share(ticks0[0], ticks1[0])
            row["client_cores_busy_share"] = busy_share(ticks0[1], ticks1[1])
            steps.append(row)
            print_row(row, header=len(steps) == 1, columns=ONE_CORE_COLUMNS)
            if failed or row["cars"] < total:
                limited_by = (
                    f"{failed} connections failed and {total - failed - row['cars']} cars "
                    f"dropped of {total}"
                )
                break
            if row["telemetry_p99_ms_max"] > GOAL_P99_MS:
                limited_by = f"telemetry p99 of a process above {GOAL_P99_MS:g} ms"
                break
        else:
            limited_by = "ramp finished (raise --one-core-cars)"
    finally:
        await asyncio.gather(*(stop_all(s, []) for s in servers))
        for c in clients:
            await c.close()
    good = [
        s
        for s in steps
        if s["telemetry_p99_ms_max"] <= GOAL_P99_MS
        and not s["connect_failed"]
        and s["cars"] == s["cars_started"]
    ]
    best = good[-1] if good else {}
    return {
        "processes": k,
        "cars_per_core_multi": best.get("cars", 0),
        "largest_n": steps[-1]["cars"] if steps else 0,
        "limited_by": limited_by,
        "telemetry_p99_ms_max": best.get("telemetry_p99_ms_max"),
        "memory_per_car_kib": best.get("memory_per_car_kib"),
        "core": sorted(core),
        "client_cores": sorted(client_cores),
        "nofile_limit": nofile,
        "telemetry_interval_s": args.interval,
        "notes": (
            "all gateway processes pinned to one core, each its own port and its own cars "
            "(lightweight protocol clients on the other cores); core_busy_share is the core's "
            "busy time from /proc/stat, whatever ran on it"
        ),
        "steps": steps,
        "seconds": round(time.monotonic() - started, 1),
    }


def _one_core_row(
    total: int,
    windows: list[dict[str, Any]],
    rss0: list[int],
    failed: int,
    connect_s: float,
) -> dict[str, Any]:
    cars = [w["cars"] for w in windows]
    p99s = [round(w["age_p99_ms"], 2) for w in windows]
    # One quantile over every car: the processes' bucket counts added up.
    before = [(le, sum(c)) for le, *c in _zip_buckets(w["age_before"] for w in windows)]
    after = [(le, sum(c)) for le, *c in _zip_buckets(w["age_after"] for w in windows)]
    rss = [w["rss_kib"] for w in windows]
    return {
        "cars": sum(cars),
        "cars_started": total,
        "connect_failed": failed,
        "connect_s": round(connect_s, 1),
        "cars_per_process": cars,
        "telemetry_per_s": round(sum(w["telemetry_per_s"] for w in windows), 1),
        "telemetry_p99_ms_per_process": p99s,
        "telemetry_p99_ms_max": max(p99s),
        # A long full collection in a window explains a p99 the CPU share does not.
        "gc_full_max_ms_per_process": [w["gc_full_max_ms"] for w in windows],
        "telemetry_p50_ms": round(quantile(0.5, before, after) * 1000, 2),
        "telemetry_p99_ms": round(quantile(0.99, before, after) * 1000, 2),
        "gateways_cpu_share": round(sum(w["cpu_share"] for w in windows), 3),
        "gateways_rss_mib": round(sum(rss) / 1024, 1),
        "memory_per_car_kib": round(
            sum(r - r0 for r, r0 in zip(rss, rss0, strict=True)) / max(sum(cars), 1), 1
        ),
    }


def _zip_buckets(snapshots: Any) -> list[list[float]]:
    """Rows ``[le, count of process 1, count of process 2, ...]`` of same-bucket snapshots."""
    columns = [list(s) for s in snapshots]
    return [[pairs[0][0], *(count for _, count in pairs)] for pairs in zip(*columns, strict=True)]


ONE_CORE_COLUMNS = [
    ("cars", 7), ("cars_per_process", 16), ("connect_s", 9), ("telemetry_per_s", 15),
    ("telemetry_p99_ms_per_process", 28), ("telemetry_p99_ms_max", 20),
    ("core_busy_share", 15), ("gateways_cpu_share", 18), ("client_cores_busy_share", 23),
    ("memory_per_car_kib", 18), ("gc_full_max_ms_per_process", 26),
]  # fmt: skip

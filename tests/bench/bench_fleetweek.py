"""Fleet week: a simulated week of strict owners' cars, their policy kept and their energy counted.

Not a test (pytest does not collect ``bench_*.py``). Run ``make bench-fleetweek`` or
``.venv/bin/python tests/bench/bench_fleetweek.py [--cars N] [--days D]``
(``FLEETWEEK_CARS`` and ``FLEETWEEK_DAYS`` set the defaults).

What runs, in one process: the real gateway (in-process, mTLS on loopback, its owner
ledger in a temporary SQLite file) and ``--cars`` simulated cars (``parkfleet.sim``: the
real agent each, strict owners in six time zones, ``day`` traces of commuting and
charging, modelled compute at ``--rate`` items/s per car). The simulated clock runs
``--speed`` times the wall clock (1440: a simulated day per real minute), so a week takes
seven minutes; a task's seconds and energy run on the wall clock, as everywhere.
Telemetry every ``--telemetry-s`` wall seconds (24 simulated minutes at 1 s).

Work: units of ``--items-per-unit`` digits items (the digits model's test inputs,
tiled), submitted straight to the gateway (``Gateway.submit``) and kept coming: the
outstanding units are kept at the cell's eligible cars plus a tenth, at most one per car.

What it reports (``.cache/bench/fleetweek.json``, and a table):

- ``policy_violations``: the largest of three counts, each in
  ``policy_violations_detail``: the gateway's own (its metric and its ledger), and an
  independent one from the simulator's side: a car that held a task while its true
  conditions forbade it (driving; unplugged when its owner allows work only while
  charging; a blocked local hour) for longer than the gateway's own grace for a
  violation (``stop_grace_s``: twice the telemetry period, at least 5 s; or one period
  plus ``--grace-s``), sampled every ``--check-s`` over the busy cars. Its longest such stretch
  is ``longest_forbidden_run_s``. (Battery floors, GPU temperature and daily budgets are
  left to the gateway's check: they are not the true trace's to judge.)
- ``energy_error_ratio``: |gateway's energy (ledger) - true energy| / true energy over
  the fleet; true energy is each car's own true power (``parkfleet.sim.truemeter``,
  draws around the declared ``CarPower``, its GPU idle while it waits) over the time its
  agent held a task.
- baseline, same run: the cars' own reported energy (``car_energy_wh`` in the ledger,
  each agent's model from the same declaration) against the same truth, and the
  declaration's error if every car's task time were known exactly (the true meter's
  held time x the nominal power: what is left is the cars' spread around it).
- ``items``, ``moves`` (tasks moved to another car), ``efficiency`` = items delivered /
  (``--rate`` x offered car-seconds from the ledger: seconds cars were connected and
  their owners allowed work), ledger totals (offered hours, task hours, energy, credit).

Goal (issue 16): violations 0 on both counts, energy error within 2 % over the fleet.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / ".cache" / "bench" / "fleetweek.json"
CERTS = ROOT / ".cache" / "bench" / "fleetweek-certs"  # car certificates are reused
sys.path.insert(0, str(ROOT))

from parkfleet.certs import CA_CERT_FILE, GATEWAY_CERT_FILE, GATEWAY_KEY_FILE, FleetCA  # noqa: E402
from parkfleet.energymodel import CarPower  # noqa: E402
from parkfleet.gateway import ArrayInput, Gateway, GatewayConfig, MemorySink, TaskSpec  # noqa: E402
from parkfleet.gateway.ledger import read_ledger  # noqa: E402
from parkfleet.gateway.tasks import stop_grace_s  # noqa: E402
from parkfleet.models.digits import build_digits  # noqa: E402
from parkfleet.policy import Policy  # noqa: E402
from parkfleet.sim import FleetConfig, SimulatedFleet  # noqa: E402
from parkfleet.taskport import ModelRef  # noqa: E402
from parkfleet.vehicle.sensors import SensorReading  # noqa: E402

POOL = "week"
CELL = f"{POOL}-0"
# Monday 2026-11-30 00:00 UTC: the week starts as it does in the traces.
START_MS = 1_795_996_800_000
GOAL_ENERGY_ERROR = 0.02


def log(msg: str) -> None:
    print(f"[fleetweek {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def forbidding(policy: Policy, r: SensorReading) -> str:
    """What in the car's true conditions forbids work now ("" when nothing does)."""
    if not r.parked:
        return "Driving"
    if policy.only_while_plugged_in and not r.plugged_in:
        return "NotPluggedIn"
    if policy.in_blocked_hours(r.unix_time_ms):
        return "BlockedHours"
    return ""


class ForbiddenWatch:
    """The simulator's own check: cars that hold a task while their true conditions forbid
    it, for longer than ``bound_s``."""

    def __init__(self, fleet: SimulatedFleet, bound_s: float) -> None:
        self.fleet = fleet
        self.bound_s = bound_s
        self._since: dict[int, float] = {}
        self._flagged: set[int] = set()
        self.violations = 0
        self.by_reason: dict[str, int] = {}
        self.longest_s = 0.0
        self.samples = 0

    def check(self) -> None:
        now = time.monotonic()
        for i, agent in enumerate(self.fleet.agents):
            if not agent.running_tasks:
                self._since.pop(i, None)
                self._flagged.discard(i)
                continue
            reason = forbidding(agent.config.policy, agent.sensors.read())
            self.samples += 1
            if not reason:
                self._since.pop(i, None)
                self._flagged.discard(i)
                continue
            since = self._since.setdefault(i, now)
            self.longest_s = max(self.longest_s, now - since)
            if now - since > self.bound_s and i not in self._flagged:
                self._flagged.add(i)
                self.violations += 1
                self.by_reason[reason] = self.by_reason.get(reason, 0) + 1


def certs_dir() -> Path:
    """The benchmark's CA and gateway certificate, made once (car certificates follow)."""
    if not (CERTS / CA_CERT_FILE).exists():
        ca = FleetCA.create()
        ca.save(CERTS)
        pair = ca.issue_gateway(["127.0.0.1", "localhost"])
        pair.save(CERTS / GATEWAY_CERT_FILE, CERTS / GATEWAY_KEY_FILE)
    return CERTS


def counter(gw: Gateway, name: str) -> float:
    """A gateway counter's value for the pool."""
    return float(gw.metrics.registry.get_sample_value(name, {"pool": POOL}) or 0.0)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """One simulated week (or ``--days``) and its figures."""
    work = Path(tempfile.mkdtemp(prefix="parkfleet-bench-fleetweek-"))
    ledger_path = work / "ledger.sqlite"
    certs = await asyncio.to_thread(certs_dir)
    t = args.telemetry_s
    gw = Gateway(
        GatewayConfig.from_certs_dir(
            certs,
            work / "models",
            listen="127.0.0.1:0",
            telemetry_interval_s=t,
            telemetry_timeout_s=max(10.0, 5.0 * t),
            hello_timeout_s=120.0,
            offer_timeout_s=30.0,
            car_wait_s=30.0 * 86_400,  # a unit waits for a car as long as it takes
            ledger_path=ledger_path,
        )
    )
    await gw.start()
    model = build_digits(ROOT / ".cache" / "models")
    ref: ModelRef = gw.models.add_file(model.model_path)
    base = model.test_inputs()
    inputs = ArrayInput(np.resize(base, (args.items_per_unit, base.shape[1])).astype(np.float32))
    fleet = SimulatedFleet(
        FleetConfig(
            cars=args.cars,
            gateway=gw.address,
            certs_dir=certs,
            seed=args.seed,
            speed=args.speed,
            pool=POOL,
            compute="modelled",
            modelled_items_per_second=args.rate,
            start_unix_ms=START_MS,
            days=7,
            telemetry_interval_s=t,
            ramp_s=args.ramp_s,
            strict_owners=not args.lenient,
            scenario="day",
        )
    )
    outstanding: set[str] = set()
    counts = {"submitted": 0, "succeeded": 0, "failed": 0, "moves": 0, "event_items": 0}
    failures: dict[str, int] = {}
    # The gateway's own rule for a violation, unless a stricter bound is asked for.
    bound = stop_grace_s(t) if args.grace_s is None else t + args.grace_s
    watch = ForbiddenWatch(fleet, bound)
    stop = asyncio.Event()

    async def collect() -> None:
        async for e in gw.events():
            if e.kind == "moved":
                counts["moves"] += 1
            elif e.kind in ("succeeded", "failed", "cancelled"):
                outstanding.discard(e.task_id)
                counts["succeeded" if e.kind == "succeeded" else "failed"] += 1
                if e.kind != "succeeded":
                    failures[e.reason] = failures.get(e.reason, 0) + 1
                counts["event_items"] += e.items_done
                gw.release(e.task_id)

    async def feed() -> None:
        while not stop.is_set():
            eligible = gw.capacity(CELL).cars_eligible
            target = min(args.cars, eligible + max(4, eligible // 10))
            while len(outstanding) < target:
                task_id = f"u{counts['submitted']:07d}"
                counts["submitted"] += 1
                outstanding.add(task_id)
                await gw.submit(
                    TaskSpec(
                        task_id=task_id,
                        cell=CELL,
                        runtime="onnxruntime",
                        model=ref,
                        input_name="input",
                        output_names=("label", "probabilities"),
                        batch_size=args.batch,
                        item_start=0,
                        item_end=args.items_per_unit,
                        inputs=inputs,
                        sink=MemorySink(),  # dropped with the task: results are not kept
                        checkpoint_interval_s=2.0,
                        car_wait_s=30.0 * 86_400,
                    )
                )
            await asyncio.sleep(0.25)

    async def check() -> None:
        while not stop.is_set():
            watch.check()
            await asyncio.sleep(args.check_s)

    collector = asyncio.create_task(collect())
    wall0 = time.monotonic()
    cpu0 = time.process_time()
    await fleet.start()
    connected = await fleet.wait_connected(timeout_s=max(60.0, args.ramp_s * 3))
    log(f"{connected}/{args.cars} cars connected in {time.monotonic() - wall0:.0f} s")
    feeder = asyncio.create_task(feed())
    checker = asyncio.create_task(check())
    end_ms = START_MS + int(args.days * 86_400_000)
    next_report = time.monotonic() + 30.0
    while fleet.clock.unix_ms() < end_ms:
        await asyncio.sleep(0.5)
        if time.monotonic() >= next_report:
            next_report += 30.0
            cap = gw.capacity(CELL)
            day = (fleet.clock.unix_ms() - START_MS) / 86_400_000
            log(
                f"day {day:.2f}: {cap.cars_connected} connected, {cap.cars_eligible} eligible, "
                f"{cap.cars_busy} busy, {counts['succeeded']} units done, "
                f"{watch.violations} sim-side violations, "
                f"cpu {(time.process_time() - cpu0) / (time.monotonic() - wall0):.2f} cores"
            )
    sim_days = (fleet.clock.unix_ms() - START_MS) / 86_400_000
    stop.set()
    for task in (feeder, checker):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await fleet.stop()
    gw_violations_metric = counter(gw, "parkfleet_gateway_policy_violations_total")
    await gw.stop(1.0)  # flushes the ledger
    collector.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await collector
    wall_s = time.monotonic() - wall0
    cpu_s = time.process_time() - cpu0

    rows = read_ledger([ledger_path], pool=POOL)
    offered_s = sum(r.offered_hours for r in rows) * 3600.0
    task_s = sum(r.task_hours for r in rows) * 3600.0
    ledger_wh = sum(r.energy_wh for r in rows)
    car_wh = sum(r.car_energy_wh for r in rows)
    items = sum(r.items for r in rows)
    true_wh = fleet.true_energy_wh()
    held_s = sum(m.held_s for m in fleet.meters)
    gpu_load_s = sum(m.gpu_load_s for m in fleet.meters)
    nominal_wh = CarPower().task_wh(held_s)

    def error(wh: float) -> float | None:
        return abs(wh - true_wh) / true_wh if true_wh > 0 else None

    energy_error = error(ledger_wh)
    result: dict[str, Any] = {
        "cars": args.cars,
        "connected": connected,
        "strict_owners": not args.lenient,
        "speed": args.speed,
        "simulated_days": round(sim_days, 3),
        "wall_s": round(wall_s, 1),
        "cpu_cores": round(cpu_s / wall_s, 2) if wall_s > 0 else None,
        "telemetry_s": t,
        "rate_items_per_s": args.rate,
        "items_per_unit": args.items_per_unit,
        # The largest of the three counts: each must be 0.
        "policy_violations": int(
            max(gw_violations_metric, sum(r.violations for r in rows), watch.violations)
        ),
        "policy_violations_detail": {
            "gateway_metric": gw_violations_metric,
            "gateway_ledger": sum(r.violations for r in rows),
            "simulator": watch.violations,
            "simulator_by_reason": watch.by_reason,
            "simulator_bound_s": watch.bound_s,
            "longest_forbidden_run_s": round(watch.longest_s, 2),
        },
        "energy_error_ratio": energy_error,
        "energy_signed_error_ratio": (ledger_wh - true_wh) / true_wh if true_wh > 0 else None,
        "true_energy_wh": true_wh,
        "true_task_hours": held_s / 3600.0,
        "true_gpu_load_share": gpu_load_s / held_s if held_s > 0 else None,
        "baseline": {
            "car_reported_energy_error_ratio": error(car_wh),
            "nominal_power_exact_time_error_ratio": error(nominal_wh),
        },
        "items": items,
        "units": dict(counts),
        "failures": failures,
        "moves": counts["moves"],
        "efficiency": items / (args.rate * offered_s) if offered_s > 0 else None,
        "efficiency_definition": "items delivered / (rate x offered car-seconds of the ledger)",
        "ledger": {
            "offered_hours": offered_s / 3600.0,
            "task_hours": task_s / 3600.0,
            "energy_wh": ledger_wh,
            "car_energy_wh": car_wh,
            "credit": sum(r.credit for r in rows),
            "cars": len(rows),
        },
        "goal": {
            "violations": 0,
            "energy_error_ratio_max": GOAL_ENERGY_ERROR,
            "met": (
                gw_violations_metric == 0
                and watch.violations == 0
                and energy_error is not None
                and energy_error <= GOAL_ENERGY_ERROR
            ),
        },
    }
    return result


def print_table(r: dict[str, Any]) -> None:
    v = r["policy_violations_detail"]
    led = r["ledger"]

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.2f} %"

    lines = [
        ("cars (connected)", f"{r['cars']} ({r['connected']})"),
        ("simulated days / wall s", f"{r['simulated_days']:.2f} / {r['wall_s']:.0f}"),
        ("cpu (cores)", f"{r['cpu_cores']}"),
        ("violations: gateway metric", f"{v['gateway_metric']:.0f}"),
        ("violations: gateway ledger", f"{v['gateway_ledger']}"),
        (f"violations: simulator (> {v['simulator_bound_s']:g} s)", f"{v['simulator']}"),
        ("longest forbidden run (s)", f"{v['longest_forbidden_run_s']}"),
        ("energy error: gateway vs true", pct(r["energy_error_ratio"])),
        ("  signed", pct(r["energy_signed_error_ratio"])),
        ("baseline: car-reported vs true", pct(r["baseline"]["car_reported_energy_error_ratio"])),
        (
            "baseline: nominal x true time",
            pct(r["baseline"]["nominal_power_exact_time_error_ratio"]),
        ),
        ("true GPU under load (share)", pct(r["true_gpu_load_share"])),
        ("items", f"{r['items']}"),
        ("units done / failed", f"{r['units']['succeeded']} / {r['units']['failed']}"),
        ("moves", f"{r['moves']}"),
        ("efficiency", pct(r["efficiency"])),
        ("ledger offered h / task h", f"{led['offered_hours']:.1f} / {led['task_hours']:.1f}"),
        ("ledger energy Wh (true)", f"{led['energy_wh']:.1f} ({r['true_energy_wh']:.1f})"),
        ("ledger credit", f"{led['credit']:.1f}"),
        ("goal met", f"{r['goal']['met']}"),
    ]
    width = max(len(k) for k, _ in lines)
    for k, val in lines:
        print(f"{k:<{width}}  {val}")


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--cars", type=int, default=int(os.environ.get("FLEETWEEK_CARS", "1000")))
    p.add_argument("--days", type=float, default=float(os.environ.get("FLEETWEEK_DAYS", "7")))
    p.add_argument("--speed", type=float, default=1440.0, help="simulated s per wall s")
    p.add_argument("--rate", type=float, default=20.0, help="modelled items/s per car")
    # A tenth of a second of a car's compute per batch: a stopped car's batch in flight is
    # short (longer batches leave the car awake after the gateway stopped counting).
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--items-per-unit", type=int, default=200)
    p.add_argument("--telemetry-s", type=float, default=1.0)
    p.add_argument(
        "--grace-s",
        type=float,
        default=None,
        help="the simulator check's bound is one telemetry period plus this (default: the "
        "gateway's own grace for a violation, parkfleet.gateway.tasks.stop_grace_s)",
    )
    p.add_argument("--check-s", type=float, default=0.1)
    p.add_argument("--ramp-s", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lenient", action="store_true", help="lenient owners (UTC, plugged in)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result = asyncio.run(run(args))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    log(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

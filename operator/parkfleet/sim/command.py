"""``parkfleet simulate --cars N``: a simulated fleet against a real gateway."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time
from pathlib import Path
from typing import Any

from parkfleet.sim.fleet import FleetConfig, SimulatedFleet
from parkfleet.sim.traces import SCENARIOS

__all__ = ["register"]

log = logging.getLogger(__name__)


def _start_ms(hour: float | None) -> int | None:
    """Today (UTC) at ``hour`` o'clock, as the simulated start; None keeps now."""
    if hour is None:
        return None
    midnight = (time.time() // 86400) * 86400
    return int((midnight + hour * 3600) * 1000)


async def _main(args: argparse.Namespace) -> int:
    fleet = SimulatedFleet(
        FleetConfig(
            cars=args.cars,
            gateway=args.gateway,
            certs_dir=Path(args.certs),
            seed=args.seed,
            speed=args.speed,
            cells=args.cells,
            pool=args.pool,
            compute=args.compute,
            modelled_items_per_second=args.modelled_rate,
            telemetry_interval_s=args.telemetry_interval,
            ramp_s=args.ramp,
            strict_owners=not args.lenient_owners,
            server_name_override=args.server_name or "",
            scenario=args.scenario,
            mean_stay_s=args.mean_stay_s,
            mean_drive_s=args.mean_drive_s,
            departure_noise=args.departure_noise,
            start_unix_ms=_start_ms(args.start_hour),
            car_id_prefix=args.car_prefix,
            corrupt=args.corrupt,
            cars_per_owner=args.cars_per_owner,
        )
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr="127.0.0.1", registry=fleet.metrics.registry)
    started = time.monotonic()
    await fleet.start()
    print(f"simulating {args.cars} cars against {args.gateway} (speed x{args.speed:g})", flush=True)
    deadline = started + args.duration if args.duration > 0 else None
    try:
        while not stop.is_set():
            timeout = args.report_every
            if deadline is not None:
                timeout = min(timeout, max(0.0, deadline - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout)
            s = fleet.stats()
            sim_time = time.strftime("%a %H:%M", time.gmtime(fleet.clock.unix_ms() / 1000))
            print(
                f"[{sim_time} UTC sim] connected {s.connected}/{s.cars} busy {s.busy} "
                f"done {s.tasks_done} failed {s.tasks_failed} refused {s.refusals} "
                f"items {int(s.items)}",
                flush=True,
            )
            if deadline is not None and time.monotonic() >= deadline:
                break
    finally:
        await fleet.stop()
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return asyncio.run(_main(args))


def register(subparsers: Any) -> None:
    """Adds ``parkfleet simulate``."""
    p = subparsers.add_parser("simulate", help="run N simulated cars against a gateway")
    p.add_argument("--cars", type=int, required=True)
    p.add_argument("--gateway", required=True, help="gateway HOST:PORT")
    p.add_argument("--certs", required=True, help="folder with the fleet CA (ca.crt, ca.key)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    p.add_argument("--cells", type=int, default=1)
    p.add_argument("--pool", default="sim")
    p.add_argument("--compute", choices=("real", "modelled"), default="real")
    p.add_argument("--modelled-rate", type=float, default=2000.0, help="items/s per car")
    p.add_argument("--duration", type=float, default=0.0, help="real seconds (0 = until ^C)")
    p.add_argument("--telemetry-interval", type=float, default=10.0)
    p.add_argument("--ramp", type=float, default=5.0, help="spread connections over S seconds")
    p.add_argument("--report-every", type=float, default=10.0)
    p.add_argument(
        "--lenient-owners",
        action="store_true",
        help="every owner allows work while plugged in, and lives in UTC",
    )
    p.add_argument("--server-name", help="TLS name to expect from the gateway")
    p.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default="day",
        help="day: realistic commutes and charging; parked: every car parked and plugged "
        "in; stays: short plugged-in stays between drives, each car at its own phase",
    )
    p.add_argument("--mean-stay-s", type=float, default=400.0, help="stays: mean stay")
    p.add_argument("--mean-drive-s", type=float, default=60.0, help="stays: mean drive")
    p.add_argument(
        "--departure-noise",
        type=float,
        default=0.0,
        help="cars report their trace's next departure off by up to this fraction of the "
        "stay (negative: they report none)",
    )
    p.add_argument(
        "--start-hour",
        type=float,
        default=None,
        help="simulated UTC hour (today) to start at; owners' blocked hours are in their own zones",
    )
    p.add_argument("--car-prefix", default="sim-", help="car ids are PREFIX000000, ...")
    p.add_argument(
        "--corrupt", action="store_true", help="fault injection: these cars return wrong results"
    )
    p.add_argument(
        "--cars-per-owner",
        type=int,
        default=1,
        help="consecutive cars sharing an owner (their certificates' owner attribute)",
    )
    p.add_argument("--metrics-port", type=int, default=0, help="serve /metrics on 127.0.0.1")
    p.add_argument("--log-level", default="warning")
    p.set_defaults(func=_cmd_simulate)

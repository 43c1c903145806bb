"""``parkfleet gateway``: runs a gateway until SIGTERM or SIGINT, then stops gracefully."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

from parkfleet.gateway.api import Gateway, GatewayConfig

__all__ = ["register", "run"]


async def run(config: GatewayConfig, grace_s: float = 5.0) -> None:
    """Runs a gateway until SIGTERM/SIGINT.

    Prints ``listening on HOST:PORT`` once serving (scripts read the port from it).
    """
    gateway = Gateway(config)
    await gateway.start()
    print(f"listening on {gateway.address}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await gateway.stop(grace_s)


def _main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = GatewayConfig.from_certs_dir(
        args.certs,
        args.models,
        listen=args.listen,
        metrics_port=args.metrics_port,
        telemetry_interval_s=args.telemetry_interval_s,
        telemetry_timeout_s=args.telemetry_timeout_s,
        cells_per_pool=args.cells_per_pool,
        grace_s=args.grace_s,
    )
    asyncio.run(run(config))
    return 0


def register(subparsers: Any) -> None:
    """Adds ``parkfleet gateway``."""
    p = subparsers.add_parser("gateway", help="run a fleet gateway (the cars' gRPC server)")
    p.add_argument("--listen", default="127.0.0.1:7443", help="host:port (port 0: any)")
    p.add_argument("--certs", type=Path, required=True, help="dir with ca.crt, gateway.crt/key")
    p.add_argument("--models", type=Path, required=True, help="model store directory")
    p.add_argument("--metrics-port", type=int, default=None)
    p.add_argument("--telemetry-interval-s", type=float, default=10.0)
    p.add_argument("--telemetry-timeout-s", type=float, default=30.0)
    p.add_argument("--cells-per-pool", type=int, default=1)
    p.add_argument("--grace-s", type=float, default=60.0, help="task wait before NoEligibleCar")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=_main)

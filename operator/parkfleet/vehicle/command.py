"""``parkfleet agent``: the car-side daemon."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

from parkfleet.certs import car_identity
from parkfleet.energymodel import (
    DEFAULT_AWAKE_BASE_W,
    DEFAULT_CHARGING_EFFICIENCY,
    DEFAULT_GPU_POWER_W,
    CarPower,
)
from parkfleet.policy import Policy
from parkfleet.vehicle.compute import OrtCompute
from parkfleet.vehicle.consentfile import ConsentFile
from parkfleet.vehicle.departures import DepartureSchedule, ScheduledSensors
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
from parkfleet.vehicle.policyfile import load_owner_settings
from parkfleet.vehicle.sensors import FileSensors, Sensors, StaticSensors, parse_sensor_spec

__all__ = ["build_agent", "register", "sensors_from_arg"]

log = logging.getLogger(__name__)


def sensors_from_arg(value: str) -> Sensors:
    """``--sensors``: a JSON/YAML file re-read on change, or ``key=value,...`` overrides."""
    path = Path(value)
    if value and (path.suffix in (".json", ".yaml", ".yml") or path.exists()):
        return FileSensors(path)
    return StaticSensors(parse_sensor_spec(value))


def build_agent(args: argparse.Namespace) -> Agent:
    """Builds the agent from parsed ``parkfleet agent`` arguments."""
    cert_pem = Path(args.cert).read_bytes()
    creds = Credentials(
        ca_pem=Path(args.ca).read_bytes(),
        cert_pem=cert_pem,
        key_pem=Path(args.key).read_bytes(),
        cert_path=Path(args.cert),
        key_path=Path(args.key),
    )
    policy, schedule = (
        load_owner_settings(Path(args.policy_file))
        if args.policy_file
        else (Policy(), DepartureSchedule())
    )
    try:
        power = CarPower(args.gpu_power_w, args.awake_base_w, args.charging_efficiency)
    except ValueError as e:
        raise SystemExit(f"parkfleet agent: {e}") from None
    compute = OrtCompute(intra_op_threads=args.intra_op_threads)
    config = AgentConfig(
        address=args.gateway,
        credentials=creds,
        car_id=car_identity(cert_pem).car_id,
        policy=policy,
        capabilities=capabilities(args.gpu_model, args.gpu_memory_mib, power, compute.providers),
        telemetry_interval_s=args.telemetry_interval,
        max_reconnects=args.max_reconnects,
        server_name_override=args.server_name or "",
        consent_file=Path(args.consent_file) if args.consent_file else None,
    )
    return Agent(
        config,
        ScheduledSensors(sensors_from_arg(args.sensors), schedule),
        compute,
        models=ModelCache(Path(args.model_cache) if args.model_cache else None),
        metrics=AgentMetrics(),
    )


async def _main(agent: Agent, args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, agent.stop)
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr="127.0.0.1", registry=agent.metrics.registry)
    try:
        await agent.run()
    except LinkRefused as e:
        log.error("the gateway refused this car: %s", e)
        return 3
    except GaveUp as e:
        log.error("%s", e)
        return 4
    except Withdrawn as e:
        # The owner's choice, not a failure: a supervisor must not restart the agent.
        log.warning("%s; the agent leaves for good", e)
    return 0


def _cmd_agent(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.consent_file and ConsentFile(Path(args.consent_file)).read_now() == "withdrawn":
        log.warning(
            "%s says withdrawn: this car has left the fleet; not starting", args.consent_file
        )
        return 0
    # Before the loop starts: it reads the certificates and the policy, and loads ONNX Runtime.
    agent = build_agent(args)
    return asyncio.run(_main(agent, args))


def register(subparsers: Any) -> None:
    """Adds ``parkfleet agent``."""
    p = subparsers.add_parser("agent", help="run the car-side agent")
    p.add_argument("--gateway", required=True, help="gateway HOST:PORT")
    p.add_argument("--cert", required=True, help="the car's client certificate (PEM)")
    p.add_argument("--key", required=True, help="the car's private key (PEM)")
    p.add_argument("--ca", required=True, help="the fleet CA certificate (PEM)")
    p.add_argument("--policy-file", help="the owner's policy and departure schedule (YAML)")
    p.add_argument(
        "--consent-file",
        help="the owner's consent (consent: active|paused|withdrawn), re-read every "
        "telemetry period; missing: active",
    )
    p.add_argument(
        "--sensors",
        default="",
        help="telemetry source: a JSON/YAML file re-read on change, or key=value,... overrides",
    )
    p.add_argument("--gpu-model", default="cpu")
    p.add_argument("--gpu-memory-mib", type=int, default=8192)
    p.add_argument(
        "--gpu-power-w",
        type=float,
        default=DEFAULT_GPU_POWER_W,
        help="the GPU's draw under load, watts (energy model)",
    )
    p.add_argument(
        "--awake-base-w",
        type=float,
        default=DEFAULT_AWAKE_BASE_W,
        help="what the rest of the car draws while kept awake for a task, watts",
    )
    p.add_argument(
        "--charging-efficiency",
        type=float,
        default=DEFAULT_CHARGING_EFFICIENCY,
        help="share of the socket's energy that reaches the car, 0.5..1",
    )
    p.add_argument("--intra-op-threads", type=int, default=1)
    p.add_argument("--model-cache", help="folder for verified models (default: memory only)")
    p.add_argument("--telemetry-interval", type=float, default=10.0)
    p.add_argument("--max-reconnects", type=int, default=None)
    p.add_argument("--server-name", help="TLS name to expect from the gateway")
    p.add_argument("--metrics-port", type=int, default=0, help="serve /metrics on 127.0.0.1")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=_cmd_agent)

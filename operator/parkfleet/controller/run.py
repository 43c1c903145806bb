"""``parkfleet operator``: runs the Kopf handlers, one active replica at a time."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

import kopf
from prometheus_client import start_http_server

from parkfleet.controller import admission as _admission
from parkfleet.controller.admission import AdmissionConfig, webhook_server
from parkfleet.controller.kube import close_api_client
from parkfleet.controller.metrics import METRICS

__all__ = ["register", "run"]


_PEERING: dict[str, str | None] = {"name": None}
# Kopf pauses every peer of the same priority, so a standby runs with a lower one.
_PRIORITY = {"value": 0}
_ADMISSION: dict[str, AdmissionConfig | None] = {"config": None}


@kopf.on.startup()
async def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    name = _PEERING["name"]
    settings.peering.standalone = name is None
    settings.peering.clusterwide = True
    if name is not None:
        settings.peering.name = name
        settings.peering.mandatory = True
        settings.peering.priority = _PRIORITY["value"]
    # Status is ours to write in full; Kopf keeps its own bookkeeping in annotations.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="parkfleet.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="parkfleet.io")
    settings.persistence.finalizer = "parkfleet.io/finalizer"
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 60
    admission = _ADMISSION["config"]
    if admission is not None:
        settings.admission.server = webhook_server(admission)
        settings.admission.managed = admission.managed


@kopf.on.cleanup()
async def _cleanup(**_: Any) -> None:
    await close_api_client()


async def run(
    *,
    peering: str | None,
    metrics_port: int | None,
    metrics_addr: str = "0.0.0.0",
    stop: asyncio.Event | None = None,
    priority: int = 0,
    admission: AdmissionConfig | None = None,
) -> None:
    """Runs the operator until ``stop`` is set (or forever).

    Args:
        peering: A ClusterKopfPeering name for active/standby; None runs standalone.
        metrics_port: Serve Prometheus metrics on this port.
        metrics_addr: The address the metrics server listens on.
        stop: Set to stop.
        priority: Peering priority: the live peer with the highest one works, the
            others wait (peers of equal priority all pause, so a standby needs a lower one).
        admission: Serve the validating webhook (a job's pool must exist); None does not.
    """
    import parkfleet.controller.fleetpool
    import parkfleet.controller.inferencejob  # noqa: F401

    if admission is not None:
        _admission.register()

    _PEERING["name"] = peering
    _PRIORITY["value"] = priority
    _ADMISSION["config"] = admission
    if metrics_port is not None:
        start_http_server(metrics_port, addr=metrics_addr, registry=METRICS.registry)
    await kopf.operator(clusterwide=True, standalone=peering is None, stop_flag=stop)


def _cmd(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    admission = None
    if args.admission_port is not None:
        admission = AdmissionConfig(
            port=args.admission_port,
            addr=args.admission_addr,
            host=args.admission_host,
            cert_dir=args.admission_cert_dir,
            managed=args.admission_manage,
        )
    asyncio.run(
        run(
            peering=args.peering,
            metrics_port=args.metrics_port,
            metrics_addr=args.metrics_addr,
            priority=args.priority,
            admission=admission,
        )
    )
    return 0


def register(subparsers: Any) -> None:
    """Adds ``parkfleet operator``."""
    p = subparsers.add_parser("operator", help="run the operator (FleetPool, InferenceJob)")
    p.add_argument("--peering", default=None, help="ClusterKopfPeering name (standby replicas)")
    p.add_argument(
        "--priority",
        type=int,
        default=0,
        help="peering priority: the highest live one works, a standby takes a lower one",
    )
    p.add_argument("--metrics-port", type=int, default=None)
    p.add_argument("--metrics-addr", default="0.0.0.0", help="address of the metrics server")
    a = p.add_argument_group("admission webhook (refuses an InferenceJob whose pool is missing)")
    a.add_argument("--admission-port", type=int, default=None, help="serve it on this port")
    a.add_argument("--admission-addr", default="0.0.0.0", help="listen address")
    a.add_argument(
        "--admission-host",
        default=None,
        help="name or address the API server reaches it at (default: the listen address)",
    )
    a.add_argument(
        "--admission-cert-dir",
        type=Path,
        default=None,
        help="tls.crt, tls.key and ca.crt to serve with (default: a fresh CA of its own)",
    )
    a.add_argument(
        "--admission-manage",
        default=None,
        metavar="NAME",
        help="keep the ValidatingWebhookConfiguration NAME pointing here (local runs)",
    )
    p.set_defaults(func=_cmd)

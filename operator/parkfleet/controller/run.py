"""``parkfleet operator``: runs the Kopf handlers, one active replica at a time."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
from pathlib import Path
from typing import Any

import aiohttp
import kopf
from prometheus_client import start_http_server

from parkfleet import healthserver
from parkfleet.controller import admission as _admission
from parkfleet.controller import fleetpool, inferencejob
from parkfleet.controller.admission import AdmissionConfig, webhook_server
from parkfleet.controller.readiness import OperatorReadiness
from parkfleet.controller.state import OperatorState
from parkfleet.healthserver import HealthServer
from parkfleet.kubeauth import NonResourceGuard
from parkfleet.metricsserver import METRICS_AUTH_CHOICES, METRICS_AUTH_HELP, MetricsServer
from parkfleet.stopping import STOP_GRACE_S, run_until_signalled

__all__ = ["operator_settings", "register", "register_handlers", "run"]

log = logging.getLogger(__name__)

# How Kopf retries a failed API call once the operator is stopping.
STOP_BACKOFFS_S = (1.0, 2.0)


def register_handlers(
    registry: kopf.OperatorRegistry, state: OperatorState, admission: AdmissionConfig | None
) -> None:
    """Adds every handler of the operator to ``registry``, bound to ``state``.

    The admission handler only when the operator serves admission (Kopf refuses to
    start with an admission handler and no server).
    """
    # A registry of our own lacks the login Kopf's default one has: the same one, by
    # kubernetes_asyncio (kubeconfig, or the pod's service account).
    kopf.on.login(registry=registry, errors=kopf.ErrorsMode.IGNORED)(kopf.login_via_async_client)
    fleetpool.register(registry, state)
    inferencejob.register(registry, state)
    if admission is not None:
        _admission.register(registry, state)


def operator_settings(admission: AdmissionConfig | None) -> kopf.OperatorSettings:
    """Kopf's settings for the operator (peering is passed to ``kopf.spawn_tasks``)."""
    settings = kopf.OperatorSettings()
    # Status is ours to write in full; Kopf keeps its own bookkeeping in annotations.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="parkfleet.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="parkfleet.io")
    settings.persistence.finalizer = "parkfleet.io/finalizer"
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 60
    if admission is not None:
        settings.admission.server = webhook_server(admission)
        settings.admission.managed = admission.managed
    return settings


def _leaving(settings: kopf.OperatorSettings) -> None:
    # Kopf's stop ends with API calls (removing its webhooks) retried for about a minute
    # by default; when leaving, and the API server may be gone, a few seconds will do.
    settings.networking.error_backoffs = STOP_BACKOFFS_S


async def run(
    *,
    peering: str | None,
    metrics_port: int | None,
    metrics_addr: str = "0.0.0.0",
    stop: asyncio.Event | None = None,
    priority: int = 0,
    admission: AdmissionConfig | None = None,
    stop_grace_s: float = STOP_GRACE_S,
    metrics_auth: bool = False,
    health_port: int | None = None,
    health_addr: str = "127.0.0.1",
) -> None:
    """Runs the operator until ``stop`` is set, or SIGTERM or SIGINT (or forever).

    Args:
        peering: A ClusterKopfPeering name for active/standby; None runs standalone.
        metrics_port: Serve Prometheus metrics on this port.
        metrics_addr: The address the metrics server listens on.
        stop: Set to stop (the caller decides how long to wait for it).
        priority: Peering priority: the live peer with the highest one works, the
            others wait (peers of equal priority all pause, so a standby needs a lower one).
        admission: Serve the validating webhook (a job's pool must exist and allow the
            job's namespace); None does not.
        stop_grace_s: After SIGTERM or SIGINT, how long the stop may take before what is
            left of it is cancelled (see ``parkfleet.stopping``).
        metrics_auth: Serve ``/metrics`` over HTTPS, only to bearer tokens allowed ``get``
            on it (``parkfleet.metricsserver``); else plain HTTP to anyone.
        health_port: Serve the kubelet's probes on this port: ``/livez`` (the event loop
            answers) and ``/readyz`` (``parkfleet.controller.readiness``).
        health_addr: The address the probes' server listens on.
    """
    state = OperatorState()
    stop_flag = stop or asyncio.Event()
    readiness = OperatorReadiness(state, stop_flag, admission)
    health: HealthServer | None = None
    if health_port is not None:
        health = HealthServer(readiness.reasons, health_addr, health_port)
        await health.start()
    registry = kopf.OperatorRegistry()
    register_handlers(registry, state, admission)
    settings = operator_settings(admission)
    secure: MetricsServer | None = None
    if metrics_port is not None and metrics_auth:
        guard = NonResourceGuard(await state.api())
        secure = MetricsServer(state.metrics.registry, guard, metrics_addr, metrics_port)
        await secure.start()
    elif metrics_port is not None:
        start_http_server(metrics_port, addr=metrics_addr, registry=state.metrics.registry)
    existing = asyncio.all_tasks()
    try:
        tasks = await kopf.spawn_tasks(
            registry=registry,
            settings=settings,
            # Kopf copies the memo per object; the state in it is shared, never copied.
            memo=kopf.Memo(state=state),
            clusterwide=True,
            standalone=peering is None,
            peering_name=peering,
            priority=priority,
            stop_flag=stop_flag,
            ready_flag=readiness.started,
        )
        # Kopf has just put its own signal handlers in place; these stop it the same way
        # (by its stop flag) and bound how long that may take.
        await run_until_signalled(
            kopf.run_tasks(tasks, ignored=existing),
            stop_flag,
            name="the operator",
            grace_s=stop_grace_s,
            on_signal=functools.partial(_leaving, settings),
        )
    except aiohttp.ClientConnectionError as exc:
        if not stop_flag.is_set():
            raise
        # Expected when the API server went first: Kopf's last calls (its webhooks) failed.
        log.warning("stopped without reaching the API server to remove its webhooks: %s", exc)
    finally:
        if secure is not None:
            await secure.stop()
        if health is not None:
            await health.stop()
        await state.close()


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
            metrics_auth=args.metrics_auth == "kubernetes",
            health_port=args.health_port,
            health_addr=args.health_addr,
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
    p.add_argument(
        "--metrics-auth",
        choices=METRICS_AUTH_CHOICES,
        default="none",
        help=METRICS_AUTH_HELP,
    )
    healthserver.add_arguments(
        p, "Kopf started, the webhook listening, the API server answering, not stopping"
    )
    a = p.add_argument_group(
        "admission webhook (refuses an InferenceJob whose pool is missing or does not allow"
        " its namespace)"
    )
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

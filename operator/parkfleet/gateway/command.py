"""``parkfleet gateway``: runs a gateway until SIGTERM or SIGINT, then stops gracefully."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client

from parkfleet import healthserver
from parkfleet.contract import DEFAULT_CAR_WAIT_S
from parkfleet.gateway.api import Gateway, GatewayConfig
from parkfleet.gateway.ledger import ledger_file_name
from parkfleet.gateway.modelfetch import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT_S, FetchConfig
from parkfleet.gateway.reputation import ReputationRule
from parkfleet.gateway.tasks import DEFAULT_MAX_ATTEMPTS, PLACEMENTS, TaskManager
from parkfleet.healthserver import HealthServer
from parkfleet.kubeauth import NonResourceGuard
from parkfleet.kubeclient import connect
from parkfleet.kubemetrics import instrument
from parkfleet.metricsserver import METRICS_AUTH_CHOICES, METRICS_AUTH_HELP, MetricsServer
from parkfleet.nodeagent.agent import NodeAgent, NodeAgentConfig
from parkfleet.nodeagent.kubeletapi import KubeletServer
from parkfleet.nodeagent.logs import LogStore
from parkfleet.stopping import STOP_GRACE_S, run_until_signalled

log = logging.getLogger(__name__)

__all__ = ["register", "run"]

_DEFAULT_RULE = ReputationRule()


@dataclass
class NodeAgentOptions:
    """How the gateway's node agent (virtual kubelet) runs; see ``parkfleet gateway -h``."""

    kubeconfig: str | None
    shard: int
    data_root: Path
    kubelet_port: int
    advertise_address: str
    kubelet_client_ca: Path | None
    status_heartbeat_s: float = 0.0
    revocations: str = ""


@dataclass
class SecureMetricsOptions:
    """``--metrics-auth=kubernetes``: ``/metrics`` over HTTPS, for callers the cluster
    allows ``get`` on it (see ``parkfleet.metricsserver``)."""

    host: str
    port: int


@dataclass
class GatewayReadiness:
    """When a gateway shard is ready for cars (its ``/readyz``): its car link listens, its
    node agent (when it runs one) has registered the shard's cells, and it is not stopping.

    The API server is not asked: connected cars keep working through an outage, and a
    shard that waits for the API server still takes cars and redirects those of other
    shards.
    """

    node_agent: bool
    listening: bool = False
    registered: bool = False
    stopping: bool = False

    async def reasons(self) -> list[str]:
        """What is not ready yet; empty: ready."""
        out = []
        if self.stopping:
            out.append("stopping (new cars go to the other shards)")
        if not self.listening:
            out.append("the car link is not listening yet")
        if self.node_agent and not self.registered:
            out.append("the node agent has not registered this shard's cells yet")
        return out


async def run(
    config: GatewayConfig,
    streams_grace_s: float = 5.0,
    models: Mapping[str, Path] | None = None,
    node_agent: NodeAgentOptions | None = None,
    task_manager: type[TaskManager] = TaskManager,
    stop_grace_s: float = STOP_GRACE_S,
    secure_metrics: SecureMetricsOptions | None = None,
    health_port: int | None = None,
    health_addr: str = "127.0.0.1",
) -> None:
    """Runs a gateway (and its node agent, when asked) until SIGTERM/SIGINT.

    Prints ``listening on HOST:PORT`` once serving (scripts read the port from it),
    ``metrics on URL`` when ``secure_metrics`` serves them, and ``probes on URL`` when
    ``health_port`` is given (``/livez`` and ``/readyz``, see ``parkfleet.healthserver``).
    Open car streams get ``streams_grace_s`` to end; the whole stop ``stop_grace_s`` (see
    ``parkfleet.stopping``), even when the API server is gone.
    """
    readiness = GatewayReadiness(node_agent=node_agent is not None)
    health: HealthServer | None = None
    if health_port is not None:
        # First, so that the kubelet's startup probe sees the loop while the rest starts.
        health = HealthServer(readiness.reasons, health_addr, health_port)
        await health.start()
        print(f"probes on {health.url}", flush=True)
    gateway = Gateway(config, task_manager=task_manager)
    for name, path in (models or {}).items():
        ref = gateway.models.add_file(path, name=name)
        log.info("model %s = %s", name, ref.sha256)
    await gateway.start()
    readiness.listening = True
    print(f"listening on {gateway.address}", flush=True)
    agent: NodeAgent | None = None
    kubelet: KubeletServer | None = None
    api: client.ApiClient | None = None
    metrics: MetricsServer | None = None
    if node_agent is not None or secure_metrics is not None:
        # Without a node agent: the pod's service account, or $KUBECONFIG.
        kubeconfig = node_agent.kubeconfig if node_agent is not None else None
        api = instrument(await connect("parkfleet-gateway", kubeconfig), gateway.metrics.registry)
    if secure_metrics is not None and api is not None:
        guard = NonResourceGuard(api)
        host, port = secure_metrics.host, secure_metrics.port
        metrics = MetricsServer(gateway.metrics.registry, guard, host, port)
        await metrics.start()
        print(f"metrics on {metrics.url}", flush=True)
    if node_agent is not None and api is not None:
        ca_path = node_agent.kubelet_client_ca or api.configuration.ssl_ca_cert
        client_ca = await asyncio.to_thread(Path(ca_path).read_bytes) if ca_path else None
        logs = LogStore()
        kubelet = KubeletServer(
            api, logs, client_ca, host=node_agent.advertise_address, port=node_agent.kubelet_port
        )
        await kubelet.start()
        agent = NodeAgent(
            api,
            gateway,
            NodeAgentConfig(
                shard=node_agent.shard,
                address=node_agent.advertise_address,
                kubelet_port=kubelet.port,
                data_root=node_agent.data_root,
                status_heartbeat_s=node_agent.status_heartbeat_s,
                revocations=node_agent.revocations,
            ),
            logs,
            registry=gateway.metrics.registry,
        )
        kubelet.node_of = agent.node_of_pod
        await agent.start()
        readiness.registered = True
        print(f"node agent: shard {node_agent.shard}, kubelet API port {kubelet.port}", flush=True)
    stop = asyncio.Event()

    async def serve_then_stop() -> None:
        await stop.wait()
        readiness.stopping = True
        if agent is not None:
            await agent.stop()
        if kubelet is not None:
            await kubelet.stop()
        if metrics is not None:
            await metrics.stop()
        await gateway.stop(streams_grace_s)
        if api is not None:
            await api.close()
        if health is not None:
            await health.stop()

    await run_until_signalled(serve_then_stop(), stop, name="the gateway", grace_s=stop_grace_s)


def _ledger_path(args: argparse.Namespace) -> Path | None:
    """``--ledger``; by default, with the node agent, in the data volume (one file per
    shard, a name no namespace's area can have: namespaces have no dots)."""
    if args.ledger == "memory":
        return None
    if args.ledger:
        return Path(args.ledger)
    if args.node_agent or args.kubeconfig:
        data_dir: Path = args.data_dir
        return data_dir.resolve() / ledger_file_name(args.shard)
    return None


def _models(items: list[str]) -> dict[str, Path]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--model wants NAME=PATH, got {item!r}")
        out[name] = Path(path)
    return out


def main(args: argparse.Namespace, task_manager: type[TaskManager] = TaskManager) -> int:
    """Runs ``parkfleet gateway`` with its parsed arguments until SIGTERM/SIGINT."""
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    secure = None
    if args.metrics_auth == "kubernetes":
        if args.metrics_port is None:
            raise SystemExit("--metrics-auth=kubernetes guards --metrics-port: give one")
        secure = SecureMetricsOptions(args.metrics_addr, args.metrics_port)
    config = GatewayConfig.from_certs_dir(
        args.certs,
        args.models,
        listen=args.listen,
        # The guarded server replaces the plain one.
        metrics_port=None if secure else args.metrics_port,
        metrics_addr=args.metrics_addr,
        telemetry_interval_s=args.telemetry_interval_s,
        telemetry_timeout_s=args.telemetry_timeout_s,
        cells_per_pool=args.cells_per_pool,
        car_wait_s=args.car_wait_s,
        stall_timeout_s=args.stall_timeout_s,
        max_gpus_per_car=args.max_gpus_per_car,
        max_gpu_memory_mib=args.max_gpu_memory_mib,
        max_attempts=args.max_attempts,
        reputation=ReputationRule(
            quarantine_strikes=args.quarantine_strikes,
            quarantine_ratio=args.quarantine_ratio,
            trusted_after=args.trusted_after,
        ),
        start_timeout_s=args.start_timeout_s,
        placement=args.placement,
        max_stream_age_s=args.max_stream_age_s,
        ledger_path=_ledger_path(args),
        shard=args.shard,
        shard_addresses=[a for a in args.shard_addresses.split(",") if a],
        model_fetch=FetchConfig(
            max_bytes=args.model_fetch_max_bytes,
            timeout_s=args.model_fetch_timeout_s,
            ca_file=args.model_fetch_ca_bundle,
            allow_hosts=tuple(args.model_fetch_allow_host),
        ),
    )
    agent = None
    if args.node_agent or args.kubeconfig:
        agent = NodeAgentOptions(
            kubeconfig=args.kubeconfig,
            shard=args.shard,
            data_root=args.data_dir.resolve(),
            kubelet_port=args.kubelet_port,
            advertise_address=args.advertise_address or args.listen.rsplit(":", 1)[0],
            kubelet_client_ca=args.kubelet_client_ca,
            status_heartbeat_s=args.node_status_heartbeat_s,
            revocations=args.revocations_configmap,
        )
    asyncio.run(
        run(
            config,
            models=_models(args.model),
            node_agent=agent,
            task_manager=task_manager,
            secure_metrics=secure,
            health_port=args.health_port,
            health_addr=args.health_addr,
        )
    )
    return 0


def register(subparsers: Any) -> None:
    """Adds ``parkfleet gateway``."""
    p = subparsers.add_parser("gateway", help="run a fleet gateway (the cars' gRPC server)")
    p.add_argument("--listen", default="127.0.0.1:7443", help="host:port (port 0: any)")
    p.add_argument("--certs", type=Path, required=True, help="dir with ca.crt, gateway.crt/key")
    p.add_argument("--models", type=Path, required=True, help="model store directory")
    p.add_argument("--metrics-port", type=int, default=None)
    p.add_argument("--metrics-addr", default="0.0.0.0", help="address of the metrics server")
    p.add_argument(
        "--metrics-auth",
        choices=METRICS_AUTH_CHOICES,
        default="none",
        help=METRICS_AUTH_HELP,
    )
    healthserver.add_arguments(p, "listening, the shard's cells registered, not stopping")
    p.add_argument("--telemetry-interval-s", type=float, default=10.0)
    p.add_argument("--telemetry-timeout-s", type=float, default=30.0)
    p.add_argument(
        "--max-stream-age-s",
        type=float,
        default=6 * 3600.0,
        help="close a car's stream after this long (it reconnects, presenting its "
        "certificate again; a busy car an hour later); 0: never",
    )
    p.add_argument(
        "--revocations-configmap",
        default="",
        metavar="NAMESPACE/NAME",
        help="the ConfigMap of revoked cars (parkfleet certs revoke) the node agent watches; "
        "'' watches none",
    )
    p.add_argument("--cells-per-pool", type=int, default=1)
    p.add_argument(
        "--car-wait-s",
        "--grace-s",  # its former name
        dest="car_wait_s",
        type=float,
        default=DEFAULT_CAR_WAIT_S,
        help="how long a task of no pool waits for a car before NoEligibleCar "
        "(a pod's task takes its pool's gateway.graceSeconds)",
    )
    p.add_argument(
        "--max-gpus-per-car",
        type=int,
        default=8,
        help="a car claiming more GPUs is refused (its stream closes, naming the field)",
    )
    p.add_argument(
        "--max-gpu-memory-mib",
        type=int,
        default=256 * 1024,
        help="a car claiming more GPU memory is refused",
    )
    p.add_argument(
        "--max-attempts",
        type=int,
        default=DEFAULT_MAX_ATTEMPTS,
        help="cars a task may fail on (reported failures, stalls) before AttemptsExhausted",
    )
    p.add_argument(
        "--stall-timeout-s",
        type=float,
        default=120.0,
        help="move a running task whose car says nothing about it this long (0: never)",
    )
    p.add_argument(
        "--start-timeout-s",
        type=float,
        default=900.0,
        help="the same before a task's first checkpoint (model fetch and load)",
    )
    p.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default="aware",
        help="aware: prefer cars whose claimed stay covers a task's estimated run time "
        "(measured items/s of its job); blind: ignore departures (for comparison)",
    )
    r = p.add_argument_group("car reputation (votes on redundant copies and spot checks)")
    r.add_argument(
        "--quarantine-strikes",
        type=int,
        default=_DEFAULT_RULE.quarantine_strikes,
        help="strikes that quarantine a car (no more work) when they are at least "
        "--quarantine-ratio of its verdicts",
    )
    r.add_argument("--quarantine-ratio", type=float, default=_DEFAULT_RULE.quarantine_ratio)
    r.add_argument(
        "--trusted-after",
        type=int,
        default=_DEFAULT_RULE.trusted_after,
        help="agreements (times 1 + strikes) that make a car trusted",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="add an ONNX model to the store under a name pods can use (repeatable)",
    )
    f = p.add_argument_group(
        "models pods name by https:// or s3:// URI (the gateway fetches them; s3:// with "
        "the pod's object-store Secret)"
    )
    f.add_argument(
        "--model-fetch-max-bytes",
        type=int,
        default=DEFAULT_MAX_BYTES,
        help="the largest model downloaded (a longer body is cut and refused)",
    )
    f.add_argument(
        "--model-fetch-timeout-s",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="time a whole download may take",
    )
    f.add_argument(
        "--model-fetch-ca-bundle",
        type=Path,
        default=None,
        help="PEM CA bundle https:// model servers must chain to (default: the system CAs; "
        "not applied to s3:// endpoints, which the S3 client checks against its default roots)",
    )
    f.add_argument(
        "--model-fetch-allow-host",
        action="append",
        default=[],
        metavar="HOST",
        help="a host models may be fetched from: a name, or *.domain (repeatable; checked "
        "before connecting and at each redirect; for s3:// the Secret's endpoint); none "
        "given: any host",
    )
    k = p.add_argument_group("node agent (virtual kubelet)")
    k.add_argument("--node-agent", action="store_true", help="register cells as Nodes")
    k.add_argument("--kubeconfig", default=None, help="implies --node-agent")
    k.add_argument("--shard", type=int, default=0, help="this gateway's shard index")
    k.add_argument(
        "--shard-addresses",
        default="",
        metavar="ADDR0,ADDR1,...",
        help="every shard's car address (host:port) by index: cars of other shards' cells "
        "are redirected there",
    )
    k.add_argument(
        "--data-dir",
        type=Path,
        default=Path("."),
        help="task inputs and results: one area per namespace, DIR/<namespace>/",
    )
    p.add_argument(
        "--ledger",
        default="",
        metavar="FILE|memory",
        help="the owner ledger's SQLite file (default: with the node agent, "
        "DATA_DIR/ledger.shard-N.sqlite3; without it, memory only)",
    )
    k.add_argument("--kubelet-port", type=int, default=10250, help="0 picks a free port")
    k.add_argument("--advertise-address", default=None, help="default: the --listen host")
    k.add_argument(
        "--kubelet-client-ca",
        type=Path,
        default=None,
        help="CA of the apiserver's kubelet client cert (default: the kubeconfig's CA)",
    )
    k.add_argument(
        "--node-status-heartbeat-s",
        type=float,
        default=0.0,
        metavar="S",
        help="also rewrite an unchanged Node status this often (0: only on change; a Node's "
        "health travels in its Lease)",
    )
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=main)

"""The local Kubernetes control plane for development, tests and the demo.

The control plane itself is ``pf-controlplane`` (built from the Kubernetes Go
modules in ``hack/controlplane``): embedded etcd, kube-apiserver,
kube-controller-manager and kube-scheduler on loopback. This module starts and
stops it. ``make cluster-up``, ``make cluster-down``, the pytest fixture and
``make demo`` all go through :func:`start` and :func:`stop`, so there is one
code path to trust.

With ``node=True`` (``make cluster-up NODE=1``, ``parkfleet cluster up --node``) the
supervisor also starts one real worker node: Debian's containerd and runc, the
kubelet and kube-proxy of the same binary and CoreDNS, in a network namespace of
their own (root only). :func:`import_image` puts an image archive into its containerd.

:func:`restart_component` (``parkfleet cluster restart NAME``) restarts one component
of a running cluster, the supervisor staying up: the API server, etcd, the
controller-manager, the scheduler, or one of the node's programs. A component that
dies on its own still stops the whole cluster.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import logging
import os
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from parkfleet.pidfiles import PidFile, terminate

__all__ = [
    "RESTARTABLE",
    "ClusterError",
    "ComponentRestart",
    "LocalCluster",
    "RealNode",
    "default_binary",
    "die_with_parent",
    "import_image",
    "kubectl",
    "register",
    "restart_component",
    "start",
    "stop",
]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
_PR_SET_PDEATHSIG = 1
# How long a stopped control plane's process group may take to empty.
_GROUP_GRACE_S = 5.0

# The components restart_component knows; the node's (after etcd) only with a node.
RESTARTABLE = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "etcd",
    "containerd",
    "kubelet",
    "kube-proxy",
    "coredns",
)
# The supervisor may take up to 10 s to stop a component, then the wait for ready.
_RESTART_MARGIN_S = 30.0


class ClusterError(RuntimeError):
    """The control plane could not be started or stopped."""


@dataclass(frozen=True)
class RealNode:
    """The cluster's real worker node (``start(node=True)``).

    Attributes:
        name: The Node's name.
        ip: Its InternalIP: the node end of the veth pair, reachable from this machine
            (NodePort Services answer there).
        host_ip: The host end of the veth pair.
        netns: The network namespace the node's processes run in (``ip netns``).
        containerd_address: containerd's socket (``ctr --address``; CRI namespace ``k8s.io``).
        pod_cidr: The pods' addresses (inside the node's namespaces only).
        service_cidr: The Services' cluster IPs (kube-proxy's rules in the namespace).
        dns_ip: The kube-dns Service (CoreDNS).
        ready_seconds: From the node's start to Node Ready and CoreDNS answering.
    """

    name: str
    ip: str
    host_ip: str
    netns: str
    containerd_address: Path
    pod_cidr: str
    service_cidr: str
    dns_ip: str
    ready_seconds: float


@dataclass(frozen=True)
class LocalCluster:
    """A running local control plane.

    Attributes:
        directory: State folder (certificates, etcd data, component logs).
        kubeconfig: Admin kubeconfig (client certificate in ``system:masters``).
        server: The kube-apiserver URL.
        pid: Process id of the ``pf-controlplane up`` supervisor.
        ready_seconds: Time from start to ``/readyz`` and a working controller-manager
            (and, with a node, to the node Ready).
        node: The real worker node, when started with one.
    """

    directory: Path
    kubeconfig: Path
    server: str
    pid: int
    ready_seconds: float
    node: RealNode | None = None

    @property
    def logs(self) -> Path:
        """Folder holding one log file per component."""
        return self.directory / "logs"


@dataclass(frozen=True)
class ComponentRestart:
    """One component restarted on request (:func:`restart_component`).

    Attributes:
        component: Its name, one of :data:`RESTARTABLE`.
        pid_before: Its process before the restart (for etcd, embedded in the
            supervisor, the supervisor's).
        pid: Its process now.
        restarts: How many times it has been restarted on request so far.
        stopped_seconds: From the request until the old process was gone.
        ready_seconds: From the request until the new one was ready.
    """

    component: str
    pid_before: int
    pid: int
    restarts: int
    stopped_seconds: float
    ready_seconds: float


def default_binary() -> Path:
    """Where ``make controlplane`` puts the binary."""
    return Path(os.environ.get("PARKFLEET_CONTROLPLANE", REPO_ROOT / ".cache/bin/pf-controlplane"))


def kubectl(
    kubeconfig: Path,
    *args: str,
    stdin: str | None = None,
    check: bool = True,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Runs the machine's kubectl against a cluster, as a user would type it.

    Args:
        kubeconfig: The cluster's kubeconfig.
        args: kubectl's arguments.
        stdin: Text for kubectl's standard input (e.g. a manifest for ``apply -f -``).
        check: Raise when kubectl fails.
        timeout: Seconds before kubectl is killed.

    Returns:
        The finished process (stdout and stderr as text).

    Raises:
        ClusterError: kubectl failed and ``check`` is set; the message has its stderr.
    """
    proc = subprocess.run(
        ["kubectl", f"--kubeconfig={kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def die_with_parent() -> None:
    """Asks the kernel to SIGTERM this (child) process when its parent dies."""
    # Runs in the child between fork and exec: ask the kernel to SIGTERM the
    # supervisor when its parent (the test run) dies, however it dies.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start(
    directory: Path,
    *,
    kubeconfig: Path | None = None,
    binary: Path | None = None,
    detach: bool = False,
    remove_dir_on_exit: bool = False,
    flags: Mapping[str, str] | None = None,
    node: bool = False,
    timeout: float = 180.0,
) -> LocalCluster:
    """Start the control plane and wait until it is ready.

    Args:
        directory: State folder; created if missing, its etcd data reset.
        kubeconfig: Where to write the admin kubeconfig (default ``DIR/admin.kubeconfig``).
        binary: The ``pf-controlplane`` binary (default :func:`default_binary`).
        detach: Keep running after this process exits (``make cluster-up``).
            Otherwise the supervisor is stopped by the kernel if we die.
        remove_dir_on_exit: Delete ``directory`` when the supervisor stops.
        flags: Extra ``pf-controlplane up`` flags without dashes, e.g.
            ``{"node-monitor-grace-period": "10s"}``.
        node: Also start one real worker node (root; ``make node`` builds and
            installs what it runs).
        timeout: Seconds to wait for readiness.

    Returns:
        The running cluster.

    Raises:
        ClusterError: The binary is missing, or the cluster did not become ready;
            the message includes the tail of the component logs.
    """
    binary = binary or default_binary()
    if not binary.exists():
        raise ClusterError(f"{binary} is missing: run `make controlplane` first")
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    kubeconfig = (kubeconfig or directory / "admin.kubeconfig").resolve()
    args = [str(binary), "up", f"--dir={directory}", f"--kubeconfig={kubeconfig}"]
    if remove_dir_on_exit:
        args.append("--remove-dir-on-exit")
    if node:
        args.append("--node")
    args += [f"--{k}={v}" for k, v in (flags or {}).items()]
    ready_file = directory / "ready.json"
    ready_file.unlink(missing_ok=True)
    log = (directory / "supervisor.log").open("wb")
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=None if detach else die_with_parent,
        )
    finally:
        log.close()
    PidFile.write(directory / "supervisor.pid", proc.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready_file.exists():
            info: dict[str, Any] = json.loads(ready_file.read_text())
            return LocalCluster(
                directory=directory,
                kubeconfig=kubeconfig,
                server=str(info["server"]),
                pid=proc.pid,
                ready_seconds=float(info["ready_s"]),
                node=_real_node(info.get("node")),
            )
        if proc.poll() is not None:
            raise ClusterError(
                f"pf-controlplane exited with {proc.returncode} before it was ready\n"
                + _log_tail(directory)
            )
        time.sleep(0.1)
    _terminate(PidFile(directory / "supervisor.pid", proc.pid, None))
    raise ClusterError(f"not ready after {timeout:.0f}s\n" + _log_tail(directory))


def _real_node(info: dict[str, Any] | None) -> RealNode | None:
    if info is None:
        return None
    return RealNode(
        name=str(info["name"]),
        ip=str(info["ip"]),
        host_ip=str(info["host_ip"]),
        netns=str(info["netns"]),
        containerd_address=Path(info["containerd_address"]),
        pod_cidr=str(info["pod_cidr"]),
        service_cidr=str(info["service_cidr"]),
        dns_ip=str(info["dns_ip"]),
        ready_seconds=float(info["ready_s"]),
    )


def import_image(cluster: LocalCluster, archive: Path, binary: Path | None = None) -> None:
    """Import an OCI or Docker image archive into the real node's containerd.

    Pods then run it with ``imagePullPolicy: Never`` (or ``IfNotPresent`` and a tag
    other than ``latest``): the node has no registry to pull from.

    Args:
        cluster: A cluster started with ``node=True``.
        archive: The image archive (``ctr images import`` reads OCI and Docker ones).
        binary: The ``pf-controlplane`` binary (default :func:`default_binary`).

    Raises:
        ClusterError: The cluster has no node, or the import failed.
    """
    if cluster.node is None:
        raise ClusterError("the cluster has no real node: start it with node=True")
    argv = [str(binary or default_binary()), "import-image", "--dir", str(cluster.directory)]
    proc = subprocess.run(
        [*argv, str(archive)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise ClusterError(f"import {archive}: {proc.stderr.strip()}")


def restart_component(
    cluster_or_directory: LocalCluster | Path,
    component: str,
    *,
    timeout: float = 120.0,
    binary: Path | None = None,
) -> ComponentRestart:
    """Restart one component of a running cluster, its supervisor staying up.

    The supervisor stops the component (SIGTERM, SIGKILL after 10 s), starts it again
    with the same arguments and answers once it is ready: for the API server and
    etcd, ``/readyz`` answers ok; for the kubelet, its Lease is renewed; for the
    controller-manager and the scheduler (no health endpoint), the new process still
    runs a second after it started. For the API server and etcd this also waits until
    ``/readyz`` answers ``ok`` to the cluster's kubeconfig, as a client sees it. The
    restart is logged in ``supervisor.log`` and counted in ``components.json`` (each
    component's pid, restart count and last restart) in the cluster's folder.

    Args:
        cluster_or_directory: A cluster from :func:`start`, or its state folder.
        component: One of :data:`RESTARTABLE`; the node's only when it has a node.
        timeout: Seconds the restarted component may take to be ready.
        binary: The ``pf-controlplane`` binary (default :func:`default_binary`).

    Returns:
        What was restarted, with the pids before and after.

    Raises:
        ClusterError: No cluster runs there, the component is unknown, or it was not
            ready within ``timeout`` (the message says which, and where its log is).
    """
    if isinstance(cluster_or_directory, LocalCluster):
        directory = cluster_or_directory.directory
    else:
        directory = cluster_or_directory.resolve()
    binary = binary or default_binary()
    if not binary.exists():
        raise ClusterError(f"{binary} is missing: run `make controlplane` first")
    started = time.monotonic()
    argv = [str(binary), "restart", f"--dir={directory}", f"--timeout={timeout:g}s", component]
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout + _RESTART_MARGIN_S
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"restart {component}: no answer after {exc.timeout:.0f}s") from exc
    if proc.returncode != 0:
        raise ClusterError(
            proc.stderr.strip() or f"restart {component}: pf-controlplane exited {proc.returncode}"
        )
    done: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if component in ("kube-apiserver", "etcd"):
        info: dict[str, Any] = json.loads((directory / "ready.json").read_text())
        kubeconfig = Path(info["kubeconfig"])
        left = timeout - (time.monotonic() - started)
        if not _await_readyz(kubeconfig, max(left, 5.0)):
            raise ClusterError(
                f"restart {component}: /readyz did not answer ok to {kubeconfig} "
                f"(see {directory / 'logs' / 'kube-apiserver.log'})"
            )
    return ComponentRestart(
        component=str(done["component"]),
        pid_before=int(done.get("pid_before", 0)),
        pid=int(done.get("pid", 0)),
        restarts=int(done["restarts"]),
        stopped_seconds=float(done["stopped_s"]),
        ready_seconds=float(done["ready_s"]),
    )


def _await_readyz(kubeconfig: Path, timeout: float) -> bool:
    """Polls the API server's ``/readyz`` with the kubeconfig's certificates."""
    config: dict[str, Any] = yaml.safe_load(kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    user = config["users"][0]["user"]
    ctx = ssl.create_default_context(
        cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
    )
    # ssl loads a client certificate only from files; they live as long as this call.
    with tempfile.TemporaryDirectory() as d:
        cert, key = Path(d) / "c.pem", Path(d) / "k.pem"
        cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
        key.write_bytes(base64.b64decode(user["client-key-data"]))
        ctx.load_cert_chain(cert, key)
    url = str(cluster["server"]) + "/readyz"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
                if resp.status == 200 and resp.read().strip() == b"ok":
                    return True
        except OSError:
            pass  # not serving yet, or /readyz not ok (HTTPError 500 is an OSError)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def stop(cluster_or_directory: LocalCluster | Path, timeout: float = 30.0) -> bool:
    """Stop the control plane and every process it started.

    A real node's pods, network namespaces and mounts go too: the supervisor
    removes them as it stops, and what a killed supervisor left is removed here
    (``pf-controlplane node-clean``).

    Args:
        cluster_or_directory: A cluster from :func:`start`, or its state folder
            (the supervisor's pid is kept beside it).
        timeout: Seconds to wait for a clean stop before killing.

    Returns:
        True when a running cluster was stopped, False when none was running.
    """
    if isinstance(cluster_or_directory, LocalCluster):
        directory = cluster_or_directory.directory
        record: PidFile | None = PidFile(
            directory / "supervisor.pid", cluster_or_directory.pid, None
        )
    else:
        directory = cluster_or_directory.resolve()
        record = PidFile.read(directory / "supervisor.pid")
    (directory / "supervisor.pid").unlink(missing_ok=True)
    stopped = record is not None and _alive(record)
    if record is not None and stopped:
        _terminate(record, timeout)
    _clean_node(directory)
    return stopped


def _clean_node(directory: Path) -> None:
    # The supervisor removes its node's state file once the node is gone; one still
    # there means it was killed before it could clean up.
    if not (directory / "node" / "state.json").exists():
        return
    log.warning("the local cluster's node was not cleaned up by its supervisor: cleaning up")
    proc = subprocess.run(
        [str(default_binary()), "node-clean", "--dir", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise ClusterError(f"node-clean: {proc.stderr.strip()}")


def _alive(record: PidFile) -> bool:
    # A zombie child of ours is not running; reap it.
    with contextlib.suppress(ChildProcessError):  # not our child: its parent reaps it
        done, _ = os.waitpid(record.pid, os.WNOHANG)
        if done == record.pid:
            return False
    return record.running()


def _terminate(record: PidFile, timeout: float = 30.0) -> None:
    pid = record.pid
    if terminate("the control plane", pid, lambda: _alive(record), timeout, group=True):
        return
    # The supervisor stops and waits for its children on SIGTERM; once its parent has
    # reaped it (moments later) its process group is empty. A member still there after
    # that would be a bug of the supervisor: killed, and said.
    deadline = time.monotonic() + _GROUP_GRACE_S
    while _group_exists(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _group_exists(pid):
        log.warning("the control plane left processes behind (group %d): sending SIGKILL", pid)
        with contextlib.suppress(ProcessLookupError):  # they went meanwhile
            os.killpg(pid, signal.SIGKILL)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _log_tail(directory: Path, lines: int = 15) -> str:
    parts = []
    for log in [directory / "supervisor.log", *sorted(directory.glob("logs/*.log"))]:
        if log.exists():
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log} ---\n" + "\n".join(tail))
    return "\n".join(parts)


def _cmd_up(args: argparse.Namespace) -> int:
    flags = dict(f.split("=", 1) for f in args.flag)
    try:
        cluster = start(
            Path(args.dir),
            kubeconfig=Path(args.kubeconfig),
            detach=True,
            flags=flags,
            node=args.node,
            timeout=args.timeout,
        )
    except ClusterError as exc:
        print(f"cluster up failed: {exc}")
        return 1
    print(f"local control plane ready at {cluster.server} in {cluster.ready_seconds:.1f}s")
    if cluster.node is not None:
        n = cluster.node
        print(
            f"node {n.name} Ready in {n.ready_seconds:.1f}s at {n.ip} (network namespace "
            f"{n.netns}; pods {n.pod_cidr}, Services {n.service_cidr}, DNS {n.dns_ip})"
        )
        print(f"images: {default_binary()} import-image --dir {cluster.directory} ARCHIVE")
    print(f"logs: {cluster.logs}")
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    stopped = stop(Path(args.dir))
    print("local control plane stopped" if stopped else "no local control plane was running")
    return 0


def _cmd_restart(args: argparse.Namespace) -> int:
    try:
        done = restart_component(Path(args.dir), args.component, timeout=args.timeout)
    except ClusterError as exc:
        print(f"cluster restart failed: {exc}")
        return 1
    print(
        f"{done.component} restarted (restart {done.restarts}): pid {done.pid_before} -> "
        f"{done.pid}, ready in {done.ready_seconds:.1f}s"
    )
    return 0


def register(subparsers: Any) -> None:
    """Add ``parkfleet cluster up|down|restart``."""
    parser = subparsers.add_parser("cluster", help="start or stop the local control plane")
    sub = parser.add_subparsers(dest="action", required=True)
    up = sub.add_parser("up", help="start it in the background and wait for /readyz")
    up.add_argument("--dir", default=str(REPO_ROOT / ".cache/cluster"))
    up.add_argument("--kubeconfig", default=str(REPO_ROOT / ".cache/kubeconfig"))
    up.add_argument("--timeout", type=float, default=180.0)
    up.add_argument(
        "--node",
        action="store_true",
        help="also start one real node: containerd, kubelet, kube-proxy, CoreDNS (root; make node)",
    )
    up.add_argument(
        "--flag",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="pass a pf-controlplane up flag, e.g. node-monitor-grace-period=10s",
    )
    up.set_defaults(func=_cmd_up)
    down = sub.add_parser("down", help="stop it and everything it started")
    down.add_argument("--dir", default=str(REPO_ROOT / ".cache/cluster"))
    down.set_defaults(func=_cmd_down)
    restart = sub.add_parser(
        "restart", help="restart one component (e.g. kube-apiserver); the cluster stays up"
    )
    restart.add_argument("component", choices=RESTARTABLE)
    restart.add_argument("--dir", default=str(REPO_ROOT / ".cache/cluster"))
    restart.add_argument("--timeout", type=float, default=120.0)
    restart.set_defaults(func=_cmd_restart)

"""The local Kubernetes control plane for development, tests and the demo.

The control plane itself is ``pf-controlplane`` (built from the Kubernetes Go
modules in ``hack/controlplane``): embedded etcd, kube-apiserver,
kube-controller-manager and kube-scheduler on loopback. This module starts and
stops it. ``make cluster-up``, ``make cluster-down``, the pytest fixture and
``make demo`` all go through :func:`start` and :func:`stop`, so there is one
code path to trust.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ClusterError",
    "LocalCluster",
    "default_binary",
    "die_with_parent",
    "kubectl",
    "register",
    "start",
    "stop",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
_PR_SET_PDEATHSIG = 1


class ClusterError(RuntimeError):
    """The control plane could not be started or stopped."""


@dataclass(frozen=True)
class LocalCluster:
    """A running local control plane.

    Attributes:
        directory: State folder (certificates, etcd data, component logs).
        kubeconfig: Admin kubeconfig (client certificate in ``system:masters``).
        server: The kube-apiserver URL.
        pid: Process id of the ``pf-controlplane up`` supervisor.
        ready_seconds: Time from start to ``/readyz`` and a working controller-manager.
    """

    directory: Path
    kubeconfig: Path
    server: str
    pid: int
    ready_seconds: float

    @property
    def logs(self) -> Path:
        """Folder holding one log file per component."""
        return self.directory / "logs"


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
    (directory / "supervisor.pid").write_text(str(proc.pid))
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
            )
        if proc.poll() is not None:
            raise ClusterError(
                f"pf-controlplane exited with {proc.returncode} before it was ready\n"
                + _log_tail(directory)
            )
        time.sleep(0.1)
    _terminate(proc.pid)
    raise ClusterError(f"not ready after {timeout:.0f}s\n" + _log_tail(directory))


def stop(cluster_or_directory: LocalCluster | Path, timeout: float = 30.0) -> bool:
    """Stop the control plane and every process it started.

    Args:
        cluster_or_directory: A cluster from :func:`start`, or its state folder
            (the supervisor's pid is kept beside it).
        timeout: Seconds to wait for a clean stop before killing.

    Returns:
        True when a running cluster was stopped, False when none was running.
    """
    if isinstance(cluster_or_directory, LocalCluster):
        pid: int | None = cluster_or_directory.pid
        directory = cluster_or_directory.directory
    else:
        directory = cluster_or_directory.resolve()
        pid_file = directory / "supervisor.pid"
        pid = int(pid_file.read_text()) if pid_file.exists() else None
    (directory / "supervisor.pid").unlink(missing_ok=True)
    if pid is None or not _alive(pid):
        return False
    _terminate(pid, timeout)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours is not running; reap it.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _terminate(pid: int, timeout: float = 30.0) -> None:
    # The supervisor stops its children on SIGTERM; the process group kill
    # afterwards is the backstop that guarantees nothing is left running.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    while _alive(pid):
        time.sleep(0.05)


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
            timeout=args.timeout,
        )
    except ClusterError as exc:
        print(f"cluster up failed: {exc}")
        return 1
    print(f"local control plane ready at {cluster.server} in {cluster.ready_seconds:.1f}s")
    print(f"logs: {cluster.logs}")
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    stopped = stop(Path(args.dir))
    print("local control plane stopped" if stopped else "no local control plane was running")
    return 0


def register(subparsers: Any) -> None:
    """Add ``parkfleet cluster up|down``."""
    parser = subparsers.add_parser("cluster", help="start or stop the local control plane")
    sub = parser.add_subparsers(dest="action", required=True)
    up = sub.add_parser("up", help="start it in the background and wait for /readyz")
    up.add_argument("--dir", default=str(REPO_ROOT / ".cache/cluster"))
    up.add_argument("--kubeconfig", default=str(REPO_ROOT / ".cache/kubeconfig"))
    up.add_argument("--timeout", type=float, default=180.0)
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

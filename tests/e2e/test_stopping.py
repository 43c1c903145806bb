"""Processes that stop: SIGTERM ends the operator and the gateway, and demo-down leaves nothing.

Each test starts a control plane of its own, as ``make demo`` does (the session's is shared
and must outlive them), with the operator (admission webhook included), a gateway and a
few simulated cars.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from parkfleet import devcluster
from parkfleet.demo import down
from parkfleet.devstack import STOP_TIMEOUT_S, DevStack, pid_dir
from parkfleet.pidfiles import PidFile

from .conftest import REPO

pytestmark = pytest.mark.e2e


@pytest.fixture
def demo_root(tmp_path: Path) -> Iterator[Path]:
    """A folder laid out as ``.cache/demo``; whatever is left in it is stopped afterwards."""
    if not devcluster.default_binary().exists():
        pytest.fail("the local control plane is not built: run `make controlplane`")
    yield tmp_path
    down(tmp_path)


def _start_demo_like(root: Path) -> DevStack:
    """What ``make demo DEMO_ARGS=--keep`` starts, with 5 cars instead of 200."""
    kubeconfig = root / "kubeconfig"
    devcluster.start(root / "cluster", kubeconfig=kubeconfig, detach=True)
    for crd in ("fleetpools", "inferencejobs"):
        devcluster.kubectl(
            kubeconfig, "apply", "-f", str(REPO / "crds" / f"{crd}.parkfleet.io.yaml")
        )
    stack = DevStack(root / "stack", kubeconfig, telemetry_interval_s=1.0, detach=True)
    stack.prepare()
    stack.start_operator()
    stack.start_gateway()
    stack.start_fleet(5, 1, "demo")
    devcluster.kubectl(
        kubeconfig, "apply", "-f", str(REPO / "crds" / "samples" / "fleetpool-demo.yaml")
    )
    stack.procs["fleet"].wait_for_line(r"connected [1-9]", timeout=60)
    return stack


def _processes_in(root: Path) -> list[str]:
    """Processes whose command line names ``root`` or that run in it (but this one)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(proc / "cwd")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # gone meanwhile, or not ours to look at
        if str(root) in cmdline or cwd.startswith(str(root)):
            found.append(f"{proc.name}: {cmdline.strip()}")
    return found


def test_operator_and_gateway_exit_on_sigterm_with_the_api_server_gone(demo_root: Path) -> None:
    stack = _start_demo_like(demo_root)
    # The reported defect: the control plane went first, and the operator then ignored
    # SIGTERM for over 50 s, retrying its webhook patches against it.
    assert devcluster.stop(demo_root / "cluster")
    time.sleep(2)  # let their watches and the node agent find the API server gone
    procs = [stack.procs["operator"], stack.procs["gateway"]]
    for proc in procs:
        proc.popen.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            code = proc.popen.wait(timeout=STOP_TIMEOUT_S)  # before demo-down would SIGKILL
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"{proc.name} still runs {STOP_TIMEOUT_S:g} s after SIGTERM:\n{proc.tail()}"
            )
        assert code == 0, f"{proc.name} exited with {code}:\n{proc.tail()}"


def test_demo_down_leaves_no_process_behind(
    demo_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Started by a process that exits, as `make demo DEMO_ARGS=--keep` is: from then on
    # the records are all there is to find them by (and none of them is our child).
    started = subprocess.run(
        [sys.executable, "-m", "tests.e2e.test_stopping", str(demo_root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    records = [PidFile.read(p) for p in sorted(pid_dir(demo_root / "stack").glob("*.pid"))]
    records.append(PidFile.read(demo_root / "cluster" / "supervisor.pid"))
    assert all(r is not None and r.running() for r in records), records
    assert {r.path.stem for r in records if r} == {"operator", "gateway", "fleet", "supervisor"}

    with caplog.at_level(logging.WARNING):
        stopped = down(demo_root)

    assert stopped == ["fleet", "gateway", "operator", "control plane"]
    assert "SIGKILL" not in caplog.text  # SIGTERM was enough for every one
    assert [r for r in records if r and r.running()] == []
    assert _processes_in(demo_root) == []
    assert list(pid_dir(demo_root / "stack").glob("*.pid")) == []
    assert down(demo_root) == []


if __name__ == "__main__":
    _start_demo_like(Path(sys.argv[1]))

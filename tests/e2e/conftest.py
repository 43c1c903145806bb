"""End-to-end fixtures: the real local control plane, started once per session."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config

from parkfleet import devcluster, devs3
from parkfleet.devstack import DevStack
from parkfleet.objectstore import S3Credentials

REPO = Path(__file__).resolve().parents[2]

# Short grace periods so that node-lifecycle behaviour shows within seconds. The grace
# must exceed the 10 s Lease renewal (Kubernetes' own is 40 s for the same 10 s).
NODE_MONITOR_GRACE_S = 20
E2E_FLAGS = {
    "node-monitor-grace-period": f"{NODE_MONITOR_GRACE_S}s",
    "node-monitor-period": "1s",
    "node-startup-grace-period": "20s",
    "default-not-ready-toleration-seconds": "30",
    "default-unreachable-toleration-seconds": "30",
}


@pytest.fixture(scope="session")
def cluster() -> Iterator[devcluster.LocalCluster]:
    """The local control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.

    Started by the same code path as ``make cluster-up``; stopped afterwards
    with nothing left running and its temporary folder removed, also when a
    test fails or the run is interrupted (the supervisor dies with us).
    """
    if not devcluster.default_binary().exists():
        pytest.fail(
            "the local control plane is not built: run `make controlplane` (make test does)"
        )
    # The supervisor removes this folder when it stops, also when it is
    # stopped by the kernel because this test run died.
    tmp = Path(tempfile.mkdtemp(prefix="parkfleet-e2e-"))
    try:
        running = devcluster.start(tmp, remove_dir_on_exit=True, flags=E2E_FLAGS)
        yield running
    finally:
        devcluster.stop(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def api(cluster: devcluster.LocalCluster) -> AsyncIterator[client.ApiClient]:
    """An async Kubernetes API client logged in as the cluster admin."""
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=cfg)
    async with client.ApiClient(configuration=cfg) as api_client:
        yield api_client


@pytest.fixture(scope="session")
def kubectl(cluster: devcluster.LocalCluster) -> Kubectl:
    """Runs the machine's kubectl against the local control plane, as a user would."""
    return Kubectl(cluster.kubeconfig)


class Kubectl:
    """A thin runner for ``kubectl --kubeconfig ...``."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig

    def __call__(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = devcluster.kubectl(self.kubeconfig, *args, stdin=stdin, check=False, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
        return proc


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devs3.S3Server]:
    """A real S3 server (versitygw from its Go module) on loopback, for the session."""
    if not devs3.default_binary().exists():
        pytest.fail("versitygw is not built: run `make versitygw` (make test does)")
    server = devs3.start(tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        server.stop()


def creds(s3: devs3.S3Server) -> S3Credentials:
    """The server's root keys as a job's object-store credentials."""
    return S3Credentials(s3.endpoint, s3.access_key, s3.secret_key)


@pytest.fixture(scope="session")
def stack(cluster: devcluster.LocalCluster) -> Iterator[DevStack]:
    """Operator + gateway (shard 0) + 50 simulated cars of pool `demo` in 5 cells.

    Also applies the FleetPool and InferenceJob CRDs, the `demo` sample pool and a one-cell
    pool `solo` (short grace period) that tests fill with cars of their own.
    """
    from .kube import SOLO_POOL

    k = Kubectl(cluster.kubeconfig)
    # Both CRDs before the operator starts, as the chart installs them: kopf re-reads the
    # API's discovery on each CRD event, and a CRD whose last event comes before discovery
    # lists it stays unserved (an InferenceJob the operator never sees).
    for crd in ("fleetpools", "inferencejobs"):
        k("apply", "-f", str(REPO / "crds" / f"{crd}.parkfleet.io.yaml"))
        k("wait", "--for=condition=Established", f"crd/{crd}.parkfleet.io", "--timeout=60s")
    with tempfile.TemporaryDirectory(prefix="parkfleet-stack-") as tmp:
        s = DevStack(Path(tmp), cluster.kubeconfig, telemetry_interval_s=1.0)
        try:
            s.prepare()
            s.start_operator()
            s.start_gateway()
            s.start_fleet(50, 5, "demo")
            k("apply", "-f", str(REPO / "crds" / "samples" / "fleetpool-demo.yaml"))
            k("apply", "-f", "-", stdin=SOLO_POOL)
            yield s
        finally:
            s.stop()
            k("delete", "fp", "demo", "solo", "--ignore-not-found", "--wait=false", check=False)

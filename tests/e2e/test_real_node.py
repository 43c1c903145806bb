"""The local cluster's real node: a kubelet on containerd runs pods from a local image.

``devcluster.start(node=True)`` (``make cluster-up NODE=1``) starts Debian's containerd
and runc, the kubelet, kube-proxy and CoreDNS in a network namespace of their own.
These tests run real pods on it (an image built here from Debian's static busybox,
imported into its containerd), read their logs through the API server and the
kubelet, resolve and reach Services, and check that stopping the cluster leaves
nothing on the machine: no process, mount, network namespace, veth, iptables rule
or kernel setting changed.

Root only (network namespaces, mounts, cgroups), with ``make node`` done (the
binaries and Debian's packages). Not part of ``make test``: ``make test-node``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from parkfleet import devcluster
from parkfleet.devstack import DevStack

from .conftest import E2E_FLAGS, Kubectl
from .kube import SOLO_POOL, get_json, until

pytestmark = [pytest.mark.e2e, pytest.mark.node]

REPO = Path(__file__).resolve().parents[2]
IMAGE = "parkfleet.local/busybox:1"
BUSYBOX = Path("/bin/busybox")
# The kernel settings the kubelet changes at start; the node puts them back.
SYSCTLS = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops")
# Folders the node's programs would use by default, or create whatever their settings.
HOST_DIRS = (
    "/run/netns",
    "/run/containerd",
    "/var/lib/cni",
    "/var/lib/containerd",
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
)


def node_requirements() -> None:
    """Skips without root; fails naming what `make node` would provide."""
    if os.geteuid() != 0:
        pytest.skip("the real node needs root (network namespaces, mounts, cgroups)")
    missing = [
        str(p)
        for p in (
            devcluster.default_binary(),
            devcluster.default_binary().with_name("pf-coredns"),
            devcluster.default_binary().with_name("pf-pause"),
            BUSYBOX,
        )
        if not p.exists()
    ] + [t for t in ("containerd", "ctr", "runc", "iptables") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run `make node`")


def _sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


@dataclass(frozen=True)
class HostState:
    """What a node could leave behind on this machine."""

    netns: frozenset[str]
    links: frozenset[str]
    mounts: frozenset[str]
    iptables: str
    sysctls: tuple[str, ...]
    host_dirs: tuple[bool, ...]

    @staticmethod
    def now() -> HostState:
        mounts = frozenset(
            line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
        )
        return HostState(
            netns=frozenset(line.split()[0] for line in _sh("ip", "netns", "list").splitlines()),
            links=frozenset(
                line.split(":")[1].strip().split("@")[0]
                for line in _sh("ip", "-o", "link", "show").splitlines()
            ),
            mounts=mounts,
            # Rules only: the packet counters change all the time.
            iptables="\n".join(
                line
                for line in _sh("iptables-save").splitlines()
                if line.startswith(("-A", "-N", "*"))
            ),
            sysctls=tuple(Path("/proc/sys", k).read_text() for k in SYSCTLS),
            host_dirs=tuple(Path(d).exists() for d in HOST_DIRS),
        )


def _left_processes(cluster: devcluster.LocalCluster, pod_cmdline: str) -> list[str]:
    # Any process naming the cluster's folders (the kubelet, containerd, its shims
    # name the node's run folder), or the pod's.
    assert cluster.node is not None
    marks = (str(cluster.directory), str(cluster.node.containerd_address.parent), pod_cmdline)
    left = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if state != "Z" and any(m in cmdline for m in marks):
            left.append(f"{proc.name}: {cmdline}")
    return left


def _start(tmp: Path) -> devcluster.LocalCluster:
    cluster = devcluster.start(tmp, node=True, remove_dir_on_exit=True, flags=E2E_FLAGS)
    assert cluster.node is not None
    archive = tmp / "busybox.tar"
    subprocess.run(
        [
            str(devcluster.default_binary()),
            "image",
            f"--ref={IMAGE}",
            f"--out={archive}",
            f"--add={BUSYBOX}:/bin/busybox",
            "--entrypoint=/bin/busybox",
        ],
        check=True,
    )
    devcluster.import_image(cluster, archive)
    return cluster


@contextlib.contextmanager
def _fresh_cluster() -> Iterator[tuple[devcluster.LocalCluster, Path]]:
    """A control plane with the real node in a folder of its own, stopped on exit."""
    node_requirements()
    tmp = Path(tempfile.mkdtemp(prefix="parkfleet-node-e2e-"))
    try:
        yield _start(tmp), tmp
    finally:
        devcluster.stop(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="class")
def node_cluster() -> Iterator[devcluster.LocalCluster]:
    """A control plane with the real node, the busybox image imported.

    Class-scoped: stopped before the tests that check what stopping leaves.
    """
    with _fresh_cluster() as (cluster, _):
        yield cluster


@pytest.fixture(scope="class")
def k(node_cluster: devcluster.LocalCluster) -> Kubectl:
    return Kubectl(node_cluster.kubeconfig)


def _pod(name: str, script: str, restart: str = "Never", labels: str = "{}") -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {labels}}}
spec:
  restartPolicy: {restart}
  nodeSelector: {{parkfleet.io/real-node: "true"}}
  containers:
  - name: main
    image: {IMAGE}
    imagePullPolicy: Never
    command: ["/bin/busybox", "sh", "-c", {json.dumps(script)}]
"""


def _phase(k: Kubectl, name: str) -> str:
    return str(get_json(k, "pod", name).get("status", {}).get("phase", ""))


class TestRealNode:
    """One cluster with the node for these tests."""

    def test_node_registers_ready_with_its_own_addresses(
        self, node_cluster: devcluster.LocalCluster, k: Kubectl
    ) -> None:
        node = node_cluster.node
        assert node is not None
        obj = get_json(k, "node", node.name)
        ready = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
        assert ready["Ready"] == "True"
        assert {"type": "InternalIP", "address": node.ip} in obj["status"]["addresses"]
        assert obj["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://1.")
        assert obj["status"]["nodeInfo"]["kubeletVersion"] == "v1.34.4"
        # Pod and Service addresses exist only inside the node's namespaces: this machine
        # holds the host end of the veth pair and nothing of either range.
        pods = ipaddress.ip_network(node.pod_cidr)
        services = ipaddress.ip_network(node.service_cidr)
        for private in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"):
            assert not pods.overlaps(ipaddress.ip_network(private))
            assert not services.overlaps(ipaddress.ip_network(private))
        host_addrs = [
            ipaddress.ip_interface(line.split()[3])
            for line in _sh("ip", "-o", "-4", "addr", "show").splitlines()
        ]
        assert not [a for a in host_addrs if a.ip in pods or a.ip in services]
        assert ipaddress.ip_interface(f"{node.host_ip}/30") in host_addrs
        # ... and a route to the pods through the node (webhooks, the gateways' kubelet API).
        assert f"via {node.ip} " in _sh("ip", "route", "get", str(pods[2]))

    def test_pod_runs_to_completion_with_dns_and_the_api_service(self, k: Kubectl) -> None:
        started = time.monotonic()
        script = (
            "echo hello from $(/bin/busybox hostname);"
            " /bin/busybox nslookup kubernetes.default.svc.cluster.local"
            " && /bin/busybox nc -w 5 kubernetes.default 443 </dev/null && echo api-reachable"
        )
        k("apply", "-f", "-", stdin=_pod("hello", script))
        phase = until(
            lambda: p if (p := _phase(k, "hello")) in ("Succeeded", "Failed") else None,
            120,
            "the pod to finish",
        )
        logs = k("logs", "hello").stdout
        assert phase == "Succeeded", logs
        print(f"pod created -> Completed in {time.monotonic() - started:.1f}s")
        assert "hello from hello" in logs
        # CoreDNS answers through kube-dns's cluster IP; the API server through `kubernetes`.
        assert "Server:\t\t198.19.0.10" in logs
        assert "Address: 198.19.0.1" in logs
        assert "api-reachable" in logs
        k("delete", "pod", "hello", "--wait=false")

    def test_nodeport_service_answers_from_this_machine(
        self, node_cluster: devcluster.LocalCluster, k: Kubectl
    ) -> None:
        assert node_cluster.node is not None
        script = (
            "mkdir -p /www && echo served-by-$(/bin/busybox hostname) > /www/index.html"
            " && exec /bin/busybox httpd -f -p 8080 -h /www"
        )
        k("apply", "-f", "-", stdin=_pod("web", script, restart="Always", labels="{app: web}"))
        k(
            "apply",
            "-f",
            "-",
            stdin="""
    apiVersion: v1
    kind: Service
    metadata: {name: web}
    spec:
      type: NodePort
      selector: {app: web}
      ports: [{port: 80, targetPort: 8080}]
    """,
        )
        k("wait", "--for=condition=Ready", "pod/web", "--timeout=60s")
        port = get_json(k, "service", "web")["spec"]["ports"][0]["nodePort"]
        url = f"http://{node_cluster.node.ip}:{port}/"

        def answer() -> str | None:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    return str(resp.read().decode())
            except OSError:
                return None  # kube-proxy has not synced the new Service yet

        assert until(answer, 30, f"{url} to answer").strip() == "served-by-web"
        assert "exec-works" in k("exec", "web", "--", "/bin/busybox", "echo", "exec-works").stdout
        k("delete", "service", "web")
        k("delete", "pod", "web", "--wait=false")

    def test_running_pod_outlives_kubelet_and_containerd_restarts(
        self, node_cluster: devcluster.LocalCluster, k: Kubectl
    ) -> None:
        cmdline = f"/bin/busybox sleep {46000 + os.getpid() % 10000}"
        k("apply", "-f", "-", stdin=_pod("survivor", f"echo up; exec {cmdline}", "Always"))
        k("wait", "--for=condition=Ready", "pod/survivor", "--timeout=60s")

        def container() -> list[str]:
            return [p for p in _left_processes(node_cluster, cmdline) if cmdline in p]

        before = container()
        assert len(before) == 1
        for part in ("containerd", "kubelet"):
            done = devcluster.restart_component(node_cluster, part, timeout=60)
            assert done.pid != done.pid_before
        # The same container process, adopted by the new kubelet and containerd.
        assert container() == before
        status = get_json(k, "pod", "survivor")["status"]
        assert status["containerStatuses"][0]["restartCount"] == 0
        k("wait", "--for=condition=Ready", "pod/survivor", "--timeout=60s")
        # restart_component returned once the new kubelet listed the pod: it serves its logs.
        logs = until(
            lambda: (p := k("logs", "survivor", check=False)).returncode == 0 and p.stdout,
            30,
            "the new kubelet to serve the pod's logs",
        )
        assert "up" in logs
        assert (
            "exec-works" in k("exec", "survivor", "--", "/bin/busybox", "echo", "exec-works").stdout
        )
        k("delete", "pod", "survivor", "--wait=false")

    def test_real_node_is_ready_beside_virtual_cell_nodes(
        self, node_cluster: devcluster.LocalCluster, k: Kubectl
    ) -> None:
        assert node_cluster.node is not None
        k("apply", "-f", str(REPO / "crds" / "fleetpools.parkfleet.io.yaml"))
        k("wait", "--for=condition=Established", "crd/fleetpools.parkfleet.io", "--timeout=60s")
        with tempfile.TemporaryDirectory(prefix="parkfleet-node-stack-") as tmp:
            s = DevStack(Path(tmp), node_cluster.kubeconfig, telemetry_interval_s=1.0)
            try:
                s.prepare()
                s.start_operator()
                s.start_gateway()
                s.start_fleet(4, 1, "solo")
                k("apply", "-f", "-", stdin=SOLO_POOL)

                def both_ready() -> list[str] | None:
                    ready = [
                        n["metadata"]["name"]
                        for n in get_json(k, "nodes")["items"]
                        if any(
                            c["type"] == "Ready" and c["status"] == "True"
                            for c in n["status"].get("conditions", [])
                        )
                    ]
                    return sorted(ready) if len(ready) == 2 else None

                assert until(both_ready, 90, "the real node and the cell Ready") == [
                    node_cluster.node.name,
                    "pf-solo-0",
                ]
            finally:
                s.stop()
                k("delete", "fp", "solo", "--ignore-not-found", "--wait=false", check=False)


def _assert_nothing_left(
    cluster: devcluster.LocalCluster, before: HostState, pod_cmdline: str
) -> None:
    assert _left_processes(cluster, pod_cmdline) == []
    after = HostState.now()
    assert after.netns == before.netns
    assert after.links == before.links
    assert after.mounts == before.mounts
    assert after.iptables == before.iptables
    assert after.sysctls == before.sysctls
    assert after.host_dirs == before.host_dirs
    links = Path("/var/log/containers")
    assert not [p for p in links.glob("*") if str(cluster.directory) in os.readlink(p)]
    assert not cluster.directory.exists()


def _running_pod(cluster: devcluster.LocalCluster) -> str:
    """Starts a pod that runs until stopped; returns its process's command line."""
    k = Kubectl(cluster.kubeconfig)
    # A duration of its own, so that the process is told from any other's.
    cmdline = f"/bin/busybox sleep {36000 + os.getpid() % 10000}"
    k("apply", "-f", "-", stdin=_pod("sleeper", f"exec {cmdline}"))
    k("wait", "--for=condition=Ready", "pod/sleeper", "--timeout=60s")
    assert _left_processes(cluster, cmdline)  # it runs (the check below sees it)
    return cmdline


def test_cluster_down_leaves_nothing_behind() -> None:
    before = HostState.now()
    with _fresh_cluster() as (cluster, tmp):
        assert cluster.node is not None
        assert HostState.now().netns != before.netns
        pod = _running_pod(cluster)
        started = time.monotonic()
        assert devcluster.stop(tmp) is True
        print(f"cluster with a running pod stopped in {time.monotonic() - started:.1f}s")
        _assert_nothing_left(cluster, before, pod)


def test_killed_supervisor_is_cleaned_up_by_cluster_down() -> None:
    before = HostState.now()
    with _fresh_cluster() as (cluster, tmp):
        pod = _running_pod(cluster)
        # SIGKILL skips the supervisor's own cleanup; its components die with it
        # (PDEATHSIG) but containerd's shims and the pods do not.
        os.kill(cluster.pid, signal.SIGKILL)
        until(lambda: not _supervisor_alive(cluster.pid), 10, "the supervisor to die")
        assert (tmp / "node" / "state.json").exists()
        assert devcluster.stop(tmp) is False  # nothing was running: the node is cleaned anyway
        shutil.rmtree(tmp)
        _assert_nothing_left(cluster, before, pod)


def _supervisor_alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return Path(f"/proc/{pid}").exists()
    return done != pid

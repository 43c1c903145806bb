"""Restarting one component of the local control plane on request, the supervisor staying up.

Fault tests (the chart's among them) restart the API server mid-job; these tests show
what they rely on: the supervisor and etcd outlive the restart, so stored objects stay,
a client's watch resumes from where it was, and a component that dies on its own still
ends the cluster. The module runs a cluster of its own (restarting the session's API
server would disturb the other tests), and the dying-component test one more.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from parkfleet import devcluster
from parkfleet.nodeagent.watchloop import EXPECTED_API_ERRORS

from .test_controlplane import eventually

pytestmark = pytest.mark.e2e

NS = "default"


def _start(tmp: Path) -> devcluster.LocalCluster:
    if not devcluster.default_binary().exists():
        pytest.fail("the local control plane is not built: run `make controlplane`")
    return devcluster.start(tmp)


@pytest.fixture(scope="module")
def cluster() -> Iterator[devcluster.LocalCluster]:
    """A cluster for this module alone (it overrides the session's, so conftest's ``api``
    talks to it), stopped and removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="parkfleet-restart-"))
    try:
        yield _start(tmp)
    finally:
        devcluster.stop(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def components(cluster: devcluster.LocalCluster) -> dict[str, Any]:
    """The supervisor's DIR/components.json."""
    status: dict[str, Any] = json.loads((cluster.directory / "components.json").read_text())
    return status


def parent_of(pid: int) -> int:
    """The parent pid of a running process (from /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def running(pid: int) -> bool:
    """Whether pid is a process that has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cm_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def follow(core: client.CoreV1Api, view: dict[str, dict[str, str]]) -> None:
    """A client's view of the ConfigMaps, kept the way informers keep theirs: list, then
    watch from the list's resourceVersion; when the server is away, watch again from the
    last resourceVersion seen; when that is gone (410: a restarted API server's watch
    cache starts at its own start), list again. It never gives up."""
    rv: str | None = None
    while True:
        try:
            if rv is None:
                listed = await core.list_namespaced_config_map(NS)
                view.clear()
                view.update({cm.metadata.name: dict(cm.data or {}) for cm in listed.items})
                rv = listed.metadata.resource_version
            async with watch.Watch() as w:
                async for event in w.stream(
                    core.list_namespaced_config_map, NS, resource_version=rv
                ):
                    obj = event["raw_object"]
                    rv = obj["metadata"]["resourceVersion"]
                    if event["type"] == "DELETED":
                        view.pop(obj["metadata"]["name"], None)
                    else:
                        view[obj["metadata"]["name"]] = dict(obj.get("data") or {})
        except ApiException as exc:
            if exc.status == 410:
                rv = None  # too old for the new server: list again
            else:
                await asyncio.sleep(0.5)  # e.g. 429 while the new server's caches fill
        except EXPECTED_API_ERRORS:
            await asyncio.sleep(0.5)  # the server is away: watch again from rv


async def test_api_server_restart_keeps_objects_and_a_watching_client_catches_up(
    cluster: devcluster.LocalCluster, api: client.ApiClient
) -> None:
    core = client.CoreV1Api(api)
    before_name = cm_name("before")
    await core.create_namespaced_config_map(
        NS, {"metadata": {"name": before_name}, "data": {"k": "v"}}
    )
    view: dict[str, dict[str, str]] = {}
    follower = asyncio.create_task(follow(core, view))
    old = components(cluster)["components"]["kube-apiserver"]
    try:
        done = await asyncio.to_thread(
            devcluster.restart_component, cluster, "kube-apiserver", timeout=120
        )

        # The supervisor stayed; the API server is a new child of it.
        assert running(cluster.pid)
        status = components(cluster)
        assert status["supervisor_pid"] == cluster.pid
        new = status["components"]["kube-apiserver"]
        assert done.pid_before == old["pid"]
        assert done.pid == new["pid"] != old["pid"]
        assert not running(old["pid"])
        assert parent_of(new["pid"]) == cluster.pid
        assert new["restarts"] == done.restarts == 1
        assert "restart kube-apiserver: pid" in (cluster.directory / "supervisor.log").read_text()

        # etcd kept what was written before; new requests work.
        kept = await core.read_namespaced_config_map(before_name, NS)
        assert kept.data == {"k": "v"}
        after_name = cm_name("after")
        await core.create_namespaced_config_map(
            NS, {"metadata": {"name": after_name}, "data": {"k": "w"}}
        )
        await core.patch_namespaced_config_map(before_name, NS, {"data": {"k": "changed"}})

        # The client that watched through the restart caught up, without being restarted.
        wanted = {before_name: {"k": "changed"}, after_name: {"k": "w"}}

        async def caught_up() -> bool:
            return {n: view.get(n) for n in wanted} == wanted

        await eventually(caught_up, 60, f"the watching client to see {wanted}")
        assert not follower.done()
    finally:
        follower.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follower


async def test_controller_manager_and_scheduler_restart(
    cluster: devcluster.LocalCluster,
) -> None:
    for name in ("kube-controller-manager", "kube-scheduler"):
        old = components(cluster)["components"][name]["pid"]
        done = await asyncio.to_thread(devcluster.restart_component, cluster, name)
        assert done.pid_before == old
        assert done.pid != old
        assert running(done.pid)
        assert parent_of(done.pid) == cluster.pid


async def test_etcd_restart_keeps_the_data(
    cluster: devcluster.LocalCluster, api: client.ApiClient
) -> None:
    core = client.CoreV1Api(api)
    name = cm_name("etcd")
    await core.create_namespaced_config_map(NS, {"metadata": {"name": name}, "data": {"k": "v"}})
    done = await asyncio.to_thread(devcluster.restart_component, cluster, "etcd")
    # etcd is embedded in the supervisor: same process, counted as restarted.
    assert done.pid == done.pid_before == cluster.pid
    assert components(cluster)["components"]["etcd"]["restarts"] == done.restarts
    assert (await core.read_namespaced_config_map(name, NS)).data == {"k": "v"}


def test_unknown_component_is_refused_clearly(cluster: devcluster.LocalCluster) -> None:
    before = components(cluster)
    with pytest.raises(devcluster.ClusterError, match=r'unknown component "kube-nothing"') as exc:
        devcluster.restart_component(cluster, "kube-nothing", timeout=10)
    assert "kube-apiserver" in str(exc.value)  # it says what it can restart
    # Without a node, the node's parts are unknown too.
    with pytest.raises(devcluster.ClusterError, match=r'unknown component "kubelet"'):
        devcluster.restart_component(cluster, "kubelet", timeout=10)
    assert components(cluster) == before


def test_restart_without_a_running_cluster_says_so(tmp_path: Path) -> None:
    with pytest.raises(devcluster.ClusterError, match="no ready cluster"):
        devcluster.restart_component(tmp_path, "kube-apiserver", timeout=10)


def test_component_dying_on_its_own_still_stops_the_supervisor() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="parkfleet-dies-"))
    try:
        doomed = _start(tmp)
        # A restarted component is watched like the first one: its death ends the cluster.
        done = devcluster.restart_component(doomed, "kube-scheduler")
        os.kill(done.pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        status = None
        while status is None and time.monotonic() < deadline:
            pid, raw = os.waitpid(doomed.pid, os.WNOHANG)  # the supervisor is our child
            status = os.waitstatus_to_exitcode(raw) if pid else None
            time.sleep(0.1)
        assert status == 1
        log = (tmp / "supervisor.log").read_text()
        assert "kube-scheduler exited: signal: killed" in log
        # It stopped the others on its way out.
        for other in ("kube-apiserver", "kube-controller-manager"):
            assert not running(components(doomed)["components"][other]["pid"])
    finally:
        devcluster.stop(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


async def test_a_request_during_the_outage_fails_and_then_works(
    cluster: devcluster.LocalCluster, api: client.ApiClient
) -> None:
    """A client that retries rides out the restart: it fails while the server is away."""
    core = client.CoreV1Api(api)
    restart = asyncio.create_task(
        asyncio.to_thread(devcluster.restart_component, cluster, "kube-apiserver")
    )
    failures = 0
    while not restart.done():
        try:
            await core.list_namespaced_config_map(NS, _request_timeout=2)
        except (*EXPECTED_API_ERRORS, ApiException):
            failures += 1
        await asyncio.sleep(0.1)
    await restart
    assert failures > 0  # the server was really away
    await core.list_namespaced_config_map(NS)

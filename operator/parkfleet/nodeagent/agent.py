"""The node agent (virtual kubelet) of one gateway shard.

It follows the FleetPools, owns the cells that rendezvous hashing gives its shard,
and for each of them keeps one Node registered, its Lease renewed every 10 s and its
status written when it changes (at most once a minute otherwise). It watches the pods
bound to those Nodes and runs them as tasks on the gateway (``pods.py``).

Level-based: every loop recomputes from what the API and the gateway say now, so a
restart of either side converges without replaying history.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from parkfleet import revocations
from parkfleet.api import GROUP, VERSION, FleetPoolSpec
from parkfleet.backoff import Backoff
from parkfleet.contract import CarCounts, node_name
from parkfleet.nodeagent.logs import LogStore
from parkfleet.nodeagent.metrics import NodeAgentMetrics
from parkfleet.nodeagent.namespaces import NamespaceLabels
from parkfleet.nodeagent.nodes import node_object, node_status
from parkfleet.nodeagent.pods import PodDriver
from parkfleet.nodeagent.posting import EventPoster
from parkfleet.nodeagent.taskspecs import TaskSpecs
from parkfleet.nodeagent.watchloop import EXPECTED_API_ERRORS, RETRY_MAX_S, RETRY_S, keep_watching
from parkfleet.shards import shard_of
from parkfleet.taskport import TaskPort

__all__ = ["NodeAgent", "NodeAgentConfig"]

log = logging.getLogger(__name__)

LEASE_NAMESPACE = "kube-node-lease"


@dataclass
class NodeAgentConfig:
    """How the node agent runs.

    Attributes:
        shard: This gateway's shard index.
        address: The address the Nodes advertise (the gateway's host).
        kubelet_port: Port of the kubelet API (``kubectl logs``).
        data_root: Where task inputs are read and results written.
        lease_seconds: Lease renewal period (Kubernetes' default is 10 s).
        lease_duration_s: Lease duration written in the Lease.
        status_check_s: How often cell states are compared with what was written.
        status_min_interval_s: Least time between two status writes of one Node.
        status_heartbeat_s: An unchanged Node status is rewritten this often; 0: never.
        pool_resync_s: FleetPools are re-listed this often besides the watch.
        revocations: ``namespace/name`` of the ConfigMap of revoked cars
            (``parkfleet.revocations``) to watch; "" watches none.
    """

    shard: int = 0
    address: str = "127.0.0.1"
    kubelet_port: int = 10250
    data_root: Path = field(default_factory=lambda: Path("."))
    lease_seconds: float = 10.0
    lease_duration_s: int = 40
    status_check_s: float = 0.25
    status_min_interval_s: float = 1.0
    # Health travels in the Lease, which the node-lifecycle controller reads, so an
    # unchanged status need not be rewritten: at 10 cells per 1,000 cars the Leases alone
    # are 1 write/s, and the kubelet's 5-minute refresh would add 3 %.
    status_heartbeat_s: float = 0.0
    pool_resync_s: float = 30.0
    revocations: str = ""


@dataclass
class _CellNode:
    """A cell this shard owns: its pool, its Node, and what was last written of it."""

    pool: FleetPoolSpec
    node: str
    written: CarCounts | None = None
    written_at: float = 0.0
    pod_watch: asyncio.Task[None] | None = None
    uid: str = ""  # the Node's; it owns the Lease, so deleting the Node deletes the Lease


class NodeAgent:
    """Registers and serves the Nodes of the cells this shard owns.

    Args:
        api: Kubernetes API client.
        port: The gateway (started) whose cars run the pods.
        config: How to run.
        logs: Log buffers (shared with the kubelet API).
        registry: Where its metrics live (the gateway's, to be served together).
    """

    def __init__(
        self,
        api: client.ApiClient,
        port: TaskPort,
        config: NodeAgentConfig,
        logs: LogStore | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.coord = client.CoordinationV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.port = port
        self.config = config
        self.logs = logs or LogStore()
        self.poster = EventPoster(api, "parkfleet-gateway", f"shard-{config.shard}")
        self.pools: dict[str, FleetPoolSpec] = {}
        self.cells: dict[str, _CellNode] = {}
        self.metrics = NodeAgentMetrics(registry)
        self.namespaces = NamespaceLabels(api)
        self.pods = PodDriver(
            api,
            port,
            self._pool_of,
            TaskSpecs(api, port, config.data_root, self.metrics),
            self.logs,
            self.poster,
            self.metrics,
            host_ip=config.address,
            namespaces=self.namespaces,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._reregistering: set[str] = set()
        self.status_writes = 0
        self.lease_writes = 0

    def node_of_pod(self, key: str) -> str:
        """The Node of a pod we run (``namespace/name``), "" when unknown."""
        cell = self.pods.cell_of(key)
        c = self.cells.get(cell) if cell is not None else None
        return c.node if c is not None else ""

    def _pool_of(self, cell: str) -> FleetPoolSpec | None:
        c = self.cells.get(cell)
        return c.pool if c is not None else None

    async def start(self) -> None:
        """Lists the pools, registers their Nodes, and starts every loop.

        While the API server cannot answer (down, restarting, its storage initialising:
        429) the first list is retried with a backoff: a shard that starts during an
        outage waits it out, not ready, instead of exiting.
        """
        retry = Backoff(base_s=RETRY_S, cap_s=RETRY_MAX_S, floor_s=RETRY_S / 4)
        while True:
            try:
                await self._resync_pools()
                break
            except EXPECTED_API_ERRORS as exc:
                log.warning("listing the pools at start: %s; retrying", _short(exc))
                await retry.wait()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._watch_pools(), name="nodeagent-pools"),
            loop.create_task(self._lease_loop(), name="nodeagent-leases"),
            loop.create_task(self._status_loop(), name="nodeagent-status"),
            loop.create_task(self.pods.run(), name="nodeagent-pod-events"),
            loop.create_task(self.namespaces.run(), name="nodeagent-namespaces"),
            *(
                [loop.create_task(self._watch_revocations(), name="nodeagent-revocations")]
                if self.config.revocations
                else []
            ),
        ]

    async def stop(self) -> None:
        """Stops every loop; Nodes stay (their Leases lapse, the cluster notices)."""
        tasks = self._tasks + [c.pod_watch for c in self.cells.values() if c.pod_watch]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []

    # ---- pools -> cells ---------------------------------------------------------------

    async def _resync_pools(self) -> None:
        listed = await self.custom.list_cluster_custom_object(GROUP, VERSION, "fleetpools")
        pools = {}
        for obj in listed.get("items", []):
            if obj["metadata"].get("deletionTimestamp"):
                continue
            spec = FleetPoolSpec.from_k8s(obj)
            pools[spec.name] = spec
        await self._apply_pools(pools)

    async def _apply_pools(self, pools: Mapping[str, FleetPoolSpec]) -> None:
        self.pools = dict(pools)
        self.port.set_pools(list(self.pools.values()))
        wanted: dict[str, FleetPoolSpec] = {}
        for pool in self.pools.values():
            for cell in pool.cell_ids():
                if self._ours(pool, cell):
                    wanted[cell] = pool
        for cell in list(self.cells):
            if cell not in wanted:
                gone = self.cells.pop(cell)
                if gone.pod_watch is not None:
                    gone.pod_watch.cancel()
                log.info("cell %s is no longer ours", cell)
        for cell, pool in wanted.items():
            known = self.cells.get(cell)
            if known is None:
                known = self.cells[cell] = _CellNode(pool=pool, node=node_name(cell))
                await self._register(cell, known)
                known.pod_watch = asyncio.get_running_loop().create_task(
                    self._watch_pods(cell, known.node), name=f"nodeagent-pods-{cell}"
                )
            elif known.pool != pool:
                known.pool = pool
                await self._register(cell, known)
                known.written = None  # capacity may change with the spec

    def _ours(self, pool: FleetPoolSpec, cell: str) -> bool:
        return shard_of(cell, pool.shards) == self.config.shard

    async def _register(self, cell: str, c: _CellNode) -> bool:
        """Creates or adopts the cell's Node; True when it had to be created."""
        body = node_object(
            c.pool, cell, address=self.config.address, kubelet_port=self.config.kubelet_port
        )
        created = True
        try:
            node = await self.core.create_node(cast(Any, body))
            log.info("registered Node %s", c.node)
        except ApiException as exc:
            if exc.status != 409:
                raise
            # Adopt the existing Node: labels, taints and annotations follow the template.
            # A strategic merge: what an admin set (a cordon's spec.unschedulable) stays.
            node = await self.core.patch_node(
                c.node, {"metadata": body["metadata"], "spec": body["spec"]}
            )
            created = False
        c.uid = str(node.metadata.uid)
        await self._write_status(cell, c, force=True)
        await self._renew(c, owned=True)
        return created

    async def _reregister(self, cell: str, c: _CellNode, why: str) -> None:
        """Registers a cell's Node again after it was deleted (``kubectl delete node``).

        The cell's cars are still here, so its Node comes back, fresh (no cordon to keep);
        unless its pool or the cell is going, when the operator deleted it on purpose.
        """
        if cell in self._reregistering or self.cells.get(cell) is not c:
            return
        self._reregistering.add(cell)
        try:
            # Asked of the API, not of our copy: the pool's deletion may not have reached us.
            listed = await self.custom.list_cluster_custom_object(
                GROUP, VERSION, "fleetpools", field_selector=f"metadata.name={c.pool.name}"
            )
            live = [
                o for o in listed.get("items", []) if not o["metadata"].get("deletionTimestamp")
            ]
            pool = FleetPoolSpec.from_k8s(live[0]) if live else None
            if pool is None or cell not in pool.cell_ids() or not self._ours(pool, cell):
                log.info("Node %s gone (%s) with its cell: not registered again", c.node, why)
                return
            if not await self._register(cell, c):
                log.info("Lease of Node %s was gone: created it again", c.node)
                return
            log.warning("Node %s was deleted (%s): registered it again", c.node, why)
            self.metrics.node_reregistrations.labels(c.pool.name).inc()
            ref = {"apiVersion": "v1", "kind": "Node", "name": c.node, "uid": c.uid}
            await self.poster.post(
                ref,
                "NodeReregistered",
                f"the Node was deleted ({why}); gateway shard "
                f"{self.config.shard} registered it again for cell {cell}",
            )
        finally:
            self._reregistering.discard(cell)

    async def _watch_pools(self) -> None:
        await keep_watching("FleetPool watch", self._follow_pools)

    async def _follow_pools(self, retry: Backoff) -> None:
        await self._resync_pools()
        retry.reset()
        w = watch.Watch()
        async with w.stream(
            self.custom.list_cluster_custom_object,
            GROUP,
            VERSION,
            "fleetpools",
            timeout_seconds=int(self.config.pool_resync_s),
        ) as stream:
            async for event in stream:
                obj = event["object"]
                pools = dict(self.pools)
                name = obj["metadata"]["name"]
                if event["type"] == "DELETED" or obj["metadata"].get("deletionTimestamp"):
                    pools.pop(name, None)
                else:
                    pools[name] = FleetPoolSpec.from_k8s(obj)
                await self._apply_pools(pools)

    async def _watch_revocations(self) -> None:
        """Follows the ConfigMap of revoked cars; every change reaches the gateway at once
        (a revoked car's live stream closes). A missing ConfigMap revokes nobody."""
        await keep_watching("revocations watch", self._follow_revocations)

    async def _follow_revocations(self, retry: Backoff) -> None:
        namespace, _, name = self.config.revocations.partition("/")
        selector = f"metadata.name={name}"
        listed = await self.core.list_namespaced_config_map(namespace, field_selector=selector)
        items = listed.items or []
        self.port.set_revocations(revocations.parse(items[0].data if items else None))
        retry.reset()
        w = watch.Watch()
        async with w.stream(
            self.core.list_namespaced_config_map,
            namespace,
            field_selector=selector,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=int(self.config.pool_resync_s),
        ) as stream:
            async for event in stream:
                obj = event["object"]
                data = None if event["type"] == "DELETED" else obj.data
                self.port.set_revocations(revocations.parse(data))

    # ---- pods ----------------------------------------------------------------------------

    async def _watch_pods(self, cell: str, node: str) -> None:
        async def follow(retry: Backoff) -> None:
            await self._follow_pods(cell, node, retry)

        await keep_watching(f"pod watch of {node}", follow)

    async def _follow_pods(self, cell: str, node: str, retry: Backoff) -> None:
        selector = f"spec.nodeName={node}"
        sanitize = self.api.sanitize_for_serialization
        listed = await self.core.list_pod_for_all_namespaces(field_selector=selector)
        seen = set()
        for pod in listed.items:
            d = sanitize(pod)
            seen.add(d["metadata"]["uid"])
            await self.pods.sync(d, cell)
        self.pods.forget_missing(cell, seen)
        retry.reset()
        # Plain dicts, as the API sent them: building a V1Pod per event and turning it
        # back into a dict cost milliseconds of a busy gateway's CPU.
        w = watch.Watch(return_type="object")
        async with w.stream(
            self.core.list_pod_for_all_namespaces,
            field_selector=selector,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=300,
        ) as stream:
            async for event in stream:
                d = event["object"]
                if event["type"] == "DELETED":
                    self.pods.forget(d)
                else:
                    await self.pods.sync(d, cell)

    # ---- leases and status --------------------------------------------------------------

    async def _renew(self, c: _CellNode, *, owned: bool = False) -> None:
        """Renews the Lease; ``owned``: also makes the Node its owner, creating it if gone.

        Raises:
            ApiException: 404 when the Lease is gone and not ``owned``: its Node may be too.
        """
        node = c.node
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        # As a kubelet's: the garbage collector deletes the Lease with its Node, so a
        # renewal's 404 says that the Node was deleted.
        owners = [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": c.uid}]
        try:
            if owned:
                # A JSON patch: "add" replaces the owners a merge would keep beside ours.
                await self.coord.patch_namespaced_lease(
                    node,
                    LEASE_NAMESPACE,
                    [
                        {"op": "add", "path": "/metadata/ownerReferences", "value": owners},
                        {"op": "add", "path": "/spec/renewTime", "value": now},
                        {"op": "add", "path": "/spec/holderIdentity", "value": node},
                    ],
                )
            else:
                await self.coord.patch_namespaced_lease(
                    node, LEASE_NAMESPACE, {"spec": {"renewTime": now, "holderIdentity": node}}
                )
        except ApiException as exc:
            if exc.status != 404 or not owned:
                raise
            await self.coord.create_namespaced_lease(
                LEASE_NAMESPACE,
                cast(
                    Any,
                    {
                        "apiVersion": "coordination.k8s.io/v1",
                        "kind": "Lease",
                        "metadata": {
                            "name": node,
                            "namespace": LEASE_NAMESPACE,
                            "ownerReferences": owners,
                        },
                        "spec": {
                            "holderIdentity": node,
                            "leaseDurationSeconds": self.config.lease_duration_s,
                            "renewTime": now,
                        },
                    },
                ),
            )
        self.lease_writes += 1
        self.metrics.lease_renewals.labels("ok").inc()

    async def _renew_one(self, cell: str, c: _CellNode) -> None:
        try:
            # A renewal that hangs must not hold up the next one: the Lease would lapse.
            async with asyncio.timeout(self.config.lease_seconds):
                try:
                    await self._renew(c)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                    await self._reregister(cell, c, "its Lease is gone")
        except EXPECTED_API_ERRORS as exc:
            self.metrics.lease_renewals.labels("error").inc()
            log.warning("lease of %s not renewed: %s", c.node, exc)
        except Exception:
            self.metrics.lease_renewals.labels("error").inc()
            log.exception("lease of %s not renewed", c.node)

    async def _lease_loop(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            # A fixed cadence, all cells at once: the time between two renewals of a
            # Lease stays the period, however many cells there are.
            due += self.config.lease_seconds
            await asyncio.sleep(max(0.0, due - loop.time()))
            await asyncio.gather(
                *(self._renew_one(cell, c) for cell, c in list(self.cells.items()))
            )

    async def _write_status(self, cell: str, c: _CellNode, *, force: bool = False) -> None:
        state = self.port.capacity(cell)
        now = time.monotonic()
        beat = self.config.status_heartbeat_s
        due = beat > 0 and now - c.written_at >= beat
        changed = state != c.written
        if not (
            force or due or (changed and now - c.written_at >= self.config.status_min_interval_s)
        ):
            return
        status = node_status(
            c.pool,
            cell,
            state,
            address=self.config.address,
            kubelet_port=self.config.kubelet_port,
            shard=self.config.shard,
        )
        await self.core.patch_node_status(c.node, {"status": status})
        c.written, c.written_at = state, now
        self.status_writes += 1
        self.metrics.status_writes.labels(c.pool.name).inc()

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.status_check_s)
            for cell, c in list(self.cells.items()):
                try:
                    try:
                        await self._write_status(cell, c)
                    except ApiException as exc:
                        if exc.status != 404:
                            raise
                        await self._reregister(cell, c, "its status write found no Node")
                except EXPECTED_API_ERRORS as exc:
                    log.warning("status of %s not written: %s", c.node, exc)
                except Exception:
                    log.exception("status of %s not written", c.node)


def _short(exc: BaseException) -> str:
    """An API error in one line (an ApiException's text carries its headers and body)."""
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}"
    return str(exc) or type(exc).__name__

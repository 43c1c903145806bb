"""FleetPool handlers: cells and their shards, status from the Nodes, clean removal.

Level-based: a timer recomputes each pool's status from its Nodes (the gateways'
node agents keep those true) and removes Nodes of cells the pool no longer has; the
create/update handlers only make the first answer come sooner.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from parkfleet.api import GROUP, LABEL_POOL, VERSION, FleetPoolSpec, node_name
from parkfleet.contract import parse_cars_condition
from parkfleet.controller.conditions import merge_conditions
from parkfleet.controller.state import OperatorState
from parkfleet.shards import shard_of

__all__ = ["pool_status", "register"]

log = logging.getLogger(__name__)

RESYNC_S = 5.0
LEASE_NAMESPACE = "kube-node-lease"


def _ready(node: Mapping[str, Any]) -> bool:
    for cond in (node.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def pool_status(
    spec: FleetPoolSpec, generation: int, nodes: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """The status a pool should show, from its Nodes (by name).

    Args:
        spec: The pool.
        generation: ``metadata.generation`` the status answers.
        nodes: The pool's Nodes as dicts, by name.

    Returns:
        The ``status`` object (without conditions' transition times).
    """
    cells = []
    totals = {"carsConnected": 0, "carsEligible": 0, "carsBusy": 0, "gpusAllocatable": 0}
    ready_cells = 0
    for cell in spec.cell_ids():
        name = node_name(cell)
        node = nodes.get(name)
        try:
            state = parse_cars_condition((node or {}).get("status", {}).get("conditions"))
        except ValueError:
            state = None  # not written by a node agent of ours: no counts to add
        entry = {
            "name": cell,
            "node": name,
            "shard": shard_of(cell, spec.shards),
            "carsConnected": state.cars_connected if state else 0,
            "carsEligible": state.cars_eligible if state else 0,
            "carsBusy": state.cars_busy if state else 0,
            "gpusAllocatable": state.gpus if state else 0,
        }
        cells.append(entry)
        for k in totals:
            totals[k] += int(str(entry[k]))
        if node is not None and _ready(node):
            ready_cells += 1
    n = len(cells)
    if ready_cells == n:
        ready = ("True", "CellsReady", f"all {n} cells have a Ready Node")
    elif ready_cells:
        ready = ("False", "CellsNotReady", f"{ready_cells} of {n} cells have a Ready Node")
    else:
        ready = ("False", "NoGateway", f"no gateway serves the {n} cells of this pool yet")
    return {
        "observedGeneration": generation,
        "cellCount": n,
        **totals,
        "cells": cells,
        "conditions": [
            {
                "type": "Ready",
                "status": ready[0],
                "reason": ready[1],
                "message": ready[2],
                "observedGeneration": generation,
            }
        ],
    }


async def _pool_nodes(api: client.ApiClient, pool: str) -> dict[str, dict[str, Any]]:
    listed = await client.CoreV1Api(api).list_node(label_selector=f"{LABEL_POOL}={pool}")
    return {n.metadata.name: api.sanitize_for_serialization(n) for n in listed.items}


async def _delete_node(core: client.CoreV1Api, coord: client.CoordinationV1Api, name: str) -> None:
    try:
        await core.delete_node(name)
    except ApiException as exc:
        if exc.status != 404:
            raise
    try:
        await coord.delete_namespaced_lease(name, LEASE_NAMESPACE)
    except ApiException as exc:
        if exc.status != 404:
            raise


async def reconcile(
    state: OperatorState, body: kopf.Body, status: Mapping[str, Any], patch: kopf.Patch
) -> None:
    """Recomputes a pool's status and removes Nodes of cells it no longer has."""
    spec = FleetPoolSpec.from_k8s(body)
    api = await state.api()
    core = client.CoreV1Api(api)
    nodes = await _pool_nodes(api, spec.name)
    wanted = {node_name(c) for c in spec.cell_ids()}
    for name in sorted(set(nodes) - wanted):
        await _delete_node(core, client.CoordinationV1Api(api), name)
        nodes.pop(name)
        kopf.info(
            body, reason="CellRemoved", message=f"removed Node {name}: the pool has fewer cells"
        )
    new = pool_status(spec, int(body["metadata"].get("generation", 0)), nodes)
    new["conditions"] = merge_conditions(status.get("conditions"), new["conditions"])
    state.metrics.observe_pool(spec.name, new)
    old_ready: Mapping[str, Any] = next(
        (c for c in status.get("conditions") or () if c.get("type") == "Ready"), {}
    )
    new_ready = new["conditions"][0]
    if old_ready.get("status") != new_ready["status"]:
        kopf.event(
            body,
            type="Normal" if new_ready["status"] == "True" else "Warning",
            reason=new_ready["reason"],
            message=new_ready["message"],
        )
    if dict(status) != new:
        for key, value in new.items():
            patch.status[key] = value


async def on_change(
    body: kopf.Body, status: kopf.Status, patch: kopf.Patch, *, state: OperatorState, **_: Any
) -> None:
    """A pool appeared or changed: answer at once rather than at the next tick."""
    await reconcile(state, body, status, patch)


async def resync(
    body: kopf.Body, status: kopf.Status, patch: kopf.Patch, *, state: OperatorState, **_: Any
) -> None:
    """The level-based loop: status follows the Nodes whatever events were missed."""
    await reconcile(state, body, status, patch)


async def on_delete(
    body: kopf.Body, logger: kopf.Logger, *, state: OperatorState, **_: Any
) -> None:
    """Removes the pool's Nodes (and their Leases) before the pool goes (finalizer)."""
    name = body["metadata"]["name"]
    api = await state.api()
    core = client.CoreV1Api(api)
    nodes = await _pool_nodes(api, name)
    for node in sorted(nodes):
        await _delete_node(core, client.CoordinationV1Api(api), node)
    state.metrics.forget_pool(name)
    logger.info("removed %d Nodes of pool %s", len(nodes), name)


def register(registry: kopf.OperatorRegistry, state: OperatorState) -> None:
    """Adds the FleetPool handlers to ``registry``, each bound to ``state``."""
    # Ids come from the functions' names (a partial's too): Kopf's annotations keep matching.
    changed = functools.partial(on_change, state=state)
    kopf.on.update(GROUP, VERSION, "fleetpools", registry=registry)(changed)
    kopf.on.create(GROUP, VERSION, "fleetpools", registry=registry)(changed)
    kopf.on.resume(GROUP, VERSION, "fleetpools", registry=registry)(changed)
    kopf.timer(
        GROUP, VERSION, "fleetpools", interval=RESYNC_S, initial_delay=1.0, registry=registry
    )(functools.partial(resync, state=state))
    kopf.on.delete(GROUP, VERSION, "fleetpools", registry=registry)(
        functools.partial(on_delete, state=state)
    )

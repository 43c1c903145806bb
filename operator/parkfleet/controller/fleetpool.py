"""FleetPool handlers: cells and their shards, status from the Nodes, clean removal.

Level-based: a timer recomputes each pool's status from its Nodes (the gateways'
node agents keep those true) and from the other pools' selectors (a Kopf index of every
pool's spec: the ``SelectorOverlap`` condition), and removes Nodes of cells the pool no
longer has; the create/update handlers only make the first answer come sooner.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import kopf
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from parkfleet.api import GROUP, LABEL_POOL, VERSION, FleetPoolSpec, node_name
from parkfleet.api.poolmatch import PoolOverlap, pool_overlaps
from parkfleet.contract import parse_cars_condition
from parkfleet.controller.conditions import merge_conditions
from parkfleet.controller.state import OperatorState
from parkfleet.shards import shard_of

__all__ = [
    "OVERLAP_AMBIGUOUS",
    "OVERLAP_CONDITION",
    "OVERLAP_NONE",
    "OVERLAP_SHADOWED",
    "OVERLAP_SHADOWS",
    "overlap_condition",
    "pool_status",
    "register",
]

log = logging.getLogger(__name__)

RESYNC_S = 5.0
LEASE_NAMESPACE = "kube-node-lease"
# The Kopf index of every pool's spec by name; Kopf hands it to the handlers as a kwarg of
# this name (``fleetpool_specs`` in on_change and resync: keep the two equal).
POOLS_INDEX = "fleetpool_specs"

# The condition on pools whose selectors match the same cars, and its reasons (most
# severe first: the reason is the first that applies; the message says every one).
OVERLAP_CONDITION = "SelectorOverlap"
OVERLAP_AMBIGUOUS = "AmbiguousSelector"  # some cars it selects join no pool (a tie)
OVERLAP_SHADOWED = "Shadowed"  # a more specific pool takes some cars it selects
OVERLAP_SHADOWS = "Shadows"  # it takes cars a less specific pool also selects
OVERLAP_NONE = "NoOverlap"
# Pools named in one message; a condition stays readable with hundreds of pools.
_MAX_NAMED = 10


def _names(names: Iterable[str]) -> str:
    ordered = sorted(names)
    shown = ", ".join(ordered[:_MAX_NAMED])
    more = len(ordered) - _MAX_NAMED
    return f"{shown} and {more} more" if more > 0 else shown


def _attributes(attrs: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in attrs.items()) or "any attributes"


def overlap_condition(overlap: PoolOverlap, generation: int) -> dict[str, Any]:
    """The ``SelectorOverlap`` condition of one pool (without its transition time).

    Args:
        overlap: How the pool's selector meets the others' (``api.poolmatch.pool_overlaps``).
        generation: ``metadata.generation`` the condition answers.

    Returns:
        The condition: status True when another pool's selector matches a car this one
        does, its reason the most severe of ``AmbiguousSelector``, ``Shadowed``, ``Shadows``.
    """
    parts = []
    reasons = []
    if overlap.ambiguous_with:
        reasons.append(OVERLAP_AMBIGUOUS)
        examples = " or ".join(_attributes(a) for a in overlap.refused)
        parts.append(
            f"cars with {examples} match this pool and pools {_names(overlap.ambiguous_with)} "
            "and no selector of theirs contains the others: they join no pool (they wait "
            "unpooled) until one selector is made more specific or removed"
        )
    if overlap.shadowed_by:
        reasons.append(OVERLAP_SHADOWED)
        parts.append(
            f"cars that the more specific pools {_names(overlap.shadowed_by)} also select "
            "do not join this pool"
        )
    if overlap.shadows:
        reasons.append(OVERLAP_SHADOWS)
        parts.append(
            f"cars that the less specific pools {_names(overlap.shadows)} also select join "
            "this pool"
        )
    if not reasons:
        reasons.append(OVERLAP_NONE)
        parts.append("no other pool's selector matches a car this pool's selector matches")
    return {
        "type": OVERLAP_CONDITION,
        "status": "True" if overlap.overlaps else "False",
        "reason": reasons[0],
        "message": "; ".join(parts),
        "observedGeneration": generation,
    }


def _ready(node: Mapping[str, Any]) -> bool:
    for cond in (node.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def pool_status(
    spec: FleetPoolSpec,
    generation: int,
    nodes: Mapping[str, Mapping[str, Any]],
    overlap: PoolOverlap | None = None,
) -> dict[str, Any]:
    """The status a pool should show, from its Nodes (by name) and the other pools.

    Args:
        spec: The pool.
        generation: ``metadata.generation`` the status answers.
        nodes: The pool's Nodes as dicts, by name.
        overlap: How its selector meets the other pools' (None: it meets none).

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
            },
            overlap_condition(overlap or PoolOverlap(), generation),
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


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    found: Mapping[str, Any] = next(
        (c for c in status.get("conditions") or () if c.get("type") == kind), {}
    )
    return found


def index_pool(body: kopf.Body, **_: Any) -> dict[str, FleetPoolSpec]:
    """Indexes a pool's spec by name; a pool being deleted is left out, as the gateways'
    node agents leave it out when they place cars."""
    if body["metadata"].get("deletionTimestamp"):
        return {}
    spec = FleetPoolSpec.from_k8s(body)
    return {spec.name: spec}


async def reconcile(
    state: OperatorState,
    body: kopf.Body,
    status: Mapping[str, Any],
    patch: kopf.Patch,
    pools: kopf.Index[str, FleetPoolSpec],
) -> None:
    """Recomputes a pool's status and removes Nodes of cells it no longer has.

    Args:
        state: The operator's state.
        body: The pool.
        status: Its status now.
        patch: Where the new status goes.
        pools: Every pool's spec (the Kopf index), for the ``SelectorOverlap`` condition.
    """
    spec = FleetPoolSpec.from_k8s(body)
    every = {name: s for name in pools for s in pools[name]}
    every[spec.name] = spec  # this very event's spec, whatever the index holds
    overlap = pool_overlaps(list(every.values()))[spec.name]
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
    new = pool_status(spec, int(body["metadata"].get("generation", 0)), nodes, overlap)
    new["conditions"] = merge_conditions(status.get("conditions"), new["conditions"])
    state.metrics.observe_pool(spec.name, new)
    new_ready = _condition(new, "Ready")
    if _condition(status, "Ready").get("status") != new_ready["status"]:
        kopf.event(
            body,
            type="Normal" if new_ready["status"] == "True" else "Warning",
            reason=new_ready["reason"],
            message=new_ready["message"],
        )
    new_overlap = _condition(new, OVERLAP_CONDITION)
    if _condition(status, OVERLAP_CONDITION).get("reason", OVERLAP_NONE) != new_overlap["reason"]:
        kopf.event(
            body,
            type="Warning" if new_overlap["reason"] == OVERLAP_AMBIGUOUS else "Normal",
            reason=new_overlap["reason"],
            message=new_overlap["message"],
        )
    if dict(status) != new:
        for key, value in new.items():
            patch.status[key] = value


async def on_change(
    body: kopf.Body,
    status: kopf.Status,
    patch: kopf.Patch,
    fleetpool_specs: kopf.Index[str, FleetPoolSpec],
    *,
    state: OperatorState,
    **_: Any,
) -> None:
    """A pool appeared or changed: answer at once rather than at the next tick."""
    await reconcile(state, body, status, patch, fleetpool_specs)


async def resync(
    body: kopf.Body,
    status: kopf.Status,
    patch: kopf.Patch,
    fleetpool_specs: kopf.Index[str, FleetPoolSpec],
    *,
    state: OperatorState,
    **_: Any,
) -> None:
    """The level-based loop: status follows the Nodes and the other pools' selectors
    whatever events were missed."""
    await reconcile(state, body, status, patch, fleetpool_specs)


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
    kopf.index(GROUP, VERSION, "fleetpools", id=POOLS_INDEX, registry=registry)(index_pool)
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

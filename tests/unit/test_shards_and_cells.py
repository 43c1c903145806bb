"""Cells → shards (rendezvous hashing), Node status round trip, pool status aggregation."""

from __future__ import annotations

from collections import Counter

from parkfleet.api import FleetPoolSpec
from parkfleet.contract import CarCounts, parse_cars_condition
from parkfleet.controller.fleetpool import pool_status
from parkfleet.nodeagent.nodes import node_object, node_status
from parkfleet.shards import shard_of


def test_shards_are_stable_and_spread() -> None:
    cells = [f"pool-{i}" for i in range(1000)]
    four = {c: shard_of(c, 4) for c in cells}
    assert four == {c: shard_of(c, 4) for c in cells}
    assert all(20 < n < 40 for n in (100 * v / len(cells) for v in Counter(four.values()).values()))
    five = {c: shard_of(c, 5) for c in cells}
    moved = sum(four[c] != five[c] for c in cells)
    # Consistent hashing: going from 4 to 5 shards moves about a fifth of the cells.
    assert 100 < moved < 300
    assert all(five[c] == 4 for c in cells if four[c] != five[c])


POOL = FleetPoolSpec.from_k8s(
    {
        "metadata": {"name": "eu"},
        "spec": {
            "cellSize": 10,
            "cells": 2,
            "nodeTemplate": {
                "labels": {"team": "ml"},
                "taints": [{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}],
            },
        },
    }
)


def test_node_object_has_pool_labels_and_both_taints() -> None:
    node = node_object(POOL, "eu-1", address="127.0.0.1", kubelet_port=10250)
    assert node["metadata"]["name"] == "pf-eu-1"
    labels = node["metadata"]["labels"]
    assert labels["parkfleet.io/pool"] == "eu"
    assert labels["type"] == "virtual-kubelet"
    assert labels["team"] == "ml"
    keys = [t["key"] for t in node["spec"]["taints"]]
    assert keys == ["parkfleet.io/fleet", "dedicated"]


def test_node_status_carries_gpus_and_car_counts() -> None:
    state = CarCounts(
        cars_connected=7, cars_eligible=5, cars_busy=2, gpus=5, max_gpu_memory_mib=8192
    )
    status = node_status(POOL, "eu-1", state, address="127.0.0.1", kubelet_port=1, shard=0)
    # Five GPUs and a ready slot beside each: a pod bound there beyond the cars waits at
    # the gateway for the next car that frees.
    assert status["allocatable"]["nvidia.com/gpu"] == "10"
    assert status["capacity"]["nvidia.com/gpu"] == "10"
    assert status["daemonEndpoints"]["kubeletEndpoint"]["Port"] == 1
    assert parse_cars_condition(status["conditions"]) == state


def test_pool_status_sums_cells_and_says_which_are_ready() -> None:
    state = CarCounts(cars_connected=3, cars_eligible=2, cars_busy=1, gpus=2)
    s0 = node_status(POOL, "eu-0", state, address="a", kubelet_port=1, shard=0)
    status = pool_status(POOL, 4, {"pf-eu-0": {"status": s0}})
    assert status["cellCount"] == 2
    assert (status["carsConnected"], status["carsEligible"], status["carsBusy"]) == (3, 2, 1)
    assert status["gpusAllocatable"] == 2
    ready = status["conditions"][0]
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == (
        "False",
        "CellsNotReady",
        4,
    )
    s1 = node_status(POOL, "eu-1", state, address="a", kubelet_port=1, shard=0)
    both = pool_status(POOL, 4, {"pf-eu-0": {"status": s0}, "pf-eu-1": {"status": s1}})
    assert both["conditions"][0]["status"] == "True"


def test_a_full_cell_sends_the_car_to_the_next_one_and_a_full_pool_leaves_it_waiting() -> None:
    from parkfleet.gateway.cells import UNPOOLED, pool_cell_of

    pool = FleetPoolSpec.from_k8s(
        {
            "metadata": {"name": "p"},
            "spec": {"cellSize": 2, "cells": 3, "selector": {"matchAttributes": {"pool": "p"}}},
        }
    )
    attrs = {"pool": "p", "cell": "1"}
    assert pool_cell_of("car", attrs, [pool]).cell == "p-1"
    counts = {"p-1": 2}
    assert pool_cell_of("car", attrs, [pool], lambda c: counts.get(c, 0)).cell == "p-2"
    counts = {"p-0": 2, "p-1": 2, "p-2": 2}
    full = pool_cell_of("car", attrs, [pool], lambda c: counts.get(c, 0))
    assert (full.pool, full.cell) == (UNPOOLED, UNPOOLED)
    assert pool_cell_of("car", {"pool": "other"}, [pool]).cell == UNPOOLED

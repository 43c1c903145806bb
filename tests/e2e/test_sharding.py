"""Two gateway shards: each owns the cells rendezvous hashing gives it, and a car that
reaches the wrong shard is redirected to the right one in answer to its Hello."""

from __future__ import annotations

import pytest

from parkfleet.devstack import DevStack, free_port
from parkfleet.shards import shard_of

from .conftest import Kubectl
from .kube import get_json, inference_pod, pod_phase, until

pytestmark = pytest.mark.e2e

POOL = """
apiVersion: parkfleet.io/v1alpha1
kind: FleetPool
metadata: {name: sharded}
spec:
  selector: {matchAttributes: {pool: sharded}}
  cellSize: 10
  cells: 4
  gateway: {shards: 2, graceSeconds: 30}
"""


def test_cells_are_served_by_their_shard_and_cars_are_redirected(
    stack: DevStack, kubectl: Kubectl
) -> None:
    cells = [f"sharded-{i}" for i in range(4)]
    owners = {c: shard_of(c, 2) for c in cells}
    assert set(owners.values()) == {0, 1}, "the test needs cells on both shards"
    second = f"127.0.0.1:{free_port()}"
    addresses = f"--shard-addresses={stack.gateway_address},{second}"
    stack.start_gateway(addresses)  # shard 0 learns where shard 1 is
    shard1 = stack.start_shard(1, second, addresses)
    try:
        kubectl("apply", "-f", "-", stdin=POOL)
        # Every car dials shard 0; those of shard 1's cells are sent on.
        fleet = stack.start_fleet(20, 4, "sharded", prefix="shard-", name="sharded")

        def served() -> dict[str, str] | None:
            nodes = get_json(kubectl, "nodes", "-l", "parkfleet.io/pool=sharded")["items"]
            by_cell = {}
            for n in nodes:
                ready = next(
                    (c for c in n["status"].get("conditions", []) if c["type"] == "Ready"), {}
                )
                gpus = n["status"].get("allocatable", {}).get("nvidia.com/gpu")
                if ready.get("status") == "True" and gpus == "10":  # 5 GPUs, 5 ready slots
                    by_cell[n["metadata"]["labels"]["parkfleet.io/cell"]] = ready["message"]
            return by_cell if len(by_cell) == 4 else None

        messages = until(served, 90, "4 Ready Nodes with 5 GPUs (and 5 ready slots) each")
        # Shard 1 counts only cars connected to it, and every car dialled shard 0: the
        # GPUs of shard 1's cells are cars that were redirected.
        for cell, message in messages.items():
            assert message == f"gateway shard {owners[cell]} serves this cell"
        st = until(
            lambda: (
                (s := get_json(kubectl, "fp", "sharded").get("status", {})).get("carsConnected")
                == 20
                and s
            ),
            30,
            "the pool to count all 20 cars",
        )
        assert [c["shard"] for c in st["cells"]] == [owners[c] for c in cells]

        # A pod on a cell of shard 1 runs there, and its logs come from shard 1.
        cell1 = next(c for c in cells if owners[c] == 1)
        pod = inference_pod("on-shard-1", "sharded", "0-8", 4).replace(
            "nodeSelector: {parkfleet.io/pool: sharded}",
            f"nodeSelector: {{parkfleet.io/cell: {cell1}}}",
        )
        kubectl("apply", "-f", "-", stdin=pod)
        until(lambda: pod_phase(kubectl, "on-shard-1") == "Succeeded", 60, "the pod to succeed")
        assert "item 0: label=" in kubectl("logs", "on-shard-1").stdout
        kubectl("delete", "pod", "on-shard-1")
        fleet.stop()
    finally:
        shard1.stop()
        kubectl("delete", "fp", "sharded", "--wait=false", check=False)

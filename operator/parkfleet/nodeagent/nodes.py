"""A cell's virtual Node: its object, its status, and when that status is written.

Kubernetes sees one Node per cell (decision 1). Its allocatable ``nvidia.com/gpu`` is
the GPUs of the cell's eligible cars and the ready slots beside them
(:func:`parkfleet.contract.ready_slots`: pods bound there beyond the cars wait at the
gateway, Pending, and start the moment a car is free); ``Ready`` says the gateway is
alive, whatever the cars do; the ``parkfleet.io/Cars`` condition carries the true car
counts that the operator aggregates into the FleetPool's status (no extra writes: it
rides on status updates).
"""

from __future__ import annotations

import datetime
from typing import Any

from parkfleet import __version__
from parkfleet.api import FLEET_TAINT_KEY, LABEL_CELL, LABEL_POOL, FleetPoolSpec
from parkfleet.contract import (
    CARS_CONDITION,
    CarCounts,
    cars_condition_message,
    node_name,
    ready_slots,
)

__all__ = ["node_object", "node_status"]

# What one car contributes besides its GPUs: nominal, so that pods with ordinary
# cpu/memory requests schedule; a car runs one task at a time.
CPU_PER_CAR = 8
MEMORY_GIB_PER_CAR = 16


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_object(
    pool: FleetPoolSpec, cell: str, *, address: str, kubelet_port: int
) -> dict[str, Any]:
    """The Node that stands for ``cell`` (created once; status comes separately)."""
    labels = {
        **pool.labels,
        LABEL_POOL: pool.name,
        LABEL_CELL: cell,
        "type": "virtual-kubelet",
        "kubernetes.io/role": "agent",
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": node_name(cell),
        "node.kubernetes.io/instance-type": "parkfleet-cell",
    }
    taints = [{"key": FLEET_TAINT_KEY, "value": "true", "effect": "NoSchedule"}]
    taints += [t.to_k8s() for t in pool.taints]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node_name(cell),
            "labels": labels,
            "annotations": {"parkfleet.io/gateway-address": f"{address}:{kubelet_port}"},
        },
        "spec": {"taints": taints},
    }


def node_status(
    pool: FleetPoolSpec,
    cell: str,
    state: CarCounts,
    *,
    address: str,
    kubelet_port: int,
    shard: int,
) -> dict[str, Any]:
    """The Node's ``status`` for the cell's current state."""
    now = _now()
    gpus = max(state.gpus, 0)
    # The eligible cars and the ready slots beside them (the true counts are in the
    # parkfleet.io/Cars condition).
    eligible = state.cars_eligible + ready_slots(state.cars_eligible)
    slots = gpus + ready_slots(gpus)
    pods = pool.cell_size + ready_slots(pool.cell_size)
    capacity = {
        "cpu": str(CPU_PER_CAR * pool.cell_size),
        "memory": f"{MEMORY_GIB_PER_CAR * pool.cell_size}Gi",
        "pods": str(pods),
        "nvidia.com/gpu": str(slots),
    }
    allocatable = {
        "cpu": str(CPU_PER_CAR * eligible),
        "memory": f"{MEMORY_GIB_PER_CAR * eligible}Gi",
        "pods": str(pods),
        "nvidia.com/gpu": str(slots),
    }
    cars_message = cars_condition_message(state)
    conditions = [
        {
            "type": "Ready",
            "status": "True",
            "reason": "GatewayReady",
            "message": f"gateway shard {shard} serves this cell",
            "lastHeartbeatTime": now,
        },
        {
            "type": CARS_CONDITION,
            "status": "True" if eligible else "False",
            "reason": "CarsEligible" if eligible else "NoEligibleCars",
            "message": cars_message,
            "lastHeartbeatTime": now,
        },
        *(
            {
                "type": kind,
                "status": "False",
                "reason": "VirtualNode",
                "message": "a cell has no such pressure",
                "lastHeartbeatTime": now,
            }
            for kind in ("MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable")
        ),
    ]
    return {
        "capacity": capacity,
        "allocatable": allocatable,
        "conditions": conditions,
        "addresses": [
            {"type": "InternalIP", "address": address},
            {"type": "Hostname", "address": node_name(cell)},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "nodeInfo": {
            "architecture": "amd64",
            "operatingSystem": "linux",
            "osImage": "parkfleet cell",
            "kernelVersion": "",
            "kubeletVersion": f"parkfleet-{__version__}",
            "kubeProxyVersion": "",
            "containerRuntimeVersion": "parkfleet://" + ",".join(pool.runtimes),
            "machineID": cell,
            "systemUUID": cell,
            "bootID": "",
        },
    }

"""When the node agent writes a cell Node's status: on change, rate-limited, heartbeat opt-in."""

from __future__ import annotations

import time
from typing import Any, cast

from kubernetes_asyncio import client
from prometheus_client import CollectorRegistry

from parkfleet.api import FleetPoolSpec
from parkfleet.contract import CarCounts
from parkfleet.nodeagent.agent import NodeAgent, NodeAgentConfig, _CellNode
from parkfleet.taskport import TaskPort

POOL = FleetPoolSpec.from_k8s({"metadata": {"name": "eu"}, "spec": {"cellSize": 10, "cells": 1}})


class FakeGateway:
    """What the node agent reads of a gateway to build a cell's status."""

    def __init__(self) -> None:
        self.eligible = 3

    def capacity(self, cell: str) -> CarCounts:
        assert cell == "eu-0"
        return CarCounts(
            cars_connected=5,
            cars_eligible=self.eligible,
            gpus=self.eligible,
            max_gpu_memory_mib=8192,
        )

    def events(self) -> object:
        return None  # the pod driver's task event stream; unused here


class FakeCore:
    """Records status patches instead of sending them."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, dict[str, Any]]] = []

    async def patch_node_status(self, name: str, body: dict[str, Any]) -> None:
        self.patches.append((name, body))


def _agent(**config: Any) -> tuple[NodeAgent, FakeGateway, FakeCore, _CellNode]:
    gateway = FakeGateway()
    agent = NodeAgent(
        client.ApiClient(),
        cast(TaskPort, gateway),
        NodeAgentConfig(**config),
        registry=CollectorRegistry(),
    )
    core = FakeCore()
    agent.core = cast(client.CoreV1Api, core)
    return agent, gateway, core, _CellNode(pool=POOL, node="pf-eu-0")


async def test_an_unchanged_status_is_not_rewritten_by_default() -> None:
    agent, gateway, core, cell = _agent(status_min_interval_s=0.0)
    await agent._write_status("eu-0", cell, force=True)
    assert len(core.patches) == 1
    # Long after the last write: still nothing to say, nothing written.
    cell.written_at = time.monotonic() - 3600
    await agent._write_status("eu-0", cell)
    assert len(core.patches) == 1
    gateway.eligible = 2
    await agent._write_status("eu-0", cell)
    assert len(core.patches) == 2
    status = core.patches[-1][1]["status"]
    assert status["allocatable"]["nvidia.com/gpu"] == "4"  # 2 GPUs and their 2 ready slots
    await agent.api.close()


async def test_a_change_waits_for_the_minimum_interval() -> None:
    agent, gateway, core, cell = _agent(status_min_interval_s=3600.0)
    await agent._write_status("eu-0", cell, force=True)
    gateway.eligible = 1
    await agent._write_status("eu-0", cell)
    assert len(core.patches) == 1
    cell.written_at = time.monotonic() - 3601
    await agent._write_status("eu-0", cell)
    assert len(core.patches) == 2
    await agent.api.close()


async def test_the_heartbeat_rewrites_an_unchanged_status_when_asked() -> None:
    agent, _, core, cell = _agent(status_heartbeat_s=300.0)
    await agent._write_status("eu-0", cell, force=True)
    await agent._write_status("eu-0", cell)
    assert len(core.patches) == 1
    cell.written_at = time.monotonic() - 301
    await agent._write_status("eu-0", cell)
    assert len(core.patches) == 2
    await agent.api.close()

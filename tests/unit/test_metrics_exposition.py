"""Every metrics class, exercised the way the code uses it, passes `promtool check metrics`.

Also: label sets stay bounded (no car, pod or task ids), names follow the Prometheus
conventions, and the operator's InferenceJob gauges say what the job's status says.
"""

from __future__ import annotations

import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from parkfleet.controller.metrics import OperatorMetrics
from parkfleet.gateway.metrics import CellGauges, GatewayMetrics
from parkfleet.kubemetrics import KubeApiMetrics
from parkfleet.nodeagent.metrics import NodeAgentMetrics
from parkfleet.vehicle.metrics import AgentMetrics

from .promtool import promtool

FORBIDDEN_LABELS = {"car", "car_id", "pod", "pod_name", "task", "task_id", "uid", "node"}


def check_metrics(registry: CollectorRegistry) -> str:
    text = generate_latest(registry)
    proc = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert not proc.stdout.strip(), proc.stdout.decode()  # no lint warnings either
    return text.decode()


def gateway_registry() -> CollectorRegistry:
    gw = GatewayMetrics()
    cell = CellGauges(gw, "eu", "eu-0")
    cell.connected.set(3)
    cell.eligible.set(2)
    cell.busy.set(1)
    gw.message("telemetry")
    gw.telemetry_seconds.observe(0.0002)
    gw.telemetry_age.observe(0.02)
    gw.streams_closed.labels("LinkClosed").inc()
    started = gw.task_started("eu")
    gw.task_ended("eu", "Succeeded", started)
    gw.task_ended("eu", "Cancelled", 0.0)
    gw.task_moves.labels("eu").inc()
    gw.placements.labels("eu", "stays").inc()
    gw.departure_claims_broken.labels("eu").inc()
    gw.result_items.labels("eu").inc(250)
    gw.energy_used("eu", 0.5)
    gw.tasks_queued.set(4)
    gw.model_bytes.inc(1024)
    gw.model_fetches.labels("s3", "Fetched").inc()
    gw.model_fetched_bytes.labels("s3").inc(2048)
    gw.pool_refusals.inc(2)
    gw.cars_by_reputation.labels("eu", "quarantined").set(1)
    gw.car_strikes.labels("eu").inc(2)
    gw.car_agreements.labels("eu").inc(5)
    gw.consent_changes.labels("eu", "paused").inc()
    gw.cars_paused.labels("eu").set(1)
    na = NodeAgentMetrics(gw.registry)
    na.status_writes.labels("eu").inc()
    na.lease_renewals.labels("ok").inc()
    na.pod_start.labels("eu").observe(1.2)
    na.pod_ended("eu", "ml", "Succeeded", "Completed", 0.25)
    na.kube_api.observe("patch", "leases", "200", 0.01)
    return gw.registry


def job_status() -> dict[str, object]:
    return {
        "units": {"total": 12, "running": 3, "succeeded": 5, "failed": 1},
        "items": {"total": 3000, "running": 750, "succeeded": 1250, "failed": 250},
        "itemsPerSecond": 41.5,
        "carsUsed": 4,
        "carsMoved": 2,
        "energyWh": 0.5,
        "disagreements": 1,
        "startTime": "2025-01-02T03:04:05Z",
        "conditions": [
            {"type": "Progressing", "status": "True"},
            {"type": "Complete", "status": "False"},
            {"type": "Failed", "status": "False"},
        ],
    }


def operator_metrics() -> OperatorMetrics:
    op = OperatorMetrics()
    op.observe_pool(
        "eu",
        {
            "cells": [
                {
                    "name": "eu-0",
                    "carsConnected": 3,
                    "carsEligible": 2,
                    "carsBusy": 1,
                    "gpusAllocatable": 2,
                }
            ],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    )
    op.observe_job("ml", "embed", "eu", job_status())
    op.kube_api.observe("list", "pods", "200", 0.02)
    return op


def test_gateway_and_node_agent_metrics_pass_promtool() -> None:
    text = check_metrics(gateway_registry())
    assert 'parkfleet_gateway_energy_joules_total{pool="eu"} 1800.0' in text
    assert 'parkfleet_pods_energy_joules_total{namespace="ml",pool="eu"} 900.0' in text
    assert 'parkfleet_gateway_task_duration_seconds_count{outcome="Succeeded",pool="eu"} 1.0' in (
        text
    )
    # A task cancelled before any car took it has no duration.
    assert 'task_duration_seconds_count{outcome="Cancelled"' not in text
    assert 'parkfleet_gateway_tasks_started_total{pool="eu"} 1.0' in text


def test_operator_metrics_pass_promtool_and_follow_the_job_status() -> None:
    op = operator_metrics()
    text = check_metrics(op.registry)
    sample = op.registry.get_sample_value
    job = {"namespace": "ml", "inferencejob": "embed", "pool": "eu"}
    assert sample("parkfleet_inferencejob_units", {**job, "state": "pending"}) == 3
    assert sample("parkfleet_inferencejob_items", {**job, "state": "succeeded"}) == 1250
    assert sample("parkfleet_inferencejob_items_per_second", job) == 41.5
    assert sample("parkfleet_inferencejob_energy_joules", job) == 1800
    assert sample("parkfleet_inferencejob_start_time_seconds", job) == 1735787045
    assert sample("parkfleet_inferencejob_condition", {**job, "condition": "Progressing"}) == 1
    assert sample("parkfleet_inferencejob_condition", {**job, "condition": "Failed"}) == 0
    assert "parkfleet_kube_api_requests_total" in text
    op.forget_job("ml", "embed")
    assert "inferencejob=" not in generate_latest(op.registry).decode()
    op.forget_pool("eu")
    assert 'pool="eu"' not in generate_latest(op.registry).decode()


def test_agent_metrics_pass_promtool() -> None:
    agent = AgentMetrics()
    agent.connects.inc()
    agent.disconnects.labels("UNAVAILABLE").inc()
    agent.offers.labels("Accepted").inc()
    agent.tasks.labels("Done").inc()
    agent.items.inc(10)
    agent.energy.labels("modelled").inc(3.6)
    agent.model_fetches.labels("hit").inc()
    check_metrics(agent.registry)


def test_kube_api_metrics_are_registered_once_per_registry() -> None:
    registry = CollectorRegistry()
    assert KubeApiMetrics.of(registry) is KubeApiMetrics.of(registry)
    # The node agent's metrics and an explicit lookup share one set on the gateway's registry.
    assert NodeAgentMetrics(registry).kube_api is KubeApiMetrics.of(registry)


@pytest.mark.parametrize("build", [gateway_registry, lambda: operator_metrics().registry])
def test_labels_are_bounded_and_names_carry_units(build: object) -> None:
    registry = build()  # type: ignore[operator]
    for family in registry.collect():
        assert family.name.startswith("parkfleet_"), family.name
        for s in family.samples:
            assert not FORBIDDEN_LABELS & s.labels.keys(), (family.name, s.labels)
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        if "energy" in family.name:
            assert "joules" in family.name, family.name

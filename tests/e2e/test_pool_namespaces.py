"""Pools by namespace end to end: a FleetPool's ``spec.namespaceSelector`` holds every pod
bound to its cells, and every InferenceJob naming it, to the namespaces it selects.

A pod created with ``spec.nodeName`` set to a cell Node skips the scheduler and the fleet
taint; the node agent still refuses it when its namespace is not one the pool allows
(``Failed``, ``NamespaceNotAllowed``, exit code 2) and no car is offered anything. The
operator's webhook refuses such an InferenceJob naming ``spec.pool`` and the namespace. On
the session's stack, with a pool, a car and namespaces of each test's own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from parkfleet.devstack import DevStack, free_port

from .conftest import Kubectl
from .kube import get_json, inference_pod, scrape, until
from .test_inferencejob import job
from .test_inferencejob import jobs as jobs  # a fixture: the InferenceJob CRD

pytestmark = pytest.mark.e2e

TENANT_LABEL = "e2e.parkfleet.io/tenant"


@dataclass(frozen=True)
class Tenancy:
    """A pool that allows one namespace (by label) and not the other, with one car."""

    pool: str
    node: str
    allowed: str
    denied: str
    car_metrics: int

    def offers(self) -> dict[str, float]:
        """The car's offers by outcome (its own /metrics)."""
        got = scrape(f"http://127.0.0.1:{self.car_metrics}/metrics", "parkfleet_agent_offers_total")
        return {labels["decision"]: v for labels, v in got}


def namespace(name: str, labels: dict[str, str]) -> str:
    return yaml.safe_dump(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    )


def tenant_pool(name: str, tenant: str) -> str:
    return f"""
apiVersion: parkfleet.io/v1alpha1
kind: FleetPool
metadata: {{name: {name}}}
spec:
  selector: {{matchAttributes: {{pool: {name}}}}}
  namespaceSelector:
    matchLabels: {{{TENANT_LABEL}: "{tenant}"}}
  cellSize: 4
  cells: 1
  gateway: {{graceSeconds: 30}}
"""


def bound_pod(name: str, ns: str, node: str) -> str:
    """A pod of ``ns`` created already bound to ``node`` (``spec.nodeName``): no scheduler,
    no nodeSelector, no toleration of the fleet taint."""
    doc = yaml.safe_load(inference_pod(name, "unused", "0-4", 4))
    doc["metadata"]["namespace"] = ns
    del doc["spec"]["nodeSelector"], doc["spec"]["tolerations"]
    doc["spec"]["nodeName"] = node
    return yaml.safe_dump(doc)


@pytest.fixture
def tenancy(stack: DevStack, kubectl: Kubectl) -> Iterator[Tenancy]:
    tag = "t" + uuid.uuid4().hex[:6]  # a letter first: "12e345" would read as a number
    t = Tenancy(
        pool=f"tenant-{tag}",
        node=f"pf-tenant-{tag}-0",
        allowed=f"tenant-{tag}-a",
        denied=f"tenant-{tag}-b",
        car_metrics=free_port(),
    )
    kubectl("apply", "-f", "-", stdin=namespace(t.allowed, {TENANT_LABEL: tag}))
    kubectl("apply", "-f", "-", stdin=namespace(t.denied, {TENANT_LABEL: "someone-else"}))
    kubectl("apply", "-f", "-", stdin=tenant_pool(t.pool, tag))
    stack.prepare(namespaces=(t.allowed, t.denied))  # the digits inputs in both areas
    car = stack.start_fleet(
        1, 1, t.pool, prefix=f"{t.pool}-", name=t.pool, extra=[f"--metrics-port={t.car_metrics}"]
    )
    try:
        until(
            lambda: get_json(kubectl, "fp", t.pool).get("status", {}).get("carsEligible") == 1,
            60,
            "the pool's car to be eligible",
        )
        metrics = f"http://127.0.0.1:{t.car_metrics}/metrics"
        # Its own /metrics answers: an empty offers count below means none, not no answer.
        until(lambda: scrape(metrics, "parkfleet_agent_connects_total"), 60, "the car's metrics")
        yield t
    finally:
        car.stop()
        stack.procs.pop(t.pool, None)
        kubectl("delete", "ns", t.allowed, t.denied, "--wait=false", check=False)
        kubectl("delete", "fp", t.pool, "--ignore-not-found", "--timeout=60s", check=False)


def status_of(k: Kubectl, ns: str, name: str) -> dict[str, Any]:
    return dict(get_json(k, "pod", name, "-n", ns).get("status", {}))


def phase(k: Kubectl, ns: str, name: str) -> str:
    return str(status_of(k, ns, name).get("phase", ""))


def test_a_pod_bound_by_node_name_from_a_namespace_the_pool_does_not_allow_is_refused(
    tenancy: Tenancy, kubectl: Kubectl
) -> None:
    t = tenancy
    kubectl("apply", "-f", "-", stdin=bound_pod("intruder", t.denied, t.node))
    until(lambda: phase(kubectl, t.denied, "intruder") == "Failed", 60, "the pod to be refused")
    status = status_of(kubectl, t.denied, "intruder")
    assert status["reason"] == "NamespaceNotAllowed", status
    message = str(status["message"])
    assert f'FleetPool "{t.pool}" does not allow namespace "{t.denied}"' in message
    assert f"{TENANT_LABEL}=" in message  # the selector it failed
    (container,) = status["containerStatuses"]
    assert container["state"]["terminated"]["exitCode"] == 2  # the job's fault: no retry
    events = get_json(kubectl, "events", "-n", t.denied)["items"]
    reasons = [e["reason"] for e in events if e["involvedObject"]["name"] == "intruder"]
    assert "NamespaceNotAllowed" in reasons, reasons
    assert "Started" not in reasons
    assert t.offers() == {}  # no task: the car was never offered it

    # The control: the same pod, from the namespace the pool allows, runs on that car.
    kubectl("apply", "-f", "-", stdin=bound_pod("tenant", t.allowed, t.node))
    until(lambda: phase(kubectl, t.allowed, "tenant") == "Succeeded", 60, "the pod to succeed")
    assert t.offers() == {"Accepted": 1.0}

    # Relabelled into the tenancy: the namespace's pods admitted from now on run.
    tag = t.pool.removeprefix("tenant-")
    kubectl("label", "ns", t.denied, f"{TENANT_LABEL}={tag}", "--overwrite")
    kubectl("apply", "-f", "-", stdin=bound_pod("welcome", t.denied, t.node))
    until(lambda: phase(kubectl, t.denied, "welcome") == "Succeeded", 60, "the pod to succeed")
    assert t.offers() == {"Accepted": 2.0}
    assert phase(kubectl, t.denied, "intruder") == "Failed"  # judged once, stays so


def test_a_pod_scheduled_onto_the_pool_from_another_namespace_is_refused(
    tenancy: Tenancy, kubectl: Kubectl
) -> None:
    # With the pool's nodeSelector and toleration, as a user of another team would write it.
    doc = yaml.safe_load(inference_pod("scheduled", tenancy.pool, "0-4", 4))
    doc["metadata"]["namespace"] = tenancy.denied
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc))
    until(
        lambda: phase(kubectl, tenancy.denied, "scheduled") == "Failed",
        60,
        "the scheduled pod to be refused",
    )
    assert status_of(kubectl, tenancy.denied, "scheduled")["reason"] == "NamespaceNotAllowed"
    assert tenancy.offers() == {}


def test_webhook_refuses_a_job_from_a_namespace_the_pool_does_not_allow(
    jobs: DevStack, tenancy: Tenancy, kubectl: Kubectl
) -> None:
    t = tenancy
    doc = job("outsider", pool=t.pool)
    proc = kubectl("apply", "-n", t.denied, "-f", "-", stdin=doc, check=False)
    assert proc.returncode != 0
    assert (
        f'spec.pool: Forbidden: FleetPool "{t.pool}" does not allow namespace "{t.denied}"'
        in proc.stderr
    ), proc.stderr
    assert not get_json(kubectl, "ij", "-n", t.denied)["items"]
    # The namespace the pool allows may name it (checked by the API server, nothing stored).
    ok = kubectl("apply", "-n", t.allowed, "--dry-run=server", "-f", "-", stdin=doc, check=False)
    assert ok.returncode == 0, ok.stderr
    assert t.offers() == {}


def test_a_job_whose_namespace_leaves_the_pool_fails_with_its_pods_reason(
    jobs: DevStack, kubectl: Kubectl
) -> None:
    # The webhook let the job in; its namespace is relabelled out of the pool before any of
    # its pods is bound (no car yet). The node agent refuses them: the job fails, no retry.
    tag = "t" + uuid.uuid4().hex[:6]  # a letter first: "12e345" would read as a number
    pool, ns, car_metrics = f"late-{tag}", f"late-{tag}-ns", free_port()
    kubectl("apply", "-f", "-", stdin=namespace(ns, {TENANT_LABEL: tag}))
    kubectl("apply", "-f", "-", stdin=tenant_pool(pool, tag))
    car = None
    try:
        kubectl("apply", "-n", ns, "-f", "-", stdin=job("moved-out", pool=pool, parallelism=2))
        until(
            lambda: kubectl("get", "job", "moved-out", "-n", ns, check=False).returncode == 0,
            60,
            "the Indexed Job",
        )
        kubectl("label", "ns", ns, f"{TENANT_LABEL}=elsewhere", "--overwrite")
        car = jobs.start_fleet(
            1, 1, pool, prefix=f"{pool}-", name=pool, extra=[f"--metrics-port={car_metrics}"]
        )

        def failed() -> dict[str, Any] | None:
            st = get_json(kubectl, "ij", "moved-out", "-n", ns).get("status", {})
            conds = {c["type"]: c for c in st.get("conditions", [])}
            return conds["Failed"] if conds.get("Failed", {}).get("status") == "True" else None

        cond = until(failed, 120, "the job to fail")
        assert "NamespaceNotAllowed" in cond["message"], cond
        assert f'does not allow namespace "{ns}"' in cond["message"], cond
        metrics = f"http://127.0.0.1:{car_metrics}/metrics"
        until(lambda: scrape(metrics, "parkfleet_agent_connects_total"), 60, "the car's metrics")
        offers = scrape(metrics, "parkfleet_agent_offers_total")
        assert not offers, offers  # no unit ever reached the car
    finally:
        if car is not None:
            car.stop()
            jobs.procs.pop(pool, None)
        kubectl("delete", "ij", "moved-out", "-n", ns, "--ignore-not-found", check=False)
        kubectl("delete", "ns", ns, "--wait=false", check=False)
        kubectl("delete", "fp", pool, "--ignore-not-found", "--timeout=60s", check=False)

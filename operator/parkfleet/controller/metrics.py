"""The operator's Prometheus metrics: its pools (``parkfleet_pool_*``), its InferenceJobs
(``parkfleet_inferencejob_*``) and its Kubernetes API requests.

Gauges are set from the status each reconcile computes, so they say what the status
says. Labels are bounded by Kubernetes objects the admin and users create (pool, cell,
namespace, inferencejob), never by cars or pods.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics

from parkfleet.kubemetrics import KubeApiMetrics

__all__ = ["JOB_CONDITIONS", "OperatorMetrics"]

# Prometheus' text format stores each ``*_created`` sample as a series of its own: one
# more series per counter and histogram child, for nothing the dashboards use.
disable_created_metrics()  # type: ignore[no-untyped-call]

_JOULES_PER_WH = 3600.0
JOB_CONDITIONS = ("Progressing", "Complete", "Failed", "Suspended")
_JOB_LABELS = ["namespace", "inferencejob", "pool"]


class OperatorMetrics:
    """Gauges per pool and cell and per InferenceJob, set from each reconcile.

    Args:
        registry: Where they are registered (a fresh registry when None).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.cars = Gauge(
            "parkfleet_pool_cars",
            "Cars of a pool's cell by state (connected, eligible, busy).",
            ["pool", "cell", "state"],
            registry=r,
        )
        self.gpus = Gauge(
            "parkfleet_pool_gpus_allocatable",
            "GPUs a pool's cell offers now (nvidia.com/gpu allocatable of its Node).",
            ["pool", "cell"],
            registry=r,
        )
        self.ready = Gauge(
            "parkfleet_pool_ready",
            "1 when every cell of the pool has a Ready Node.",
            ["pool"],
            registry=r,
        )
        self.job_units = Gauge(
            "parkfleet_inferencejob_units",
            "Work units of an InferenceJob by state (pending, running, succeeded, failed).",
            [*_JOB_LABELS, "state"],
            registry=r,
        )
        self.job_items = Gauge(
            "parkfleet_inferencejob_items",
            "Items of an InferenceJob by state (pending, running, succeeded, failed).",
            [*_JOB_LABELS, "state"],
            registry=r,
        )
        self.job_rate = Gauge(
            "parkfleet_inferencejob_items_per_second",
            "Items done per second since the job started (status.itemsPerSecond).",
            _JOB_LABELS,
            registry=r,
        )
        self.job_disagreements = Gauge(
            "parkfleet_inferencejob_disagreements",
            "Units whose redundant copies disagreed beyond the tolerance.",
            _JOB_LABELS,
            registry=r,
        )
        self.job_moves = Gauge(
            "parkfleet_inferencejob_car_moves",
            "Times the job's tasks moved to another car (status.carsMoved).",
            _JOB_LABELS,
            registry=r,
        )
        self.job_cars = Gauge(
            "parkfleet_inferencejob_cars_used",
            "Distinct cars that ran the job's tasks (status.carsUsed).",
            _JOB_LABELS,
            registry=r,
        )
        self.job_energy = Gauge(
            "parkfleet_inferencejob_energy_joules",
            "Energy the job's ended units used (status.energyWh, in joules).",
            _JOB_LABELS,
            registry=r,
        )
        self.job_start = Gauge(
            "parkfleet_inferencejob_start_time_seconds",
            "Unix time the job's Indexed Job started (status.startTime).",
            _JOB_LABELS,
            registry=r,
        )
        self.job_condition = Gauge(
            "parkfleet_inferencejob_condition",
            "1 when the job's condition (Progressing, Complete, Failed, Suspended) is True, "
            "else 0.",
            [*_JOB_LABELS, "condition"],
            registry=r,
        )
        self.admission_denials = Counter(
            "parkfleet_admission_denials_total",
            "Requests the operator's admission webhook refused, by reason (e.g. UnknownPool).",
            ["reason"],
            registry=r,
        )
        self.kube_api = KubeApiMetrics.of(r)

    def observe_pool(self, pool: str, status: Mapping[str, Any]) -> None:
        """Sets the gauges from a pool's computed status."""
        for cell in status.get("cells", ()):
            name = cell["name"]
            self.cars.labels(pool, name, "connected").set(cell["carsConnected"])
            self.cars.labels(pool, name, "eligible").set(cell["carsEligible"])
            self.cars.labels(pool, name, "busy").set(cell["carsBusy"])
            self.gpus.labels(pool, name).set(cell["gpusAllocatable"])
        ready = next((c for c in status.get("conditions", ()) if c["type"] == "Ready"), None)
        self.ready.labels(pool).set(1 if ready and ready["status"] == "True" else 0)

    def forget_pool(self, pool: str) -> None:
        """Drops a deleted pool's series."""
        for metric in (self.cars, self.gpus, self.ready):
            _remove_matching(metric, 0, pool)

    def observe_job(self, namespace: str, name: str, pool: str, status: Mapping[str, Any]) -> None:
        """Sets an InferenceJob's gauges from the status the operator computed for it.

        Args:
            namespace: The job's namespace.
            name: The job's name.
            pool: Its FleetPool.
            status: The ``status`` object (see ``controller.inferencejob.job_status``).
        """
        labels = (namespace, name, pool)
        for metric, key in ((self.job_units, "units"), (self.job_items, "items")):
            counts: Mapping[str, Any] = status.get(key) or {}
            total = int(counts.get("total", 0))
            states = {s: int(counts.get(s, 0)) for s in ("running", "succeeded", "failed")}
            states["pending"] = max(total - sum(states.values()), 0)
            for state, value in states.items():
                metric.labels(*labels, state).set(value)
        self.job_rate.labels(*labels).set(float(status.get("itemsPerSecond", 0.0)))
        self.job_disagreements.labels(*labels).set(int(status.get("disagreements", 0)))
        self.job_moves.labels(*labels).set(int(status.get("carsMoved", 0)))
        self.job_cars.labels(*labels).set(int(status.get("carsUsed", 0)))
        self.job_energy.labels(*labels).set(float(status.get("energyWh", 0.0)) * _JOULES_PER_WH)
        start = _unix_time(status.get("startTime"))
        if start is not None:
            self.job_start.labels(*labels).set(start)
        true = {c.get("type") for c in status.get("conditions") or () if c.get("status") == "True"}
        for condition in JOB_CONDITIONS:
            self.job_condition.labels(*labels, condition).set(1 if condition in true else 0)

    def forget_job(self, namespace: str, name: str) -> None:
        """Drops a deleted InferenceJob's series."""
        for metric in (
            self.job_units,
            self.job_items,
            self.job_rate,
            self.job_disagreements,
            self.job_moves,
            self.job_cars,
            self.job_energy,
            self.job_start,
            self.job_condition,
        ):
            for labels in list(metric._metrics):
                if labels[0] == namespace and labels[1] == name:
                    metric.remove(*labels)


def _unix_time(stamp: object) -> float | None:
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def _remove_matching(metric: Gauge, index: int, value: str) -> None:
    # prometheus_client has no "remove by partial labels"; its children dict is keyed
    # by the label values tuple.
    for labels in list(metric._metrics):
        if labels[index] == value:
            metric.remove(*labels)

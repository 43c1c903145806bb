"""The operator's Prometheus metrics (``parkfleet_pool_*``): what its pools look like."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

__all__ = ["METRICS", "OperatorMetrics"]


class OperatorMetrics:
    """Gauges per pool and cell, set from each reconcile.

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
            for labels in list(metric._metrics):
                if labels[0] == pool:
                    metric.remove(*labels)


METRICS = OperatorMetrics()

"""The node agent's metrics: what it writes to the API server and how fast pods start.

Labels are bounded: pool, namespace, phase, reason, result - never a pod or car name.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram

from parkfleet.kubemetrics import KubeApiMetrics

__all__ = ["NodeAgentMetrics"]

_JOULES_PER_WH = 3600.0


class NodeAgentMetrics:
    """Counters and histograms of one gateway shard's node agent.

    Args:
        registry: Where to register (the gateway's, so one ``/metrics`` shows both).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.status_writes = Counter(
            "parkfleet_node_status_writes_total",
            "Node status writes (on change, or --node-status-heartbeat-s, off by default).",
            ["pool"],
            registry=r,
        )
        self.lease_renewals = Counter(
            "parkfleet_node_lease_renewals_total",
            "Node Lease renewals by result (ok, error).",
            ["result"],
            registry=r,
        )
        self.node_reregistrations = Counter(
            "parkfleet_node_reregistrations_total",
            "Nodes registered again after they were deleted (kubectl delete node).",
            ["pool"],
            registry=r,
        )
        self.pod_start = Histogram(
            "parkfleet_pod_start_seconds",
            "From a pod's creation to its Running status being written.",
            ["pool"],
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.pods_ended = Counter(
            "parkfleet_pods_ended_total",
            "Pods the node agent ended, by phase and reason.",
            ["pool", "phase", "reason"],
            registry=r,
        )
        # Counted once per pod when it ends (all its redundant copies together), so a
        # namespace's energy is never counted twice; the gateway's per-pool counter
        # is the same energy seen per task.
        self.pod_energy = Counter(
            "parkfleet_pods_energy_joules_total",
            "Energy cars used for pods that ended, by pool and the pod's namespace.",
            ["pool", "namespace"],
            registry=r,
        )
        self.results_redone = Counter(
            "parkfleet_results_redone_total",
            "Unchecked units run again because a car that delivered them was quarantined, "
            "by outcome (confirmed, replaced: the result file now holds the new run's, "
            "failed: it stays as it was).",
            ["pool", "outcome"],
            registry=r,
        )
        self.input_bytes = Counter(
            "parkfleet_input_bytes_read_total",
            "Bytes of tasks' inputs read by range (.npy and .jsonl files and objects, "
            "tokenizers), by source (volume, s3).",
            ["source"],
            registry=r,
        )
        self.result_objects = Counter(
            "parkfleet_result_objects_total",
            "Unit results put in object storage, by result (ok, error).",
            ["result"],
            registry=r,
        )
        self.result_object_bytes = Counter(
            "parkfleet_result_object_bytes_total",
            "Bytes of the unit results put in object storage.",
            registry=r,
        )
        self.kube_api = KubeApiMetrics.of(r)

    def read_bytes(self, source: str) -> Callable[[int], None]:
        """A counter of input bytes read from ``source`` (volume, s3)."""
        counter = self.input_bytes.labels(source)
        return counter.inc

    def result_uploaded(self, size: int, ok: bool) -> None:
        """Counts a result put in object storage (``size`` bytes), or a failed put."""
        self.result_objects.labels("ok" if ok else "error").inc()
        if ok:
            self.result_object_bytes.inc(size)

    def pod_ended(self, pool: str, namespace: str, phase: str, reason: str, wh: float) -> None:
        """Counts a pod that ended and the energy (Wh) its tasks used."""
        self.pods_ended.labels(pool, phase, reason).inc()
        if wh > 0:
            self.pod_energy.labels(pool, namespace).inc(wh * _JOULES_PER_WH)

"""The agent's Prometheus metrics (one registry may serve a whole simulated fleet)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics

__all__ = ["AgentMetrics"]

# Prometheus' text format stores each ``*_created`` sample as a series of its own: one
# more series per counter and histogram child, for nothing the dashboards use.
disable_created_metrics()  # type: ignore[no-untyped-call]


class AgentMetrics:
    """Counters for one agent or for many agents in one process.

    Labels stay bounded: outcome and reason words, never a car or task id.

    Args:
        registry: Where to register (a fresh one by default, never the global one implicitly).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.connects = Counter(
            "parkfleet_agent_connects_total", "Streams the agent opened to the gateway", registry=r
        )
        self.disconnects = Counter(
            "parkfleet_agent_disconnects_total",
            "Streams that ended, by gRPC status code",
            ["code"],
            registry=r,
        )
        self.connected = Gauge(
            "parkfleet_agent_connected_cars", "Agents with a live stream", registry=r
        )
        self.offers = Counter(
            "parkfleet_agent_offers_total",
            "Task offers received, by decision (accepted or the refusal reason)",
            ["decision"],
            registry=r,
        )
        self.tasks = Counter(
            "parkfleet_agent_tasks_total",
            "Tasks that ended, by outcome (Done or the failure reason)",
            ["outcome"],
            registry=r,
        )
        self.items = Counter(
            "parkfleet_agent_items_total", "Items whose results were sent", registry=r
        )
        self.energy = Counter(
            "parkfleet_agent_energy_joules_total",
            "Energy spent on tasks in joules, by kind (measured or modelled)",
            ["kind"],
            registry=r,
        )
        self.model_fetches = Counter(
            "parkfleet_agent_model_fetches_total",
            "Model lookups, by result (hit, fetched, HashMismatch, FetchFailed)",
            ["result"],
            registry=r,
        )

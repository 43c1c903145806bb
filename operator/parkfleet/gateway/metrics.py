"""The gateway's Prometheus metrics, on a registry passed in (not only the global one).

Labels are bounded: pool, cell, reason, outcome, kind (message kinds) - never car id.
Label children are cached so the per-message path does no label lookups.

Units are Prometheus base units: seconds, bytes, joules (a dashboard shows Wh as
joules / 3600).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

__all__ = ["JOULES_PER_WH", "CellGauges", "GatewayMetrics"]

# Prometheus' text format stores each ``*_created`` sample as a series of its own: one
# more series per counter and histogram child, for nothing the dashboards use.
disable_created_metrics()  # type: ignore[no-untyped-call]

JOULES_PER_WH = 3600.0

_TELEMETRY_BUCKETS = (
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
)  # fmt: skip


# Work units are minutes long (design decision 7); tests run them in seconds.
_TASK_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)

_AGE_BUCKETS = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2,
    0.3, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class CellGauges:
    """The per-cell gauges of one cell, resolved once."""

    __slots__ = ("busy", "connected", "eligible")

    def __init__(self, metrics: GatewayMetrics, pool: str, cell: str) -> None:
        self.connected = metrics.cars_connected.labels(pool, cell)
        self.eligible = metrics.cars_eligible.labels(pool, cell)
        self.busy = metrics.cars_busy.labels(pool, cell)


class GatewayMetrics:
    """Every metric the gateway exports.

    Args:
        registry: Where to register them; a fresh one when None.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.cars_connected = Gauge(
            "parkfleet_gateway_cars_connected", "Cars with an open link.", ["pool", "cell"],
            registry=r,
        )  # fmt: skip
        self.cars_eligible = Gauge(
            "parkfleet_gateway_cars_eligible",
            "Connected cars whose owner policy allows work now.",
            ["pool", "cell"],
            registry=r,
        )
        self.cars_busy = Gauge(
            "parkfleet_gateway_cars_busy", "Cars holding a task.", ["pool", "cell"], registry=r
        )
        self.messages = Counter(
            "parkfleet_gateway_car_messages_received_total",
            "Messages received from cars, by kind.",
            ["kind"],
            registry=r,
        )
        self.telemetry_seconds = Histogram(
            "parkfleet_gateway_telemetry_processing_seconds",
            "Gateway-side time to process one telemetry message.",
            buckets=_TELEMETRY_BUCKETS,
            registry=r,
        )
        self.telemetry_age = Histogram(
            "parkfleet_gateway_telemetry_age_seconds",
            "Time from a telemetry message's car timestamp to its processing here "
            "(one-way latency incl. queueing; includes clock skew between car and gateway).",
            buckets=_AGE_BUCKETS,
            registry=r,
        )
        self.streams_closed = Counter(
            "parkfleet_gateway_streams_closed_total",
            "Car streams that ended, by reason.",
            ["reason"],
            registry=r,
        )
        self.tasks = Counter(
            "parkfleet_gateway_tasks_total",
            "Tasks that ended, by pool and outcome (Succeeded, Failed, Cancelled).",
            ["pool", "outcome"],
            registry=r,
        )
        self.tasks_started = Counter(
            "parkfleet_gateway_tasks_started_total",
            "Tasks a car accepted for the first time (a move to another car is not a start).",
            ["pool"],
            registry=r,
        )
        self.task_duration = Histogram(
            "parkfleet_gateway_task_duration_seconds",
            "From a task's first acceptance by a car to its end, moves included, by outcome.",
            ["pool", "outcome"],
            buckets=_TASK_BUCKETS,
            registry=r,
        )
        self.energy = Counter(
            "parkfleet_gateway_energy_joules_total",
            "Energy of the cars' tasks by the gateway's own account (the owner ledger's: "
            "task seconds x each car's declared power model, at the socket), by pool.",
            ["pool"],
            registry=r,
        )
        self.car_energy = Counter(
            "parkfleet_gateway_car_reported_energy_joules_total",
            "Energy the cars themselves reported for their tasks (a cross-check of "
            "parkfleet_gateway_energy_joules_total), by pool.",
            ["pool"],
            registry=r,
        )
        self.task_seconds = Counter(
            "parkfleet_gateway_task_seconds_total",
            "Seconds the cars' tasks ran, by the gateway's clock (owner ledger), by pool.",
            ["pool"],
            registry=r,
        )
        self.offered_seconds = Counter(
            "parkfleet_gateway_offered_seconds_total",
            "Seconds cars were connected with their owners' policy allowing work (owner "
            "ledger), by pool.",
            ["pool"],
            registry=r,
        )
        self.credit = Counter(
            "parkfleet_gateway_credit_total",
            "Credit granted for verified work (100 per task-hour whose results were "
            "accepted; owner ledger), by pool.",
            ["pool"],
            registry=r,
        )
        self.policy_violations = Counter(
            "parkfleet_gateway_policy_violations_total",
            "Times a car still reported computing longer than the grace period after its owner's "
            "policy stopped it (must stay 0), by pool.",
            ["pool"],
            registry=r,
        )
        self.task_moves = Counter(
            "parkfleet_gateway_task_moves_total",
            "Times a task resumed on another car.",
            ["pool"],
            registry=r,
        )
        self.placements = Counter(
            "parkfleet_gateway_placements_total",
            "Tasks offered to a car, by pool and how the car's claimed stay fit the task's "
            "estimated run time: stays, unknown (no claim, no estimate yet, or claims "
            "disregarded), leaves (none stayed long enough: it checkpoints sooner).",
            ["pool", "fit"],
            registry=r,
        )
        self.departure_claims_broken = Counter(
            "parkfleet_gateway_departure_claims_broken_total",
            "Cars that drove off or were lost holding a task well before the departure "
            "they claimed at its offer; their claims are disregarded from then on.",
            ["pool"],
            registry=r,
        )
        self.task_stalls = Counter(
            "parkfleet_gateway_task_stalls_total",
            "Running tasks moved off a car that said nothing about them for the stall timeout.",
            ["pool"],
            registry=r,
        )
        self.task_attempts_exhausted = Counter(
            "parkfleet_gateway_task_attempts_exhausted_total",
            "Tasks failed because that many cars in a row did not finish them.",
            ["pool"],
            registry=r,
        )
        self.result_items = Counter(
            "parkfleet_gateway_result_items_total",
            "Items whose results reached a sink.",
            ["pool"],
            registry=r,
        )
        self.pool_refusals = Counter(
            "parkfleet_gateway_pool_refusals_total",
            "Cars refused a pool because several FleetPools' selectors match them and none "
            "is the most specific (they wait unpooled); counted when a car connects so, or "
            "when a pool change takes its pool from it.",
            registry=r,
        )
        self.cars_by_reputation = Gauge(
            "parkfleet_gateway_cars_by_reputation",
            "Connected cars by reputation state (new, trusted, quarantined: no more work), "
            "from the votes on redundant copies and spot checks.",
            ["pool", "state"],
            registry=r,
        )
        self.consent_changes = Counter(
            "parkfleet_gateway_consent_changes_total",
            "Changes of an owner's consent that cars reported, by pool and the new consent "
            "(active, paused, withdrawn).",
            ["pool", "consent"],
            registry=r,
        )
        self.cars_paused = Gauge(
            "parkfleet_gateway_cars_paused",
            "Connected cars whose owner paused work on them.",
            ["pool"],
            registry=r,
        )
        self.car_strikes = Counter(
            "parkfleet_gateway_car_strikes_total",
            "Verdicts against a car: results it delivered disagreed with the kept result.",
            ["pool"],
            registry=r,
        )
        self.car_agreements = Counter(
            "parkfleet_gateway_car_agreements_total",
            "Verdicts for a car: results it delivered agreed with the kept result.",
            ["pool"],
            registry=r,
        )
        self.tasks_queued = Gauge(
            "parkfleet_gateway_tasks_queued", "Tasks waiting for a car.", registry=r
        )
        self.model_bytes = Counter(
            "parkfleet_gateway_model_bytes_sent_total", "Model bytes served.", registry=r
        )
        self.model_fetches = Counter(
            "parkfleet_gateway_model_fetches_total",
            "The gateway's own downloads of models pods name by URI, by source (https, s3) "
            "and outcome (Fetched, ModelHashMismatch, ModelFetchFailed).",
            ["source", "outcome"],
            registry=r,
        )
        self.model_fetched_bytes = Counter(
            "parkfleet_gateway_model_fetched_bytes_total",
            "Bytes of the models the gateway downloaded and kept, by source (https, s3).",
            ["source"],
            registry=r,
        )
        self._message_children: dict[str, Counter] = {}

    def task_started(self, pool: str) -> float:
        """Counts a task's first acceptance; returns the start time for :meth:`task_ended`."""
        self.tasks_started.labels(pool).inc()
        return time.monotonic()

    def task_ended(self, pool: str, outcome: str, started_at: float) -> None:
        """Counts a task's end and, when a car ever accepted it, its duration.

        Args:
            pool: The task's pool.
            outcome: Succeeded, Failed or Cancelled.
            started_at: What :meth:`task_started` returned (0: never started).
        """
        self.tasks.labels(pool, outcome).inc()
        if started_at > 0:
            self.task_duration.labels(pool, outcome).observe(time.monotonic() - started_at)

    def energy_used(self, pool: str, wh: float) -> None:
        """Adds energy of the gateway's own account (in Wh, as the ledger keeps it)."""
        if wh > 0:
            self.energy.labels(pool).inc(wh * JOULES_PER_WH)

    def car_energy_used(self, pool: str, wh: float) -> None:
        """Adds energy a car reported (in Wh, as the protocol carries it)."""
        if wh > 0:
            self.car_energy.labels(pool).inc(wh * JOULES_PER_WH)

    def message(self, kind: str) -> None:
        """Counts one received message of ``kind``."""
        child = self._message_children.get(kind)
        if child is None:
            child = self._message_children[kind] = self.messages.labels(kind)
        child.inc()

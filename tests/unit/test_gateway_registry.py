"""The registry's per-cell counters and availability, and the event fan-out."""

from __future__ import annotations

import asyncio

from parkfleet.gateway.events import EventBus
from parkfleet.gateway.metrics import GatewayMetrics
from parkfleet.gateway.registry import CarState, Registry
from parkfleet.policy import Eligibility, Policy
from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.taskport import TaskEvent


def make(reg: Registry, car_id: str, policy: Policy | None = None) -> CarState:
    return CarState(
        car_id=car_id,
        cell=reg.cell("p-0", "p"),
        context=None,
        handler=None,
        gpu_count=1,
        gpu_memory_mib=8192,
        runtimes=reg.intern(frozenset({"onnxruntime"})),
        eligibility=Eligibility(policy or Policy()),
    )


def tel(**kw: object) -> pb.Telemetry:
    base: dict[str, object] = {"state": pb.PARKED, "plugged_in": True, "soc_percent": 80}
    base.update(kw)
    return pb.Telemetry(**base)  # type: ignore[arg-type]


def test_counters_follow_telemetry_tasks_and_removal() -> None:
    metrics = GatewayMetrics()
    reg = Registry(metrics)
    a, b = make(reg, "a"), make(reg, "b")
    reg.add(a)
    reg.add(b)
    cell = reg.cells["p-0"]
    assert (len(cell.cars), cell.eligible, len(cell.available)) == (2, 0, 0)
    assert a.reason == "NoTelemetry"
    v = reg.update_telemetry(a, tel())
    assert v is not None
    assert v.eligible
    assert reg.update_telemetry(a, tel()) is None  # no change, no verdict
    reg.update_telemetry(b, tel())
    assert (cell.eligible, set(cell.available)) == (2, {"a", "b"})
    reg.set_busy(a, True)
    assert (cell.busy, set(cell.available)) == (1, {"b"})
    v = reg.update_telemetry(b, tel(state=pb.DRIVING))
    assert v is not None
    assert v.reason == "Driving"
    assert (cell.eligible, set(cell.available)) == (1, set())
    reg.remove(a)
    assert (len(cell.cars), cell.eligible, cell.busy) == (1, 0, 0)
    sample = metrics.registry.get_sample_value
    labels = {"pool": "p", "cell": "p-0"}
    assert sample("parkfleet_gateway_cars_connected", labels) == 1
    assert sample("parkfleet_gateway_cars_eligible", labels) == 0
    assert sample("parkfleet_gateway_cars_busy", labels) == 0


def test_replacement_keeps_counts_right() -> None:
    reg = Registry(GatewayMetrics())
    old = make(reg, "a")
    reg.add(old)
    reg.update_telemetry(old, tel())
    new = make(reg, "a")
    assert reg.add(new) is old
    assert not reg.remove(old)  # the old stream's cleanup changes nothing
    # Late telemetry on the old stream must not touch the cell's counters.
    reg.update_telemetry(old, tel(state=pb.DRIVING))
    cell = reg.cells["p-0"]
    assert (len(cell.cars), cell.eligible) == (1, 0)
    reg.update_telemetry(new, tel())
    assert (cell.eligible, set(cell.available)) == (1, {"a"})


def test_paused_gauge_follows_consent_moves_and_disconnects() -> None:
    metrics = GatewayMetrics()
    reg = Registry(metrics)

    def paused(pool: str) -> float:
        value = metrics.registry.get_sample_value("parkfleet_gateway_cars_paused", {"pool": pool})
        return value or 0.0

    a = make(reg, "a")
    reg.add(a)
    v = reg.update_telemetry(a, tel(consent=pb.CONSENT_PAUSED))
    assert v is not None
    assert v.reason == "OwnerPaused"
    reg.set_consent(a, "paused")
    reg.set_consent(a, "paused")  # no change, no count
    assert paused("p") == 1
    reg.move(a, reg.cell("q-0", "q"))
    assert (paused("p"), paused("q")) == (0, 1)
    reg.remove(a)  # disconnected: no longer a paused car here
    assert paused("q") == 0
    # Back, still paused (the gateway remembers it): counted from the start.
    again = make(reg, "a")
    again.consent = "paused"
    reg.add(again)
    assert paused("p") == 1
    reg.set_consent(again, "active")
    assert paused("p") == 0


def test_interning_shares_values() -> None:
    reg = Registry(GatewayMetrics())
    p1 = reg.intern(Policy(min_soc_percent=60))
    assert reg.intern(Policy(min_soc_percent=60)) is p1


async def test_event_bus_fans_out_and_closes() -> None:
    bus = EventBus()
    one, two = bus.subscribe(), bus.subscribe()
    bus.publish(TaskEvent(kind="placed", task_id="t", cell="c"))
    bus.close()
    got1 = [e.kind async for e in one]
    got2 = [e.kind async for e in two]
    assert got1 == got2 == ["placed"]
    late = bus.subscribe()
    assert [e async for e in late] == []
    await asyncio.sleep(0)

"""Pools cannot steal cars: overlapping FleetPools, end to end.

On the real local control plane with the session ``stack`` (operator, gateway with its
node agent): a strict pool with simulated cars, then ``kubectl apply`` of a pool that sorts
first by name with an empty selector and a loose floor, then of a pool with the strict
one's very selector. The strict pool keeps its cars until the tie, the tie refuses them,
and every pool involved says so in its ``SelectorOverlap`` condition.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from parkfleet.devstack import DevStack

from .conftest import Kubectl
from .kube import events_of, get_json, until

pytestmark = pytest.mark.e2e

CARS = 3
# Status follows within the operator's 5 s resync and the node agent's 1 s status writes;
# the bound only keeps a broken run from hanging.
WITHIN_S = 60


def pool_doc(name: str, selector: str, min_battery: int, plugged: bool) -> str:
    return f"""
apiVersion: parkfleet.io/v1alpha1
kind: FleetPool
metadata: {{name: {name}}}
spec:
  selector: {{matchAttributes: {selector}}}
  cellSize: 10
  cells: 1
  policyFloor: {{onlyWhilePluggedIn: {str(plugged).lower()}, minBatteryPercent: {min_battery}}}
"""


def status_of(kubectl: Kubectl, pool: str) -> dict[str, Any]:
    got: dict[str, Any] = get_json(kubectl, "fp", pool).get("status", {})
    return got


def overlap_of(kubectl: Kubectl, pool: str) -> dict[str, Any]:
    conditions = status_of(kubectl, pool).get("conditions") or ()
    found: dict[str, Any] = next((c for c in conditions if c["type"] == "SelectorOverlap"), {})
    return found


def wait_overlap(kubectl: Kubectl, pool: str, reason: str, *names: str) -> dict[str, Any]:
    """Waits for the pool's SelectorOverlap reason, its message naming ``names``."""
    return until(
        lambda: (
            (c := overlap_of(kubectl, pool)).get("reason") == reason
            and all(n in c.get("message", "") for n in names)
            and c
        ),
        WITHIN_S,
        f"{pool}'s SelectorOverlap to be {reason} naming {names}",
    )


def connected(kubectl: Kubectl, pool: str) -> int:
    return int(status_of(kubectl, pool).get("carsConnected", -1))


@pytest.fixture
def pools(stack: DevStack, kubectl: Kubectl) -> Iterator[tuple[str, str, str]]:
    """Names for the strict, loose and twin pools of this test; all removed afterwards
    (with the cars the test started)."""
    tag = uuid.uuid4().hex[:6]
    names = (f"ovl-{tag}", f"aaa-{tag}", f"dup-{tag}")  # aaa sorts first by name
    procs_before = set(stack.procs)
    try:
        yield names
    finally:
        for key in set(stack.procs) - procs_before:
            stack.procs.pop(key).stop()
        kubectl("delete", "fp", *names, "--ignore-not-found", "--timeout=60s", check=False)


def test_a_loose_pool_cannot_take_a_strict_pools_cars_and_a_tie_refuses_them(
    stack: DevStack, kubectl: Kubectl, pools: tuple[str, str, str]
) -> None:
    strict, loose, twin = pools
    kubectl("apply", "-f", "-", stdin=pool_doc(strict, f"{{pool: {strict}}}", 50, True))
    stack.start_fleet(CARS, 1, strict, prefix=f"{strict}-", name=strict)
    until(lambda: connected(kubectl, strict) == CARS, WITHIN_S, f"{strict} to count its cars")
    wait_overlap(kubectl, strict, "NoOverlap")

    # A pool first by name, selecting every car, with a loose floor: it is shadowed, it
    # shows so before any car would join it, and the strict pool keeps every car.
    kubectl("apply", "-f", "-", stdin=pool_doc(loose, "{}", 0, False))
    shadowed = wait_overlap(kubectl, loose, "Shadowed", strict)
    assert shadowed["status"] == "True"
    shadows = wait_overlap(kubectl, strict, "Shadows", loose)
    assert shadows["status"] == "True"
    steady_until = time.monotonic() + 8  # past a resync of the pools' status and then some
    while time.monotonic() < steady_until:
        assert connected(kubectl, strict) == CARS, status_of(kubectl, strict)
        time.sleep(0.5)
    assert "lose their pool" not in stack.procs["gateway"].text()

    # A pool with the strict pool's very selector: a tie. Both pools say so, the cars
    # join neither (nor the loose pool), and the gateway logs why.
    kubectl("apply", "-f", "-", stdin=pool_doc(twin, f"{{pool: {strict}}}", 0, False))
    for pool, other in ((strict, twin), (twin, strict)):
        cond = wait_overlap(kubectl, pool, "AmbiguousSelector", other, f"pool={strict}")
        assert cond["status"] == "True"
    wait_overlap(kubectl, loose, "Shadowed", strict, twin)
    until(lambda: connected(kubectl, strict) == 0, WITHIN_S, f"{strict} to lose its cars")
    assert connected(kubectl, twin) == 0
    assert connected(kubectl, loose) == 0
    log = stack.procs["gateway"].text()
    assert f"{CARS} connected cars lose their pool: the selectors of pools {twin}, {strict}" in log
    until(
        lambda: any(r == "AmbiguousSelector" for r, _ in events_of(kubectl, strict)),
        WITHIN_S,
        f"a Warning Event on {strict}",
    )

    # The twin goes: the strict pool has its cars back; the loose pool goes: no overlap left.
    kubectl("delete", "fp", twin, "--timeout=60s")
    wait_overlap(kubectl, strict, "Shadows", loose)
    until(lambda: connected(kubectl, strict) == CARS, WITHIN_S, f"{strict} to get its cars back")
    kubectl("delete", "fp", loose, "--timeout=60s")
    cleared = wait_overlap(kubectl, strict, "NoOverlap")
    assert cleared["status"] == "False"
    assert connected(kubectl, strict) == CARS

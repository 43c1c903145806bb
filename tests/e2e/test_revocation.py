"""Revocation end to end: `parkfleet certs revoke` cuts a live car off, `renew` lets it back.

The real local control plane, the stack's gateway process (its node agent watches the
revocation ConfigMap) and a real `parkfleet agent` process, driven with the `parkfleet`
CLI as the fleet admin would.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from parkfleet.devstack import REVOCATIONS, DevStack

from .conftest import Kubectl
from .kube import until
from .test_node_capacity import gpus_of, pool  # noqa: F401  (the fixture)

pytestmark = pytest.mark.e2e


def parkfleet(stack: DevStack, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs the ``parkfleet`` CLI as the fleet admin would."""
    return subprocess.run(
        [sys.executable, "-m", "parkfleet.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=stack.env(),
    )


@pytest.fixture
def lifted(stack: DevStack) -> Iterator[list[str]]:
    """Car ids whose revocation the test lifts at the end (the ConfigMap is shared)."""
    cars: list[str] = []
    yield cars
    for car in cars:
        parkfleet(
            stack,
            *("certs", "revoke", car, "--undo", f"--configmap={REVOCATIONS}"),
            f"--kubeconfig={stack.kubeconfig}",
        )


def test_a_revoked_car_is_cut_off_within_seconds_and_a_renewed_one_comes_back(
    stack: DevStack,
    kubectl: Kubectl,
    pool: str,  # noqa: F811  (the fixture imported above)
    lifted: list[str],
) -> None:
    car = f"{pool}-car"
    node = f"pf-{pool}-0"
    agent = stack.start_agent(car, {"pool": pool})
    until(lambda: gpus_of(kubectl, node) == 1, 60, f"{node} to offer the car's GPU")

    lifted.append(car)
    t0 = time.monotonic()
    out = parkfleet(
        stack,
        *("certs", "revoke", car, f"--configmap={REVOCATIONS}"),
        f"--kubeconfig={stack.kubeconfig}",
    )
    assert "revoked" in out.stdout
    # The agent is told PERMISSION_DENIED and stops: retrying cannot help it.
    until(lambda: not agent.alive(), 10, "the revoked car's agent to be cut off")
    assert time.monotonic() - t0 < 10
    assert "revoked" in agent.text()
    until(lambda: gpus_of(kubectl, node) == 0, 30, f"{node} to lose the car's GPU")
    cm = kubectl("get", "configmap", REVOCATIONS.split("/")[1], "-o", "jsonpath={.data}")
    assert car in cm.stdout

    # Renewed, the same car id is accepted again.
    parkfleet(stack, "certs", "renew", f"--dir={stack.certs}", f"--car-id={car}")
    stack.procs.pop(f"agent-{car}", None)
    stack.start_agent(car, {"pool": pool})
    until(lambda: gpus_of(kubectl, node) == 1, 60, f"{node} to offer the renewed car's GPU")

"""The FleetPool CRD rejects every invalid pool with a message that names the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import Kubectl

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "fleetpools.parkfleet.io.yaml"


@pytest.fixture(scope="module")
def fleetpool_crd(cluster: object) -> None:
    from parkfleet import devcluster

    assert isinstance(cluster, devcluster.LocalCluster)
    k = Kubectl(cluster.kubeconfig)
    k("apply", "-f", str(CRD))
    k("wait", "--for=condition=Established", "crd/fleetpools.parkfleet.io", "--timeout=60s")


def pool(spec: str, name: str = "bad") -> str:
    head = "apiVersion: parkfleet.io/v1alpha1\nkind: FleetPool\n"
    return f"{head}metadata: {{name: {name}}}\nspec: {spec}\n"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("{cellSize: 0}", "spec.cellSize"),
        ("{}", "spec.cellSize: Required value"),
        ("{cellSize: 5, cells: 0}", "spec.cells"),
        (
            "{cellSize: 5, policyFloor: {minBatteryPercent: 150}}",
            "spec.policyFloor.minBatteryPercent",
        ),
        ("{cellSize: 5, runtimes: [tensorflow]}", "spec.runtimes[0]"),
        ("{cellSize: 5, runtimes: []}", "spec.runtimes"),
        (
            "{cellSize: 5, policyFloor: {minBatteryPercent: 60, resumeBatteryPercent: 50}}",
            "spec.policyFloor.resumeBatteryPercent must be 0 (same as the floor) or at least",
        ),
        (
            "{cellSize: 5, policyFloor: {blockedHours: [{start: 7, end: 7}]}}",
            "spec.policyFloor.blockedHours[].start and end must differ",
        ),
        (
            "{cellSize: 5, policyFloor: {blockedHours: [{start: 25, end: 3}]}}",
            "spec.policyFloor.blockedHours[0].start",
        ),
        (
            "{cellSize: 5, nodeTemplate: {labels: {parkfleet.io/team: ml}}}",
            "spec.nodeTemplate.labels may not use the parkfleet.io/ prefix",
        ),
        (
            "{cellSize: 5, nodeTemplate: {taints: [{key: k, effect: Sometimes}]}}",
            "spec.nodeTemplate.taints[0].effect",
        ),
        (
            "{cellSize: 5, selector: {matchAttributes: {Region: eu}}}",
            "spec.selector.matchAttributes keys must be lower-case",
        ),
        (
            "{cellSize: 5, namespaceSelector: {matchExpressions: [{key: team, operator: In}]}}",
            "spec.namespaceSelector.matchExpressions[].values must be non-empty for In",
        ),
        (
            "{cellSize: 5, namespaceSelector: "
            "{matchExpressions: [{key: team, operator: Exists, values: [a]}]}}",
            "spec.namespaceSelector.matchExpressions[].values must be non-empty for In",
        ),
        (
            "{cellSize: 5, namespaceSelector: "
            "{matchExpressions: [{key: team, operator: Like, values: [a]}]}}",
            "spec.namespaceSelector.matchExpressions[0].operator",
        ),
        (
            "{cellSize: 5, namespaceSelector: "
            "{matchExpressions: [{key: 'a b', operator: Exists}]}}",
            "spec.namespaceSelector.matchExpressions[0].key",
        ),
        (
            "{cellSize: 5, namespaceSelector: {matchLabels: {'team a': ml}}}",
            "spec.namespaceSelector.matchLabels keys must be label keys",
        ),
        (
            "{cellSize: 5, namespaceSelector: {matchLabels: {team: 'm l'}}}",
            "spec.namespaceSelector.matchLabels.team",
        ),
        ("{cellSize: 5, gateway: {shards: 65}}", "spec.gateway.shards"),
        ("{cellSize: 100000, cells: 1000}", "spec.cellSize * spec.cells must be at most"),
    ],
)
def test_invalid_pool_is_rejected_naming_the_field(
    fleetpool_crd: None, kubectl: Kubectl, spec: str, expected: str
) -> None:
    proc = kubectl("apply", "-f", "-", stdin=pool(spec), check=False)
    assert proc.returncode != 0, f"accepted: {spec}"
    assert expected in proc.stderr


def test_valid_pool_gets_defaults(fleetpool_crd: None, kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "-", stdin=pool("{cellSize: 10, cells: 3, gateway: {}}", name="fine"))
    got = kubectl(
        "get", "fp", "fine", "-o", "jsonpath={.spec.runtimes} {.spec.gateway.shards}"
    ).stdout
    assert got == '["onnxruntime"] 1'
    kubectl("delete", "fp", "fine")


def test_namespace_selector_takes_label_selectors(fleetpool_crd: None, kubectl: Kubectl) -> None:
    sel = (
        "{matchLabels: {kubernetes.io/metadata.name: team-a, example.com/tier: gold}, "
        "matchExpressions: [{key: env, operator: NotIn, values: [dev]}, "
        "{key: legacy, operator: DoesNotExist}]}"
    )
    doc = pool(f"{{cellSize: 10, namespaceSelector: {sel}}}", name="tenanted")
    kubectl("apply", "-f", "-", stdin=doc)
    got = kubectl("get", "fp", "tenanted", "-o", "jsonpath={.spec.namespaceSelector}").stdout
    assert '"kubernetes.io/metadata.name":"team-a"' in got
    kubectl("delete", "fp", "tenanted")

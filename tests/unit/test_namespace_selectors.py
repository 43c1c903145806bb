"""A FleetPool's ``spec.namespaceSelector``: Kubernetes label-selector semantics over the
labels of Namespaces, and what a pool without one allows (every namespace)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from parkfleet.api import FleetPoolSpec, LabelSelector
from parkfleet.api.labelselector import NAMESPACE_NAME_LABEL, OPERATORS, Requirement
from parkfleet.contract import (
    EXIT_BAD_SPEC,
    FAIL_JOB_EXIT_CODES,
    REASON_NAMESPACE_NOT_ALLOWED,
    exit_code,
)
from parkfleet.nodeagent import lifecycle as lc
from parkfleet.nodeagent import podevents as ev

CRD = Path(__file__).resolve().parents[2] / "crds" / "fleetpools.parkfleet.io.yaml"


def selector(**obj: Any) -> LabelSelector:
    return LabelSelector.from_k8s(obj)


def pool(namespace_selector: Any = None, name: str = "p") -> FleetPoolSpec:
    spec: dict[str, Any] = {"cellSize": 1}
    if namespace_selector is not None:
        spec["namespaceSelector"] = namespace_selector
    return FleetPoolSpec.from_k8s({"metadata": {"name": name}, "spec": spec})


@pytest.mark.parametrize(
    ("expression", "labels", "expected"),
    [
        ({"key": "team", "operator": "In", "values": ["a", "b"]}, {"team": "a"}, True),
        ({"key": "team", "operator": "In", "values": ["a", "b"]}, {"team": "c"}, False),
        ({"key": "team", "operator": "In", "values": ["a"]}, {}, False),
        ({"key": "team", "operator": "NotIn", "values": ["a"]}, {"team": "b"}, True),
        ({"key": "team", "operator": "NotIn", "values": ["a"]}, {"team": "a"}, False),
        # As in Kubernetes: NotIn holds for an object without the key.
        ({"key": "team", "operator": "NotIn", "values": ["a"]}, {}, True),
        ({"key": "team", "operator": "Exists"}, {"team": ""}, True),
        ({"key": "team", "operator": "Exists"}, {"other": "x"}, False),
        ({"key": "team", "operator": "DoesNotExist"}, {"other": "x"}, True),
        ({"key": "team", "operator": "DoesNotExist"}, {"team": "a"}, False),
        # An operator the schema would refuse: matches nothing rather than anything.
        ({"key": "team", "operator": "Like", "values": ["a"]}, {"team": "a"}, False),
    ],
)
def test_each_operator_means_what_it_means_in_kubernetes(
    expression: dict[str, Any], labels: dict[str, str], expected: bool
) -> None:
    assert selector(matchExpressions=[expression]).matches(labels) is expected


def test_match_labels_and_expressions_must_all_hold() -> None:
    sel = selector(
        matchLabels={"team": "ml", "env": "prod"},
        matchExpressions=[{"key": "legacy", "operator": "DoesNotExist"}],
    )
    assert sel.matches({"team": "ml", "env": "prod", "x": "y"})
    assert not sel.matches({"team": "ml"})
    assert not sel.matches({"team": "ml", "env": "dev"})
    assert not sel.matches({"team": "ml", "env": "prod", "legacy": "true"})


def test_an_empty_selector_selects_everything() -> None:
    assert selector().matches({})
    assert selector(matchLabels={}, matchExpressions=[]).matches({"a": "b"})


def test_selector_reads_as_kubectl_writes_it() -> None:
    sel = selector(
        matchLabels={"team": "ml"},
        matchExpressions=[
            {"key": "env", "operator": "In", "values": ["prod", "dev", "prod"]},
            {"key": "tier", "operator": "NotIn", "values": ["x"]},
            {"key": "gpu", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist"},
        ],
    )
    assert str(sel) == "team=ml,env in (dev,prod),tier notin (x),gpu,!legacy"
    assert sel.match_expressions[0] == Requirement("env", "In", ("dev", "prod"))


def test_a_pool_without_a_namespace_selector_allows_every_namespace() -> None:
    p = pool()
    assert p.namespace_selector is None
    assert p.namespace_refusal("anyone", {}) is None
    assert p.namespace_refusal("ghost", None) is None  # nothing to look up
    assert pool({}).namespace_refusal("anyone", {"x": "y"}) is None  # empty: every one


def test_a_pool_selects_namespaces_by_name_and_by_labels() -> None:
    by_name = pool({"matchLabels": {NAMESPACE_NAME_LABEL: "team-a"}}, name="gpu")
    # The API server sets the name label; a selector sees it even where a copy lacks it.
    assert by_name.namespace_refusal("team-a", {}) is None
    assert by_name.namespace_refusal("team-b", {NAMESPACE_NAME_LABEL: "team-b"}) == (
        'FleetPool "gpu" does not allow namespace "team-b" '
        "(its spec.namespaceSelector: kubernetes.io/metadata.name=team-a)"
    )
    # A label cannot claim another namespace's name.
    assert by_name.namespace_refusal("team-b", {NAMESPACE_NAME_LABEL: "team-a"}) is not None

    by_label = pool({"matchExpressions": [{"key": "tenant", "operator": "In", "values": ["x"]}]})
    assert by_label.namespace_refusal("ns1", {"tenant": "x"}) is None
    refusal = by_label.namespace_refusal("ns2", {"tenant": "y"})
    assert refusal is not None
    assert '"ns2"' in refusal
    assert '"p"' in refusal
    missing = by_label.namespace_refusal("gone", None)
    assert missing is not None
    assert "no such namespace" in missing


def test_a_changed_namespace_selector_is_a_changed_pool() -> None:
    # The node agent compares specs to notice a pool's change: the selector is part of it.
    assert pool({"matchLabels": {"a": "1"}}) == pool({"matchLabels": {"a": "1"}})
    assert pool({"matchLabels": {"a": "1"}}) != pool({"matchLabels": {"a": "2"}})
    assert pool() != pool({})


def test_the_crd_and_the_model_know_the_same_operators() -> None:
    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    expr = spec["properties"]["namespaceSelector"]["properties"]["matchExpressions"]["items"]
    assert tuple(expr["properties"]["operator"]["enum"]) == OPERATORS


def test_a_pod_of_a_namespace_not_allowed_fails_the_job_and_runs_nowhere() -> None:
    code = exit_code(REASON_NAMESPACE_NOT_ALLOWED)
    assert code == EXIT_BAD_SPEC
    assert code in FAIL_JOB_EXIT_CODES  # the job's own fault: no retry
    pod = lc.Pod(uid="u", namespace="b", name="x", cell="p-0", pool="p")
    now = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    state, effects = lc.refuse(pod, REASON_NAMESPACE_NOT_ALLOWED, "not allowed", now)
    assert state.ended
    assert not state.copies
    assert not [e for e in effects if isinstance(e, ev.Submit)]
    (patch,) = [e for e in effects if isinstance(e, ev.PatchStatus)]
    assert patch.status["phase"] == "Failed"
    assert patch.status["reason"] == REASON_NAMESPACE_NOT_ALLOWED
    term = patch.status["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == EXIT_BAD_SPEC

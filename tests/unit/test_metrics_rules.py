"""The alert rules: `promtool check rules` and `promtool test rules` pass, every alert has a
unit test, a severity, a summary and a description, and uses only metrics the code exports.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from parkfleet.controller.metrics import OperatorMetrics
from parkfleet.gateway.metrics import GatewayMetrics
from parkfleet.nodeagent.metrics import NodeAgentMetrics

from .promtool import METRIC, promtool

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "helm" / "parkfleet" / "rules" / "parkfleet-rules.yaml"
RULE_TESTS = sorted((RULES.parent / "tests").glob("*.yaml"))


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def exported_names() -> set[str]:
    """Every sample name the operator's and a gateway's registries can expose."""
    gw = GatewayMetrics()
    NodeAgentMetrics(gw.registry)
    names: set[str] = set()
    for registry in (gw.registry, OperatorMetrics().registry):
        for family in registry.collect():
            if family.type == "counter":
                names.add(family.name + "_total")
            elif family.type == "histogram":
                names.update(family.name + s for s in ("_bucket", "_count", "_sum"))
            else:
                names.add(family.name)
    return names


def test_promtool_check_rules() -> None:
    proc = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_test_rules() -> None:
    assert RULE_TESTS, "no promtool unit tests"
    proc = subprocess.run(
        [promtool(), "test", "rules", *map(str, RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=RULES.parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_unit_test_that_sees_it_fire() -> None:
    fired: set[str] = set()
    for path in RULE_TESTS:
        for t in yaml.safe_load(path.read_text())["tests"]:
            for case in t.get("alert_rule_test", ()):
                if case.get("exp_alerts"):
                    fired.add(case["alertname"])
    assert {a["alert"] for a in alerts()} <= fired


def test_the_required_alerts_exist_with_severity_and_text() -> None:
    names = {a["alert"] for a in alerts()}
    assert {
        "ParkfleetGatewayDown",
        "ParkfleetConnectedCarsDropped",
        "ParkfleetInferenceJobNoProgress",
        "ParkfleetTaskFailureRateHigh",
        "ParkfleetLeaseRenewalsFailing",
    } <= names
    for a in alerts():
        assert a["labels"]["severity"] in ("critical", "warning"), a["alert"]
        assert a["annotations"]["summary"], a["alert"]
        assert a["annotations"]["description"], a["alert"]


def test_alerts_use_only_metrics_the_code_exports() -> None:
    exported = exported_names()
    for a in alerts():
        used = set(METRIC.findall(a["expr"]))
        assert used <= exported, (a["alert"], used - exported)

"""Dashboard lint: grafana/dashboard-linter's main rules, applied by this test.

The linter's Go module is not served by the module proxy here, so its rules are
re-stated (names as in the linter):

- template-datasource-rule: one ``datasource`` variable of type datasource, query
  ``prometheus``, labelled "Data source";
- panel-datasource-rule (and no hard-coded datasource anywhere): every panel, target
  and query variable uses ``${datasource}``;
- panel-title-description-rule, panel-units-rule (a unit Grafana knows),
  panel-no-targets-rule;
- target-promql-rule: every query is valid PromQL (``promtool check rules`` parses them
  offline; tests/e2e/test_observability.py also runs them on a real Prometheus);
- target-rate-interval-rule: ``rate``/``irate`` ranges are ``$__rate_interval``;
- target-counter-agg-rule: counters (``*_total``) only inside rate, irate or increase;
- template-on-time-change-reload-rule: query variables refresh on time range change;
- uneditable-dashboard-rule: provisioned dashboards are not editable.

Plus: a stable, unique uid per dashboard, and every metric a panel uses is exported by
the code. Not applied: template-job-rule / template-instance-rule / target-job-rule /
target-instance-rule (they require ``job`` and ``instance`` matchers on every query,
where these dashboards sum over all gateway shards by design).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .promtool import METRIC, promtool
from .test_metrics_rules import exported_names

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO / "helm" / "parkfleet" / "dashboards").glob("*.json"))
DS_UIDS = {"${datasource}", "$datasource"}
# Grafana's unit ids that these dashboards may use (a subset of the linter's list).
UNITS = {
    "short", "none", "percent", "percentunit", "s", "ms", "bytes", "Bps", "reqps", "ops",
    "watt", "kwatt", "watth", "kwatth", "joule", "dateTimeAsIso", "dtdurations",
}  # fmt: skip
PANEL_TYPES_WITH_UNITS = {"stat", "timeseries", "gauge", "bargauge", "table"}
# Values Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__interval": "30s",
    "$__range": "1h",
}


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", ())  # panels inside collapsed rows


def variables(dash: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = dash["templating"]["list"]
    return items


def promql(expr: str, dash: dict[str, Any]) -> str:
    """A query as Prometheus receives it: Grafana's and the dashboard's variables filled in."""
    for name, value in GRAFANA_VARS.items():
        expr = expr.replace(name, value)
    for v in variables(dash):
        name = v["name"]
        expr = expr.replace(f"${{{name}}}", ".*").replace(f"${name}", ".*")
    assert "$" not in expr, f"unknown variable in {expr!r}"
    return expr


def exprs(dash: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for p in panels(dash):
        for t in p.get("targets", ()):
            yield p["title"], t["expr"]


def test_there_are_the_three_dashboards_with_stable_unique_uids() -> None:
    uids = {load(p)["uid"]: p.name for p in DASHBOARDS}
    assert set(uids) == {"parkfleet-fleet-overview", "parkfleet-jobs", "parkfleet-gateway-health"}
    for uid in uids:
        assert re.fullmatch(r"[a-z0-9-]{1,40}", uid), uid


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_datasource_is_a_variable_everywhere(path: Path) -> None:
    dash = load(path)
    ds = [v for v in variables(dash) if v["type"] == "datasource"]
    assert len(ds) == 1
    assert (ds[0]["name"], ds[0]["query"], ds[0]["label"]) == (
        "datasource",
        "prometheus",
        "Data source",
    )

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "datasource" and isinstance(value, dict):
                    assert value.get("uid") in DS_UIDS, f"{where}: hard-coded datasource {value}"
                elif key == "datasource" and isinstance(value, str):
                    assert value in DS_UIDS, f"{where}: hard-coded datasource {value!r}"
                walk(value, where)
        elif isinstance(node, list):
            for item in node:
                walk(item, where)

    for p in panels(dash):
        assert p.get("datasource", {}).get("uid") in DS_UIDS, p["title"]
        walk(p, p["title"])
    for v in variables(dash):
        if v["type"] == "query":
            walk(v, f"variable {v['name']}")
            assert v["datasource"]["uid"] in DS_UIDS


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panels_have_title_description_unit_and_targets(path: Path) -> None:
    dash = load(path)
    assert dash["editable"] is False
    assert dash.get("description")
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for p in panels(dash):
        if p["type"] == "row":
            continue
        assert p.get("title"), p
        assert p.get("description"), p["title"]
        if p["type"] in PANEL_TYPES_WITH_UNITS:
            assert p["fieldConfig"]["defaults"].get("unit") in UNITS, p["title"]
        assert p.get("targets"), p["title"]
        for t in p["targets"]:
            assert t.get("expr"), p["title"]
            assert t.get("refId"), p["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_query_variables_reload_on_time_change(path: Path) -> None:
    for v in variables(load(path)):
        if v["type"] == "query":
            assert v["refresh"] == 2, v["name"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_rates_use_rate_interval_and_counters_are_rated(path: Path) -> None:
    for title, expr in exprs(load(path)):
        for m in re.finditer(r"\b(i?rate)\(", expr):
            window = re.match(r"[^\[]*\[([^\]]+)\]", expr[m.end() :])
            assert window, (title, expr)
            assert window.group(1) == "$__rate_interval", (title, expr)
        for m in re.finditer(r"\b(parkfleet_[a-z0-9_]+_total)\b", expr):
            before = expr[: m.start()]
            after = expr[m.end() :]
            assert re.search(r"\b(rate|irate|increase)\($", before), (title, expr)
            assert re.match(r"(\{[^}]*\})?\[", after), (title, expr)


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    rules = []
    for path in DASHBOARDS:
        dash = load(path)
        for i, (_, expr) in enumerate(exprs(dash)):
            rules.append(
                {"record": f"lint:{path.stem.replace('-', '_')}:{i}", "expr": promql(expr, dash)}
            )
        for v in variables(dash):
            if v["type"] == "query":
                q = v["query"]["query"]
                m = re.fullmatch(r"label_values\((.+),\s*([a-z_]+)\)", q)
                assert m, q
                rules.append({"record": f"lint:var:{v['name']}", "expr": promql(m.group(1), dash)})
    file = tmp_path / "dashboards.rules.yaml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "lint", "rules": rules}]}))
    proc = subprocess.run(
        [promtool(), "check", "rules", str(file)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboards_use_only_metrics_the_code_exports() -> None:
    exported = exported_names()
    for path in DASHBOARDS:
        dash = load(path)
        texts = [e for _, e in exprs(dash)]
        texts += [v["query"]["query"] for v in variables(dash) if v["type"] == "query"]
        for text in texts:
            used = set(METRIC.findall(text))
            assert used <= exported, (path.name, used - exported)

"""Observability end to end: a real Prometheus scrapes the running system.

The session's gateway and operator are restarted with ``/metrics`` ports; Debian's
Prometheus (started here on loopback, 1 s scrape interval, the chart's alert rules
loaded) scrapes them while an InferenceJob runs on the simulated fleet and a car's
stream is cut. Then every dashboard query and every alert expression is run on that
Prometheus: each must parse and return data, or be listed below as returning data only
when something goes wrong. ``promtool check metrics`` runs on the real ``/metrics``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from parkfleet.devstack import DevStack, Proc, free_port

from .conftest import REPO, Kubectl
from .kube import get_json, until

pytestmark = pytest.mark.e2e

DASHBOARDS = sorted((REPO / "helm" / "parkfleet" / "dashboards").glob("*.json"))
RULES = REPO / "helm" / "parkfleet" / "rules" / "parkfleet-rules.yaml"
JOB = "observed"
SCRAPE_S = 1

# Panels whose query has data only when something happens that a healthy demo run does
# not do, with the reason.
PANELS_ONLY_ON_EVENTS = {
    ("parkfleet-gateway-health", "Task moves by pool"): "a car leaving mid-task",
}
# Series an alert reads that exist only once something failed: the alert expressions
# themselves are all empty on a healthy system (they are thresholds on failures), so
# each selector inside them is queried instead, and must return data unless listed here.
SELECTORS_ONLY_ON_FAILURE = {
    'parkfleet_gateway_tasks_total{outcome="Failed"}': "a task failed",
    'parkfleet_node_lease_renewals_total{result="error"}': "a Lease renewal failed",
    'parkfleet_kube_api_requests_total{code=~"5..|error"}': "an API request failed",
}
# Grafana's built-in variables, as Grafana would fill them for a 1 s scrape interval.
GRAFANA_VARS = {"$__rate_interval": "15s", "$__interval": "2s", "$__range": "10m"}
SELECTOR = re.compile(r"\b(up|parkfleet_[a-z0-9_]+)\b(\{[^}]*\})?")


def _get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body


@dataclass
class Observed:
    """The running system and the Prometheus watching it."""

    prometheus: str
    gateway_metrics: str
    operator_metrics: str
    start: float

    def api(self, path: str, **params: Any) -> Any:
        url = f"{self.prometheus}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            body = json.loads(_get(url))
        except urllib.error.HTTPError as e:
            body = json.loads(e.read())
        return body

    def query_range(self, expr: str) -> dict[str, Any]:
        """Runs ``expr`` over the whole test, as a time series panel would."""
        return dict(
            self.api("query_range", query=expr, start=self.start, end=time.time(), step="2s")
        )


def _filled(expr: str, dash: dict[str, Any]) -> str:
    for name, value in GRAFANA_VARS.items():
        expr = expr.replace(name, value)
    for v in dash["templating"]["list"]:
        name = v["name"]
        expr = expr.replace(f"${{{name}}}", ".*").replace(f"${name}", ".*")
    return expr


def _prometheus_config(tmp: Path, gateway_port: int, operator_port: int) -> Path:
    config = {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            # Job names as the chart's ServiceMonitors give them (the Service's name),
            # which the alert rules match.
            {
                "job_name": "parkfleet-gateway-headless",
                "static_configs": [{"targets": [f"127.0.0.1:{gateway_port}"]}],
            },
            {
                "job_name": "parkfleet-operator-metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{operator_port}"]}],
            },
        ],
    }
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _job(name: str, items: int) -> str:
    return f"""
apiVersion: parkfleet.io/v1alpha1
kind: InferenceJob
metadata: {{name: {name}}}
spec:
  pool: demo
  model: {{name: digits, outputNames: [label, probabilities]}}
  input: {{path: digits/inputs.npy, items: {items}}}
  itemsPerUnit: 50
  parallelism: 3
  batchSize: 25
  output: {{path: results/{name}}}
"""


def _start_prometheus(tmp: Path, config: Path, port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: run hack/prometheus.sh (make test does)")
    log = (tmp / "prometheus.log").open("wb")
    return subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _answers(url: str) -> bool:
    try:
        _get(url, timeout=2)
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def observed(stack: DevStack, kubectl: Kubectl) -> Iterator[Observed]:
    gateway_port, operator_port, prom_port = free_port(), free_port(), free_port()
    stack.start_gateway(f"--metrics-port={gateway_port}")
    stack.start_operator(metrics_port=operator_port)
    obs = Observed(
        prometheus=f"http://127.0.0.1:{prom_port}",
        gateway_metrics=f"http://127.0.0.1:{gateway_port}/metrics",
        operator_metrics=f"http://127.0.0.1:{operator_port}/metrics",
        start=time.time(),
    )
    until(lambda: _answers(obs.gateway_metrics), 30, "the gateway's /metrics")
    until(lambda: _answers(obs.operator_metrics), 60, "the operator's /metrics")
    with tempfile.TemporaryDirectory(prefix="parkfleet-prom-") as tmp_name:
        tmp = Path(tmp_name)
        prom = _start_prometheus(
            tmp, _prometheus_config(tmp, gateway_port, operator_port), prom_port
        )
        car: Proc | None = None
        try:
            until(lambda: _answers(f"{obs.prometheus}/-/ready"), 60, "Prometheus to be ready")

            def both_up() -> bool:
                targets = obs.api("targets")["data"]["activeTargets"]
                return len(targets) == 2 and all(t["health"] == "up" for t in targets)

            # On a loaded machine the first scrapes can lag; every query below needs both.
            until(both_up, 60, "Prometheus to scrape the gateway and the operator")
            # A car whose link breaks: streams closed by reason have something to show.
            car = stack.start_fleet(1, 1, "solo", prefix="obs-", name="obs-car")
            solo_car = re.compile(
                rb'^parkfleet_gateway_cars_connected\{[^}]*pool="solo"\} 1\.0$', re.M
            )
            until(lambda: solo_car.search(_get(obs.gateway_metrics)), 60, "the car to connect")
            car.kill()
            until(
                lambda: b"parkfleet_gateway_streams_closed_total{" in _get(obs.gateway_metrics),
                30,
                "the gateway to count the broken stream",
            )
            kubectl("apply", "-f", str(REPO / "crds" / "inferencejobs.parkfleet.io.yaml"))
            kubectl("wait", "--for=condition=Established", "crd/inferencejobs.parkfleet.io")
            kubectl("apply", "-f", "-", stdin=_job(JOB, 450))

            def complete() -> bool:
                st = get_json(kubectl, "ij", JOB).get("status", {})
                return any(
                    c["type"] == "Complete" and c["status"] == "True"
                    for c in st.get("conditions", [])
                )

            until(complete, 180, f"InferenceJob {JOB} to complete")

            def prometheus_saw_it() -> bool:
                got = obs.api(
                    "query",
                    query=f'parkfleet_inferencejob_condition{{inferencejob="{JOB}",'
                    'condition="Complete"} == 1',
                )
                return bool(got["data"]["result"])

            until(prometheus_saw_it, 60, "Prometheus to scrape the finished job")
            yield obs
        finally:
            prom.terminate()
            try:
                prom.wait(15)
            except subprocess.TimeoutExpired:
                prom.kill()
                prom.wait()
            if car is not None:
                car.kill()
            kubectl("delete", "ij", JOB, "--ignore-not-found", "--wait=false", check=False)


def test_prometheus_scrapes_both_and_loads_every_rule(observed: Observed) -> None:
    targets = observed.api("targets")["data"]["activeTargets"]
    assert {t["labels"]["job"]: t["health"] for t in targets} == {
        "parkfleet-gateway-headless": "up",
        "parkfleet-operator-metrics": "up",
    }
    groups = observed.api("rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    expected = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert len(rules) == len(expected)
    for r in rules:
        assert r["health"] == "ok", (r["name"], r.get("lastError"))
    # A healthy system: nothing fires.
    firing = [a for a in observed.api("alerts")["data"]["alerts"] if a["state"] == "firing"]
    assert firing == []


@pytest.mark.parametrize("which", ["gateway", "operator"])
def test_promtool_check_metrics_passes_on_real_output(observed: Observed, which: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run hack/prometheus.sh"
    text = _get(observed.gateway_metrics if which == "gateway" else observed.operator_metrics)
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert not proc.stdout.strip(), proc.stdout.decode()
    body = text.decode()
    series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
    print(f"{which} /metrics: {len(text)} bytes, {series} series")  # the scrape's cost
    assert "parkfleet_kube_api_requests_total{" in body  # the Kubernetes client is counted
    if which == "gateway":
        assert "parkfleet_gateway_task_duration_seconds_bucket{" in body
        assert "parkfleet_gateway_energy_joules_total{" in body
        assert 'parkfleet_pods_energy_joules_total{namespace="default"' in body
    else:
        assert f'parkfleet_inferencejob_units{{inferencejob="{JOB}"' in body


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_dashboard_query_returns_data(observed: Observed, path: Path) -> None:
    dash = json.loads(path.read_text())
    empty = []
    for panel in dash["panels"]:
        for target in panel["targets"]:
            got = observed.query_range(_filled(target["expr"], dash))
            assert got["status"] == "success", (panel["title"], got.get("error"))
            if not got["data"]["result"] and (dash["uid"], panel["title"]) not in (
                PANELS_ONLY_ON_EVENTS
            ):
                empty.append((panel["title"], target["expr"]))
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((.+),\s*([a-z_]+)\)", v["query"]["query"])
            assert m
            got = observed.api(
                "label/" + m.group(2) + "/values",
                **{"match[]": _filled(m.group(1), dash), "start": observed.start},
            )
            assert got["status"] == "success"
            assert got["data"], f"variable {v['name']} has no values"
    assert not empty, f"queries without data: {empty}"


def test_every_alert_expression_parses_and_reads_live_series(observed: Observed) -> None:
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    missing = []
    for rule in rules:
        got = observed.query_range(rule["expr"])
        assert got["status"] == "success", (rule["alert"], got.get("error"))
        # Every alert is a threshold on a failure: empty now, listed by construction.
        for m in SELECTOR.finditer(rule["expr"]):
            selector = m.group(0)
            if selector in SELECTORS_ONLY_ON_FAILURE:
                continue
            if not observed.query_range(selector)["data"]["result"]:
                missing.append((rule["alert"], selector))
    assert not missing, f"alerts read series that do not exist: {missing}"


def test_every_metric_the_dashboards_and_rules_use_is_in_the_real_output(
    observed: Observed,
) -> None:
    exposed = _get(observed.gateway_metrics).decode() + _get(observed.operator_metrics).decode()
    families = set(re.findall(r"^# TYPE (\S+) ", exposed, re.M))
    names = set()
    for f in families:
        names.update({f, f + "_total", f + "_bucket", f + "_count", f + "_sum"})
    texts = [RULES.read_text()] + [p.read_text() for p in DASHBOARDS]
    used = {m for t in texts for m in re.findall(r"\bparkfleet_[a-z0-9_]+", t)}
    assert used - names == set()

"""The Helm chart: lint, schema, rendering rules, server-side dry-run, install and uninstall.

Helm is the one ``make helm`` builds from its Go module into ``.cache/bin/helm``; the
cluster is the session's local control plane. It has no real kubelets, so the chart's own
pods stay Pending: the install test checks that every object exists (pods included: the
restricted Pod Security admission would have refused them otherwise), not that they run.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from parkfleet import devcluster
from parkfleet.controller.admission import HANDLER_ID

from .conftest import Kubectl
from .kube import get_json, until

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
HELM = REPO / ".cache" / "bin" / "helm"
KUBE_SCORE = REPO / ".cache" / "bin" / "kube-score"
CHART = REPO / "helm" / "parkfleet"
RULES = CHART / "rules" / "parkfleet-rules.yaml"
RESTRICTED = "pod-security.kubernetes.io/enforce=restricted"
CHART_CRDS = (
    "fleetpools.parkfleet.io",
    "inferencejobs.parkfleet.io",
    "clusterkopfpeerings.kopf.dev",
)
SHARDS = 2
# kube-score checks deprecations against the local control plane's Kubernetes minor.
K8S_MINOR = re.search(
    r"^\tk8s\.io/kubernetes (v\d+\.\d+)\.", (REPO / "hack/controlplane/go.mod").read_text(), re.M
)
# What kube-score calls critical and the chart chose otherwise: each skipped by its flag,
# each documented with why in docs/chart-lint.md (and values.yaml). The findings it skips.
KUBE_SCORE_EXCEPTIONS = {
    # No CPU limits (operator.resources, gateway.resources): throttling stalls event loops.
    "--ignore-container-cpu-limit": ("container-resources", "CPU limit is not set"),
    # image.pullPolicy IfNotPresent: a pinned tag, and nodes without a registry.
    "--ignore-test=container-image-pull-policy": (
        "container-image-pull-policy",
        "ImagePullPolicy is not set to Always",
    ),
}


class Helm:
    """Runs ``.cache/bin/helm`` with its state in a temporary folder, never in ``~``."""

    def __init__(self, home: Path, kubeconfig: Path | None = None) -> None:
        if not HELM.exists():
            pytest.fail(f"helm is not built: run `make helm` (make test does); expected {HELM}")
        self.env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(home),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        self.kubeconfig = kubeconfig

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        extra = [f"--kubeconfig={self.kubeconfig}"] if self.kubeconfig else []
        proc = subprocess.run(
            [str(HELM), *args, *extra],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def template(self, *args: str, chart: Path = CHART) -> list[dict[str, Any]]:
        """Renders the chart (release ``t`` in namespace ``pf``) and parses the objects."""
        out = self("template", "t", str(chart), "--namespace=pf", *args).stdout
        return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(tmp_path_factory.mktemp("helm-home"))


def kinds(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def pod_specs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet")
    }


# ---- offline: lint, schema, rendering ---------------------------------------------------


def test_lint_strict(helm: Helm) -> None:
    proc = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout, proc.stdout
    assert "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("key", ["gateway.shardz=2", "operator.peering.nmae=x", "colour=red"])
def test_schema_rejects_unknown_keys(helm: Helm, key: str) -> None:
    unknown = key.split("=")[0].rsplit(".", 1)[-1]
    for cmd in (["lint", "--strict"], ["template", "t"]):
        proc = helm(*cmd, str(CHART), f"--set={key}", check=False)
        assert proc.returncode != 0, f"helm {cmd[0]} accepted unknown key {key}"
        assert f"additional properties '{unknown}' not allowed" in proc.stderr + proc.stdout


def test_schema_closes_every_object() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node: Any, at: str) -> Iterator[str]:
        if isinstance(node, dict):
            closed = node.get("additionalProperties") is False
            if node.get("type") == "object" and "properties" in node and not closed:
                yield at
            for key, value in node.items():
                yield from walk(value, f"{at}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{at}/{i}")

    open_objects = list(walk(schema, ""))
    assert not open_objects, f"objects without additionalProperties: false: {open_objects}"


def test_chart_crds_are_the_repo_crds() -> None:
    # The chart carries copies (Helm warns on every command about symlinks, and a chart
    # folder should stand alone); this keeps them identical to the one source of truth.
    for crd in sorted((REPO / "crds").glob("*.yaml")):
        copy = CHART / "crds" / crd.name
        assert copy.exists(), f"{copy} is missing: cp {crd} {copy}"
        assert copy.read_bytes() == crd.read_bytes(), f"{copy} differs: cp {crd} {copy}"
    names = {yaml.safe_load(p.read_text())["metadata"]["name"] for p in (CHART / "crds").iterdir()}
    assert names == set(CHART_CRDS)


def test_pods_meet_restricted_pod_security(helm: Helm) -> None:
    specs = pod_specs(helm.template())
    assert set(specs) == {
        "t-parkfleet-operator",
        "t-parkfleet-operator-standby",
        "t-parkfleet-gateway",
    }
    for name, spec in specs.items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert {"requests", "limits"} <= set(c["resources"]), name
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert "/tmp" in mounts, f"{name}: a read-only root needs a writable /tmp"


def test_probes_ask_whether_alive_and_whether_ready_apart(helm: Helm) -> None:
    for name, spec in pod_specs(helm.template()).items():
        (c,) = spec["containers"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert f"--health-port={ports['health']}" in c["args"], name
        for probe, path in (
            ("startup", "/livez"),
            ("liveness", "/livez"),
            ("readiness", "/readyz"),
        ):
            assert c[f"{probe}Probe"]["httpGet"] == {"path": path, "port": "health"}, name
        requests, limits = c["resources"]["requests"], c["resources"]["limits"]
        assert {"ephemeral-storage", "memory"} <= set(requests) & set(limits), name
    # The health port is in no Service: probes come from the node's kubelet.
    for svc in kinds(helm.template(), "Service"):
        assert "health" not in [p.get("targetPort") for p in svc["spec"]["ports"]]


@dataclass(frozen=True)
class Finding:
    """One critical finding of kube-score."""

    workload: str  # kind/group/version/namespace/name
    check: str
    container: str
    summary: str

    def __str__(self) -> str:
        return f"{self.workload} ({self.container}): {self.check}: {self.summary}"


def kube_score(rendered: str, *flags: str) -> tuple[int, list[Finding]]:
    """Runs kube-score on rendered objects: its exit status and its critical findings."""
    if not KUBE_SCORE.exists():
        pytest.fail(
            f"kube-score is not built: run `make kube-score` (make test does); {KUBE_SCORE}"
        )
    assert K8S_MINOR is not None
    proc = subprocess.run(
        [str(KUBE_SCORE), "score", f"--kubernetes-version={K8S_MINOR[1]}", *flags, "-o=json", "-"],
        input=rendered,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode in (0, 1), proc.stderr  # 1: a critical finding
    critical = [
        Finding(o["object_name"], c["check"]["id"], note["path"], note["summary"])
        for o in json.loads(proc.stdout)
        for c in o["checks"]
        if c["grade"] == 1 and not c["skipped"]  # 1: kube-score's GradeCritical
        for note in c["comments"]
    ]
    return proc.returncode, critical


@pytest.mark.parametrize(
    "values",
    [
        [],
        [f"--set=gateway.shards={SHARDS + 1}"],
        ["--set=operator.standby.enabled=false"],
        ["--set=operator.peering.enabled=false", "--set=operator.admission.enabled=false"],
        ["--set=gateway.storage.existingClaim=parkfleet-data"],
    ],
    ids=["defaults", "shards", "no-standby", "standalone", "claim"],
)
def test_kube_score_finds_nothing_critical_but_the_documented_choices(
    helm: Helm, values: list[str]
) -> None:
    rendered = helm("template", "t", str(CHART), "--namespace=pf", *values).stdout
    status, critical = kube_score(rendered, *KUBE_SCORE_EXCEPTIONS)
    assert not critical, "\n".join(map(str, critical))
    assert status == 0
    # Without the flags: exactly the documented findings, on every workload (a choice
    # that changed leaves its exception stale, and this says so).
    _, without = kube_score(rendered)
    found = {(f.check, f.summary) for f in without}
    assert found == set(KUBE_SCORE_EXCEPTIONS.values()), "\n".join(map(str, without))
    workloads = pod_specs([d for d in yaml.safe_load_all(rendered) if d])
    assert {f.workload.rpartition("/")[2] for f in without} == set(workloads)
    docs = (REPO / "docs" / "chart-lint.md").read_text()
    assert all(flag in docs for flag in KUBE_SCORE_EXCEPTIONS), "docs/chart-lint.md says why"


def test_a_drain_takes_the_gateway_shards_one_at_a_time(helm: Helm) -> None:
    objects = helm.template(f"--set=gateway.shards={SHARDS}")
    (pdb,) = kinds(objects, "PodDisruptionBudget")
    (sts,) = kinds(objects, "StatefulSet")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == sts["spec"]["selector"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert not kinds(
        helm.template("--set=gateway.podDisruptionBudget.enabled=false"), "PodDisruptionBudget"
    )


def test_operator_is_recreate_with_peering_and_a_lower_priority_standby(helm: Helm) -> None:
    objects = helm.template()
    deployments = {d["metadata"]["name"]: d for d in kinds(objects, "Deployment")}
    priorities = {}
    for name, d in deployments.items():
        assert d["spec"]["strategy"] == {"type": "Recreate"}, name
        args = d["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "--peering=t-parkfleet" in args, args
        priorities[name] = int(next(a for a in args if a.startswith("--priority=")).split("=")[1])
    assert priorities["t-parkfleet-operator"] > priorities["t-parkfleet-operator-standby"]
    assert [p["metadata"]["name"] for p in kinds(objects, "ClusterKopfPeering")] == ["t-parkfleet"]
    # Without peering there is neither a standby nor a peering object.
    alone = helm.template("--set=operator.peering.enabled=false")
    assert [d["metadata"]["name"] for d in kinds(alone, "Deployment")] == ["t-parkfleet-operator"]
    assert not kinds(alone, "ClusterKopfPeering")


def test_admission_webhook_reaches_the_operators_handler_over_its_own_ca(helm: Helm) -> None:
    objects = helm.template()
    (vwc,) = kinds(objects, "ValidatingWebhookConfiguration")
    (hook,) = vwc["webhooks"]
    service = hook["clientConfig"]["service"]
    assert service["path"] == f"/{HANDLER_ID}"  # where Kopf serves the handler
    (svc,) = [o for o in kinds(objects, "Service") if o["metadata"]["name"] == service["name"]]
    (port,) = [p for p in svc["spec"]["ports"] if p["port"] == service["port"]]
    secret = next(o for o in kinds(objects, "Secret") if o["type"] == "kubernetes.io/tls")
    for name, spec in pod_specs(objects).items():
        if "operator" not in name:
            continue
        container = spec["containers"][0]
        assert port["targetPort"] in [p["name"] for p in container["ports"]]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["admission-tls"]["secret"]["secretName"] == secret["metadata"]["name"]
    ca = x509.load_pem_x509_certificate(base64.b64decode(hook["clientConfig"]["caBundle"]))
    leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    leaf.verify_directly_issued_by(ca)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"{service['name']}.pf.svc" in names.get_values_for_type(x509.DNSName)
    assert (
        kinds(
            helm.template("--set=operator.admission.enabled=false"),
            "ValidatingWebhookConfiguration",
        )
        == []
    )


def test_gateway_shards_come_from_the_pod_index(helm: Helm) -> None:
    objects = helm.template(f"--set=gateway.shards={SHARDS}")
    (sts,) = kinds(objects, "StatefulSet")
    assert sts["spec"]["replicas"] == SHARDS
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert "--shard=$(SHARD)" in container["args"]
    assert "--node-agent" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["SHARD"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    services = {s["metadata"]["name"]: s["spec"] for s in kinds(objects, "Service")}
    assert services[sts["spec"]["serviceName"]]["clusterIP"] == "None"
    assert [p["name"] for p in services["t-parkfleet-gateway"]["ports"]] == ["grpc"]


def test_rbac_is_least_privilege_and_every_rule_says_why(helm: Helm) -> None:
    out = helm("template", "t", str(CHART), "--namespace=pf").stdout
    docs = [
        d for d in out.split("\n---\n") if re.search(r"^kind: (Cluster)?Role$", d, re.MULTILINE)
    ]
    # Operator and gateway: a ClusterRole and a kube-node-lease Role each; the gateway also
    # a Role on the one revocation ConfigMap of its namespace and the ConfigMap-inputs
    # ClusterRole (bound per namespace); the metrics-reader ClusterRole for Prometheus.
    assert len(docs) == 7
    for doc in docs:
        role = yaml.safe_load(doc)
        lines = doc.splitlines()
        rule_lines = [
            i for i, line in enumerate(lines) if re.match(r"  - (apiGroups|nonResourceURLs):", line)
        ]
        assert len(rule_lines) == len(role["rules"])
        for i in rule_lines:
            assert lines[i - 1].strip().startswith("#"), f"{role['metadata']['name']}: {lines[i]}"
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "nonResourceURLs", "verbs"):
                assert "*" not in rule.get(field, ()), (
                    f"{role['metadata']['name']}: wildcard {rule}"
                )
        if role["kind"] == "Role" and role["metadata"]["name"].endswith("-revocations"):
            assert role["metadata"]["namespace"] == "pf"
            assert role["rules"] == [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": ["t-parkfleet-revocations"],
                    "verbs": ["get", "list", "watch"],
                }
            ]
        elif role["kind"] == "Role":
            assert role["metadata"]["namespace"] == "kube-node-lease"
            assert [r["resources"] for r in role["rules"]] == [["leases"]]
        elif role["metadata"]["name"] == "t-parkfleet-metrics-reader":
            assert role["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]


def rules_of(objects: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    (role,) = [o for o in objects if o["kind"] == "ClusterRole" and o["metadata"]["name"] == name]
    rules: list[dict[str, Any]] = role["rules"]
    return rules


def test_what_rbac_grants_on_every_node_lease_pod_and_job_a_policy_narrows(helm: Helm) -> None:
    objects = helm.template()
    policies = {p["metadata"]["name"]: p for p in kinds(objects, "ValidatingAdmissionPolicy")}
    bindings = {
        b["metadata"]["name"]: b for b in kinds(objects, "ValidatingAdmissionPolicyBinding")
    }
    # One per kind of object and identity, named after the release and its namespace
    # (cluster-wide objects: two releases never share one).
    whats = [
        "gateway-nodes",
        "gateway-leases",
        "gateway-pods",
        "operator-jobs",
        "operator-nodes",
        "operator-leases",
    ]
    assert sorted(policies) == sorted(f"t-parkfleet-pf-{w}.parkfleet.io" for w in whats)
    assert sorted(bindings) == sorted(policies)
    users = {
        "gateway": "system:serviceaccount:pf:t-parkfleet-gateway",
        "operator": "system:serviceaccount:pf:t-parkfleet-operator",
    }
    covered: dict[str, set[tuple[str, str]]] = {"gateway": set(), "operator": set()}
    for name, policy in policies.items():
        spec = policy["spec"]
        who = name.removeprefix("t-parkfleet-pf-").split("-")[0]
        assert spec["failurePolicy"] == "Fail", name
        (condition,) = spec["matchConditions"]
        assert condition["expression"] == f'request.userInfo.username == "{users[who]}"'
        assert spec["validations"], name
        for v in spec["validations"]:
            assert v["reason"] == "Forbidden", v
            assert "+" in v["messageExpression"], v  # it names the object refused
        for rule in spec["matchConstraints"]["resourceRules"]:
            covered[who] |= {
                (g, r.split("/")[0]) for g in rule["apiGroups"] for r in rule["resources"]
            }
        assert bindings[name]["spec"] == {"policyName": name, "validationActions": ["Deny"]}
    # Every write RBAC grants either identity on Nodes, Leases, pods or Jobs is under a
    # policy (RBAC cannot name those objects: their names are made at run time).
    narrowed = {("", "nodes"), ("", "pods"), ("coordination.k8s.io", "leases"), ("batch", "jobs")}
    for who in ("gateway", "operator"):
        writes = {
            (g, r.split("/")[0])
            for rule in rules_of(objects, f"t-parkfleet-{who}")
            + [
                r
                for o in kinds(objects, "Role")
                for r in o["rules"]
                if o["metadata"]["name"] == f"t-parkfleet-{who}"
            ]
            for g in rule.get("apiGroups", ())
            for r in rule.get("resources", ())
            if set(rule["verbs"]) & {"create", "update", "patch", "delete"}
        }
        assert writes & narrowed <= covered[who], (who, writes & narrowed - covered[who])
    assert not kinds(
        helm.template("--set=rbac.admissionPolicies=false"), "ValidatingAdmissionPolicy"
    )


def test_metrics_are_authenticated_and_prometheus_is_granted_them(helm: Helm) -> None:
    api = "--api-versions=monitoring.coreos.com/v1"
    sm = "--set=monitoring.serviceMonitor.enabled=true"
    reader = [
        "--set=monitoring.metricsReaders[0].kind=ServiceAccount",
        "--set=monitoring.metricsReaders[0].name=prometheus-k8s",
        "--set=monitoring.metricsReaders[0].namespace=monitoring",
    ]
    reviews = [
        {
            "apiGroups": ["authentication.k8s.io"],
            "resources": ["tokenreviews"],
            "verbs": ["create"],
        },
        {
            "apiGroups": ["authorization.k8s.io"],
            "resources": ["subjectaccessreviews"],
            "verbs": ["create"],
        },
    ]
    on = helm.template(api, sm, *reader)  # metricsAuth: kubernetes, the default
    for spec in pod_specs(on).values():
        assert "--metrics-auth=kubernetes" in spec["containers"][0]["args"]
    for who in ("operator", "gateway"):
        rules = rules_of(on, f"t-parkfleet-{who}")
        assert all(r in rules for r in reviews), who  # the guard's TokenReview and SAR
    (binding,) = [
        b
        for b in kinds(on, "ClusterRoleBinding")
        if b["roleRef"]["name"] == "t-parkfleet-metrics-reader"
    ]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "prometheus-k8s", "namespace": "monitoring"}
    ]
    for monitor in kinds(on, "ServiceMonitor"):
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["scheme"] == "https"
        assert endpoint["tlsConfig"] == {"insecureSkipVerify": True}
        assert endpoint["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"

    off = helm.template(api, sm, "--set=monitoring.metricsAuth=none")
    for spec in pod_specs(off).values():
        assert "--metrics-auth=none" in spec["containers"][0]["args"]
    assert not [r for r in reviews if r in rules_of(off, "t-parkfleet-operator")]
    assert not [
        b for b in kinds(off, "ClusterRoleBinding") if "metrics-reader" in b["metadata"]["name"]
    ]
    for monitor in kinds(off, "ServiceMonitor"):
        assert {"scheme", "bearerTokenFile"}.isdisjoint(monitor["spec"]["endpoints"][0])


def ingress(policy: dict[str, Any]) -> dict[str, list[dict[str, Any]] | None]:
    """Each ingress rule's peers by its one port's name (None: from anywhere)."""
    out = {}
    for rule in policy["spec"]["ingress"]:
        (port,) = rule["ports"]
        out[port["port"]] = rule.get("from")
    return out


def network_policies(helm: Helm, *args: str) -> dict[str, dict[str, Any]]:
    objects = helm.template(*args)
    return {
        p["metadata"]["name"].removeprefix("t-parkfleet-"): p
        for p in kinds(objects, "NetworkPolicy")
    }


MONITORING = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
KUBE_DNS = [
    {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    }
]
DNS_PORTS = [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
API_PORTS = [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]


def test_network_policies_render_rule_by_rule(helm: Helm) -> None:
    # The local control plane has no network plugin, so nothing enforces them there: what
    # is checked is what they say.
    by_default = network_policies(helm)
    assert sorted(by_default) == ["gateway", "operator"]
    for name, policy in by_default.items():
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        # Egress: DNS to the cluster's DNS pods, the API server's ports; nothing else.
        assert policy["spec"]["egress"] == [
            {"ports": DNS_PORTS, "to": KUBE_DNS},
            {"ports": API_PORTS},
        ], name
    # Ingress: cars from anywhere (outside the cluster); metrics from the monitoring
    # namespace; the kubelet API and the webhook from anywhere until the API server's
    # addresses are given.
    assert ingress(by_default["gateway"]) == {"grpc": None, "kubelet": None, "metrics": MONITORING}
    assert ingress(by_default["operator"]) == {"metrics": MONITORING, "admission": None}

    api = "10.0.0.0/28"
    given = network_policies(
        helm,
        f"--set=networkPolicy.apiServer.cidrs={{{api}}}",
        "--set=networkPolicy.apiServer.ports={6443}",
        "--set=networkPolicy.gatewayEgress[0].to[0].ipBlock.cidr=192.0.2.0/24",
        "--set=networkPolicy.gatewayEgress[0].ports[0].port=443",
    )
    block = [{"ipBlock": {"cidr": api}}]
    assert ingress(given["gateway"])["kubelet"] == block
    assert ingress(given["operator"])["admission"] == block
    api_egress = {"ports": [{"port": 6443, "protocol": "TCP"}], "to": block}
    assert given["operator"]["spec"]["egress"] == [{"ports": DNS_PORTS, "to": KUBE_DNS}, api_egress]
    model_server = {"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}], "ports": [{"port": 443}]}
    assert given["gateway"]["spec"]["egress"] == [
        {"ports": DNS_PORTS, "to": KUBE_DNS},
        api_egress,
        model_server,
    ]

    konnectivity = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}
    }
    custom = network_policies(
        helm,
        f"--set=networkPolicy.apiServer.cidrs={{{api}}}",
        "--set=networkPolicy.kubeletFrom[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=kube-system",
        "--set=networkPolicy.metricsFrom=null",
        "--set=networkPolicy.dnsTo=null",
        "--set=networkPolicy.carsFrom[0].ipBlock.cidr=198.51.100.0/24",
    )
    assert ingress(custom["gateway"]) == {
        "grpc": [{"ipBlock": {"cidr": "198.51.100.0/24"}}],
        "kubelet": [konnectivity],
        "metrics": None,
    }
    assert ingress(custom["operator"])["admission"] == [konnectivity]
    assert custom["operator"]["spec"]["egress"][0] == {"ports": DNS_PORTS}  # any address
    assert not kinds(helm.template("--set=networkPolicy.enabled=false"), "NetworkPolicy")


def test_object_store_secrets_are_readable_only_by_name_where_listed(helm: Helm) -> None:
    def grants(objects: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
        return [
            (o["metadata"]["name"], o["metadata"].get("namespace", ""), rule)
            for o in objects
            if o["kind"] in ("ClusterRole", "Role")
            for rule in o["rules"]
            if "secrets" in rule.get("resources", ())
        ]

    assert grants(helm.template()) == []  # by default: no Secret at all
    objects = helm.template(
        "--set=gateway.objectStore.secrets[0].namespace=team-a",
        "--set=gateway.objectStore.secrets[0].name=store",
        "--set=gateway.objectStore.secrets[1].namespace=team-b",
        "--set=gateway.objectStore.secrets[1].name=s3",
    )
    assert grants(objects) == [
        (
            f"t-parkfleet-gateway-object-store-{name}",
            ns,
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": [name],
                "verbs": ["get"],
            },
        )
        for ns, name in (("team-a", "store"), ("team-b", "s3"))
    ]
    bindings = [o for o in kinds(objects, "RoleBinding") if "object-store" in o["metadata"]["name"]]
    assert [(b["metadata"]["namespace"], b["subjects"][0]["name"]) for b in bindings] == [
        ("team-a", "t-parkfleet-gateway"),
        ("team-b", "t-parkfleet-gateway"),
    ]


def test_configmap_inputs_are_readable_only_in_the_namespaces_listed(helm: Helm) -> None:
    role_name = "t-parkfleet-gateway-configmap-inputs"
    for listed in ([], ["team-a", "team-b"]):
        values = [f"--set=gateway.configMapInputs.namespaces={{{','.join(listed)}}}"]
        objects = helm.template(*(values if listed else []))  # by default: none
        # Only this ClusterRole names configmaps in general, and only to get one by name;
        # the other grant is the revocation list's, that one ConfigMap of the release.
        grants = [
            (o["metadata"]["name"], rule)
            for o in objects
            if o["kind"] in ("ClusterRole", "Role")
            for rule in o["rules"]
            if "configmaps" in rule.get("resources", ())
        ]
        revocations = {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["t-parkfleet-revocations"],
            "verbs": ["get", "list", "watch"],
        }
        assert sorted(grants, key=lambda g: g[0]) == [
            (role_name, {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}),
            ("t-parkfleet-gateway-revocations", revocations),
        ]
        # Bound by a RoleBinding in each listed namespace, never cluster-wide.
        assert not [
            o for o in kinds(objects, "ClusterRoleBinding") if o["roleRef"]["name"] == role_name
        ]
        bindings = [o for o in kinds(objects, "RoleBinding") if o["roleRef"]["name"] == role_name]
        assert sorted(b["metadata"]["namespace"] for b in bindings) == listed
        for b in bindings:
            assert b["subjects"] == [
                {"kind": "ServiceAccount", "name": "t-parkfleet-gateway", "namespace": "pf"}
            ]


def test_monitoring_objects_need_the_value_and_the_api(helm: Helm, tmp_path: Path) -> None:
    on = [
        "--set=monitoring.serviceMonitor.enabled=true",
        "--set=monitoring.prometheusRule.enabled=true",
    ]
    api = "--api-versions=monitoring.coreos.com/v1"
    # A copy of the chart with a rules file of known content: the wrapping is what is tested.
    chart = tmp_path / "parkfleet"
    shutil.copytree(CHART, chart)
    (chart / "rules").mkdir(exist_ok=True)
    groups = [
        {
            "name": "g",
            "rules": [
                {
                    "alert": "A",
                    "expr": "up == 0",
                    "for": "5m",
                    "annotations": {"summary": "{{ $labels.pod }} down"},
                }
            ],
        }
    ]
    (chart / "rules" / "parkfleet-rules.yaml").write_text(yaml.safe_dump({"groups": groups}))

    def monitoring(objects: list[dict[str, Any]]) -> list[str]:
        return sorted(o["kind"] for o in objects if o["apiVersion"].startswith("monitoring."))

    assert monitoring(helm.template(api, chart=chart)) == []  # off by default
    assert monitoring(helm.template(*on, chart=chart)) == []  # no API: nothing, no failure
    objects = helm.template(*on, api, chart=chart)
    assert monitoring(objects) == ["PrometheusRule", "ServiceMonitor", "ServiceMonitor"]
    (rule,) = kinds(objects, "PrometheusRule")
    assert rule["spec"]["groups"] == groups  # carried verbatim, templates not expanded
    for sm in kinds(objects, "ServiceMonitor"):
        selector = sm["spec"]["selector"]["matchLabels"]
        services = [
            s
            for s in kinds(objects, "Service")
            if selector.items() <= s["metadata"]["labels"].items()
        ]
        assert len(services) == 1, sm["metadata"]["name"]
        # A job name of its own whatever the release is called: the alert rules use it.
        job = services[0]["metadata"]["labels"][sm["spec"]["jobLabel"]]
        assert job == f"parkfleet-{sm['metadata']['labels']['app.kubernetes.io/component']}"
        assert "metrics" in [p["name"] for p in services[0]["spec"]["ports"]]


def test_prometheus_rule_wraps_the_real_rules_file(helm: Helm) -> None:
    assert RULES.exists(), f"{RULES} is missing (the alert rules of issue 6)"
    objects = helm.template(
        "--set=monitoring.prometheusRule.enabled=true", "--api-versions=monitoring.coreos.com/v1"
    )
    (rule,) = kinds(objects, "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_dashboard_configmaps_for_the_grafana_sidecar(helm: Helm) -> None:
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert files, "the chart ships no dashboards"
    maps = kinds(helm.template(), "ConfigMap")
    assert len({m["metadata"]["name"] for m in maps}) == len(files), "one ConfigMap per file"
    by_key = {k: (m, v) for m in maps for k, v in m["data"].items()}
    for f in files:
        cm, text = by_key[f.name]
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(text) == json.loads(f.read_text())
    custom = helm.template(
        "--set=dashboards.label=dash",
        "--set=dashboards.labelValue=yes",
        "--set=dashboards.namespace=monitoring",
    )
    for cm in kinds(custom, "ConfigMap"):
        assert cm["metadata"]["labels"]["dash"] == "yes"
        assert "grafana_dashboard" not in cm["metadata"]["labels"]
        assert cm["metadata"]["namespace"] == "monitoring"


# ---- against the local control plane ------------------------------------------------------


@dataclass
class Release:
    """A chart installed by ``helm install`` into a restricted namespace."""

    name: str
    namespace: str
    helm: Helm
    kubectl: Kubectl
    crds_before: set[str]
    manifest: list[dict[str, Any]]
    notes: str


def crd_names(k: Kubectl) -> set[str]:
    return {c["metadata"]["name"] for c in get_json(k, "crd")["items"]}


def restricted_namespace(k: Kubectl, name: str) -> None:
    k("create", "namespace", name)
    k("label", "namespace", name, RESTRICTED, "pod-security.kubernetes.io/warn=restricted")


@pytest.fixture(scope="module")
def release(
    cluster: devcluster.LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    k = Kubectl(cluster.kubeconfig)
    h = Helm(tmp_path_factory.mktemp("helm-home"), cluster.kubeconfig)
    ns = f"parkfleet-{uuid.uuid4().hex[:6]}"
    restricted_namespace(k, ns)
    before = crd_names(k)
    try:
        installed = h(
            "install", "pf", str(CHART), f"--namespace={ns}", f"--set=gateway.shards={SHARDS}"
        ).stdout
        manifest = [
            d for d in yaml.safe_load_all(h("get", "manifest", "pf", f"-n={ns}").stdout) if d
        ]
        yield Release("pf", ns, h, k, before, manifest, installed.partition("NOTES:")[2])
    finally:
        h("uninstall", "pf", f"--namespace={ns}", "--wait", check=False)
        k("delete", "namespace", ns, "--wait=false", check=False)


def exists(k: Kubectl, obj: dict[str, Any], namespace: str) -> bool:
    ns = obj["metadata"].get("namespace") or namespace
    kind = obj["kind"].lower()
    group = obj["apiVersion"].rpartition("/")[0]  # "" for the core group ("v1")
    resource = f"{kind}.{group}" if group else kind
    proc = k("get", resource, obj["metadata"]["name"], f"-n={ns}", "-o=name", check=False)
    if proc.returncode != 0 and "NotFound" not in proc.stderr:
        raise AssertionError(f"kubectl get {resource}: {proc.stderr}")
    return proc.returncode == 0


def test_install_creates_every_object_in_a_restricted_namespace(release: Release) -> None:
    k, ns = release.kubectl, release.namespace
    for crd in CHART_CRDS:
        k("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    # CRDs that were not there before the install are Helm's (crds/ of the chart).
    assert set(CHART_CRDS) <= crd_names(k)
    missing = [
        f"{o['kind']}/{o['metadata']['name']}" for o in release.manifest if not exists(k, o, ns)
    ]
    assert not missing, f"not created: {missing}"
    assert {o["kind"] for o in release.manifest} >= {
        "Deployment",
        "StatefulSet",
        "Service",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "NetworkPolicy",
        "ConfigMap",
        "ClusterKopfPeering",
    }
    # The namespace really enforces the profile: a plain pod is refused ...
    plain = k("run", "plain", "--image=busybox", "--dry-run=server", f"-n={ns}", check=False)
    assert plain.returncode != 0, "the namespace does not enforce restricted Pod Security"
    assert 'violates PodSecurity "restricted' in plain.stderr, plain.stderr
    # ... yet the controllers created every pod of the chart (a refused pod would leave
    # its ReplicaSet or StatefulSet with a FailedCreate event instead).
    expected = 2 + SHARDS  # active and standby operator, the gateway shards

    def pods() -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = get_json(k, "pods", f"-n={ns}")["items"]
        return items if len(items) == expected else None

    got = until(pods, 60, f"{expected} pods in {ns}")
    failed = [
        e["message"]
        for e in get_json(k, "events", f"-n={ns}")["items"]
        if e["reason"] == "FailedCreate"
    ]
    assert not failed, failed
    # No real kubelets: the pods wait for a node (virtual cell Nodes are tainted).
    assert {p["status"].get("phase") for p in got} == {"Pending"}
    indexes = sorted(
        p["metadata"]["labels"].get("apps.kubernetes.io/pod-index", "")
        for p in got
        if p["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway"
    )
    assert indexes == [str(i) for i in range(SHARDS)], "the shard index label is missing"


def test_install_notes_say_what_to_do_next(release: Release) -> None:
    print(release.notes)
    assert f"kubectl -n {release.namespace} create secret generic pf-parkfleet-gateway-certs" in (
        release.notes
    )
    assert f"spec.gateway.shards is {SHARDS}" in release.notes
    assert "grafana_dashboard" in release.notes
    # /metrics answers only tokens allowed it: say how to grant Prometheus that.
    assert "--clusterrole=pf-parkfleet-metrics-reader --serviceaccount=" in release.notes


def test_namespaces_are_read_only_to_the_charts_identities(release: Release) -> None:
    # The node agent keeps every Namespace's labels (pools' namespaceSelector); the webhook
    # reads the one of a job. Neither may change a Namespace.
    def can(who: str, verb: str) -> bool:
        sa = f"system:serviceaccount:{release.namespace}:pf-parkfleet-{who}"
        proc = release.kubectl("auth", "can-i", verb, "namespaces", f"--as={sa}", check=False)
        return proc.stdout.strip() == "yes"

    assert [can("gateway", v) for v in ("get", "list", "watch")] == [True] * 3
    assert [can("operator", v) for v in ("get", "list", "watch")] == [True, False, False]
    for verb in ("create", "update", "patch", "delete"):
        assert not can("gateway", verb), verb
        assert not can("operator", verb), verb


def test_a_fleetpool_applies_after_install(release: Release) -> None:
    k = release.kubectl
    name = f"helm-{release.namespace}"
    pool = (
        "apiVersion: parkfleet.io/v1alpha1\nkind: FleetPool\n"
        f"metadata: {{name: {name}}}\n"
        "spec: {selector: {matchAttributes: {pool: helm}}, cellSize: 4, cells: 1}\n"
    )
    k("apply", "-f", "-", stdin=pool)
    try:
        assert get_json(k, "fleetpool", name)["spec"]["cellSize"] == 4
    finally:
        # Gone before the next test: a running operator first removes the pool's Nodes.
        k("delete", "fleetpool", name, "--timeout=60s")


def test_rendered_chart_passes_server_side_dry_run(release: Release) -> None:
    # The release fixture installed the CRDs, so the custom objects can be checked too.
    k = release.kubectl
    ns = f"pfdry-{uuid.uuid4().hex[:6]}"
    restricted_namespace(k, ns)
    try:
        out = release.helm(
            "template", "dry", str(CHART), f"--namespace={ns}", f"--set=gateway.shards={SHARDS}"
        ).stdout
        proc = k("apply", "--dry-run=server", "-f", "-", stdin=out)
        created = [line for line in proc.stdout.splitlines() if line.endswith("(server dry run)")]
        assert len(created) == len([d for d in yaml.safe_load_all(out) if d]), proc.stdout
        assert "Warning" not in proc.stderr, proc.stderr
    finally:
        k("delete", "namespace", ns, "--wait=false", check=False)


def test_uninstall_removes_what_install_created(release: Release) -> None:
    # A second release of its own, so the other tests keep theirs.
    k, h = release.kubectl, release.helm
    ns = f"pfun-{uuid.uuid4().hex[:6]}"
    restricted_namespace(k, ns)
    try:
        h("install", "gone", str(CHART), f"--namespace={ns}")
        manifest = [
            d for d in yaml.safe_load_all(h("get", "manifest", "gone", f"-n={ns}").stdout) if d
        ]
        assert all(exists(k, o, ns) for o in manifest)
        h("uninstall", "gone", f"--namespace={ns}", "--wait", "--timeout=60s")
        left = [f"{o['kind']}/{o['metadata']['name']}" for o in manifest if exists(k, o, ns)]
        assert not left, f"left behind by helm uninstall: {left}"
        assert h("list", f"-n={ns}", "-q").stdout.strip() == ""
        # CRDs stay, by Helm's design: deleting one would delete every FleetPool with it.
        assert set(CHART_CRDS) <= crd_names(k)
    finally:
        k("delete", "namespace", ns, "--wait=false", check=False)

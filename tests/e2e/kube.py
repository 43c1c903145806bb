"""Helpers for end-to-end tests that drive the whole stack with kubectl, as a user would."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort
import yaml
from prometheus_client.parser import text_string_to_metric_families

from parkfleet.devstack import DevStack

from .conftest import Kubectl

__all__ = [
    "SOLO_POOL",
    "events_of",
    "get_json",
    "https_get",
    "inference_pod",
    "local_labels",
    "onnx_labels",
    "pod_phase",
    "scrape",
    "token_kubeconfig",
    "unit_results",
    "until",
]

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")

SOLO_POOL = """
apiVersion: parkfleet.io/v1alpha1
kind: FleetPool
metadata: {name: solo}
spec:
  selector: {matchAttributes: {pool: solo}}
  cellSize: 4
  cells: 1
  gateway: {graceSeconds: 4}
"""


def until(check: Callable[[], T | None], within: float, what: str) -> T:
    """Polls ``check`` until it returns something truthy; bounded by ``within`` seconds."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out after {within:.0f}s waiting for {what}; last: {last!r}")


def get_json(k: Kubectl, *args: str) -> Any:
    return json.loads(k("get", *args, "-o", "json").stdout)


def scrape(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric ``name`` (with its ``_total`` suffix) at ``url``, as
    Prometheus would read them; none while the endpoint does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return []
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def https_get(port: int, path: str, token: str = "") -> tuple[int, str]:
    """GET ``https://127.0.0.1:PORT/PATH`` with ``token`` as bearer token (none: no
    header), as the API server or Prometheus would; the status and the body. The
    certificate is not checked: the kubelet API's and /metrics' are self-signed."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(f"https://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def pod_phase(k: Kubectl, name: str) -> str:
    return str(get_json(k, "pod", name).get("status", {}).get("phase", ""))


def events_of(k: Kubectl, name: str) -> list[tuple[str, str]]:
    got = get_json(k, "events", "--field-selector", f"involvedObject.name={name}")
    return [(e["reason"], e["message"]) for e in got["items"]]


def inference_pod(
    name: str,
    pool: str,
    items: str,
    batch: int,
    output: str = "results",
    gpu: bool = True,
    source: str = "digits/inputs.npy",
) -> str:
    """A plain pod of ``pool`` that classifies digits ``items`` of ``source`` (a path in
    its namespace's area of the data volume) into ``output``."""
    limits = '    resources: {limits: {nvidia.com/gpu: "1"}}' if gpu else ""
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  nodeSelector: {{parkfleet.io/pool: {pool}}}
  tolerations: [{{key: parkfleet.io/fleet, operator: Exists, effect: NoSchedule}}]
  containers:
  - name: infer
    image: parkfleet.io/runtime/onnxruntime:1
    env:
    - {{name: PARKFLEET_MODEL, value: digits}}
    - {{name: PARKFLEET_INPUT, value: '{source}'}}
    - {{name: PARKFLEET_ITEMS, value: "{items}"}}
    - {{name: PARKFLEET_BATCH_SIZE, value: "{batch}"}}
    - {{name: PARKFLEET_OUTPUT, value: {output}}}
{limits}
"""


def unit_results(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    """Item numbers and labels over every unit file of a job's output, in item order."""
    items, labels = [], []
    for f in sorted(directory.glob("unit-*.npz")):
        with np.load(f) as z:
            first = int(z["first_item"][0])
            items.append(np.arange(first, first + len(z["label"])))
            labels.append(z["label"])
    if not items:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.argsort([i[0] for i in items])
    return np.concatenate([items[i] for i in order]), np.concatenate([labels[i] for i in order])


def local_labels(stack: DevStack, start: int, end: int) -> np.ndarray:
    return onnx_labels(stack, np.load(stack.area() / "digits" / "inputs.npy")[start:end])


def onnx_labels(stack: DevStack, x: np.ndarray) -> np.ndarray:
    """The digits model's labels for ``x``, by local ONNX Runtime."""
    assert stack.model is not None
    session = ort.InferenceSession(str(stack.model.model_path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["label"], {"input": x})[0])


def token_kubeconfig(admin: Path, token: str, path: Path) -> Path:
    """A kubeconfig for ``admin``'s cluster that carries only a bearer token (no client
    certificate): a ServiceAccount's identity, e.g. one the chart creates."""
    cl = yaml.safe_load(admin.read_text())["clusters"][0]["cluster"]
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cl}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path.write_text(yaml.safe_dump(doc))
    return path

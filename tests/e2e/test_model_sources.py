"""Model references end to end: a pod or a job that names a location for a car to fetch
its model from is refused before any car sees it, naming the field; a job whose model is
an object in object storage runs with it, fetched by the gateway with the job's Secret.

A car never fetches from a location a user named (cars get models from their gateway, by
hash): a pod with ``PARKFLEET_MODEL_URI=file://...`` ends ``Failed`` ``UnsupportedPodSpec``
while the car of its cell is never offered anything, and the API server refuses an
InferenceJob whose ``spec.model.uri`` is not ``https://`` or ``s3://bucket/key``.

``parkfleet model push`` puts a model into a real S3 server (versitygw, ``parkfleet.devs3``)
with the keys of an object-store Secret it reads with the kubeconfig; the job pasted from
what it prints runs to completion with results equal to local ONNX Runtime's, and the same
job with a wrong sha256 fails saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from parkfleet import devs3
from parkfleet.devstack import DevStack, free_port
from parkfleet.objectstore import S3Credentials, secret_manifest

from .conftest import REPO, Kubectl
from .kube import (
    SOLO_POOL,
    events_of,
    get_json,
    inference_pod,
    pod_phase,
    scrape,
    unit_results,
    until,
)
from .test_inferencejob import condition, wait_done

pytestmark = pytest.mark.e2e

POOL = "sources"
SHA = "ab" * 32


def offers(port: int) -> dict[str, float]:
    """The car's offers by outcome (its own /metrics; its counters are all its own)."""
    got = scrape(f"http://127.0.0.1:{port}/metrics", "parkfleet_agent_offers_total")
    return {labels["decision"]: v for labels, v in got}


def test_a_pod_naming_a_file_for_its_model_fails_and_no_car_sees_it(
    stack: DevStack, kubectl: Kubectl
) -> None:
    kubectl("apply", "-f", "-", stdin=SOLO_POOL.replace("solo", POOL))
    car_metrics = free_port()
    car = stack.start_fleet(
        1, 1, POOL, prefix="src-", name="sources", extra=[f"--metrics-port={car_metrics}"]
    )
    until(
        lambda: scrape(f"http://127.0.0.1:{car_metrics}/metrics", "parkfleet_agent_connects_total"),
        60,
        "the car to connect",
    )
    until(
        lambda: get_json(kubectl, "fp", POOL).get("status", {}).get("carsEligible") == 1,
        60,
        "the pool's car to be eligible",
    )
    doc = inference_pod("reads-home", POOL, "0-4", 4).replace(
        "    - {name: PARKFLEET_MODEL, value: digits}\n",
        "    - {name: PARKFLEET_MODEL, value: digits}\n"
        "    - {name: PARKFLEET_MODEL_URI, value: 'file:///etc/hostname'}\n",
    )
    assert "file:///etc/hostname" in doc
    kubectl("apply", "-f", "-", stdin=doc)
    until(lambda: pod_phase(kubectl, "reads-home") == "Failed", 60, "the pod to fail")
    status = get_json(kubectl, "pod", "reads-home")["status"]
    assert status["reason"] == "UnsupportedPodSpec"
    assert status["message"].startswith("spec.containers[0].env[PARKFLEET_MODEL_URI]: file://")
    assert "cars never fetch from a location a pod or a job names" in status["message"]
    assert "Started" not in [r for r, _ in events_of(kubectl, "reads-home")]
    assert offers(car_metrics) == {}  # the car was never offered it

    # The control: the same pod naming the store is offered to that car and runs.
    kubectl("apply", "-f", "-", stdin=inference_pod("from-store", POOL, "0-4", 4))
    until(lambda: pod_phase(kubectl, "from-store") == "Succeeded", 60, "the pod to succeed")
    assert offers(car_metrics) == {"Accepted": 1.0}
    car.stop()
    kubectl("delete", "pod", "reads-home", "from-store")
    kubectl("delete", "fp", POOL, "--wait=false")


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (f"{{sha256: {SHA}, uri: 'http://10.0.0.1/digits.onnx'}}", "spec.model.uri"),
        (f"{{sha256: {SHA}, uri: 'file:///etc/hostname'}}", "spec.model.uri"),
        (f"{{sha256: {SHA}, uri: 's3://bucket/models/'}}", "an s3://bucket/key object"),
        (f"{{sha256: {SHA}, uri: 's3://bucket/../digits.onnx'}}", "no '.' or '..' parts"),
        (
            f"{{sha256: {SHA}, uri: 's3://bucket/digits.onnx'}}",
            "spec.objectStore.secretName is required when spec.input, spec.output, spec.model",
        ),
        ("{name: digits, uri: 'https://models.invalid/digits.onnx'}", "spec.model.uri needs"),
    ],
)
def test_a_job_naming_a_model_location_is_refused_by_the_api_server(
    stack: DevStack, kubectl: Kubectl, model: str, expected: str
) -> None:
    proc = kubectl("apply", "-f", "-", stdin=job(kubectl, "elsewhere", model), check=False)
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr
    assert "spec.model" in proc.stderr
    assert kubectl("get", "ij", "elsewhere", check=False).returncode != 0


def test_a_job_with_an_https_model_uri_and_its_sha256_is_admitted(
    stack: DevStack, kubectl: Kubectl
) -> None:
    doc = job(kubectl, "fetched", f"{{sha256: {SHA}, uri: 'https://models.invalid/d.onnx'}}")
    kubectl("apply", "--dry-run=server", "-f", "-", stdin=doc)


def job(kubectl: Kubectl, name: str, model: str, items: int = 10, extra: str = "") -> str:
    """A small InferenceJob of pool demo with this ``spec.model`` (the CRD applied first)."""
    kubectl("apply", "-f", str(REPO / "crds" / "inferencejobs.parkfleet.io.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/inferencejobs.parkfleet.io")
    return (
        f"apiVersion: parkfleet.io/v1alpha1\nkind: InferenceJob\nmetadata: {{name: {name}}}\n"
        f"spec:\n  pool: demo\n  model: {model}\n"
        f"  input: {{path: digits/inputs.npy, items: {items}}}\n"
        f"  itemsPerUnit: {min(items, 100)}\n  output: {{path: results/{name}}}\n{extra}"
    )


# ---- a model by s3:// reference, pushed with `parkfleet model push` ----------------------

BUCKET = "models"
SECRET = "model-store"


@pytest.fixture(scope="module")
def s3(stack: DevStack, kubectl: Kubectl) -> Iterator[devs3.S3Server]:
    """A real S3 server with bucket models, and its keys as object-store Secret
    model-store of namespace default (the stack's gateway runs with the admin's kubeconfig,
    so it may read it; the chart grants a gateway only the Secrets its values name)."""
    if not devs3.default_binary().exists():
        pytest.fail("versitygw is not built: run `make versitygw` (make test does)")
    server = devs3.start(stack.root / "s3")
    server.bucket(BUCKET)
    creds = S3Credentials(server.endpoint, server.access_key, server.secret_key)
    kubectl("apply", "-f", "-", stdin=json.dumps(secret_manifest(SECRET, "default", creds)))
    try:
        yield server
    finally:
        kubectl("delete", "secret", SECRET, "--ignore-not-found", check=False)
        server.stop()


def variant_of_digits(stack: DevStack, path: Path) -> Path:
    """The digits model with other bytes (a doc string naming ``path``): a digest the
    gateways' store does not have yet, and the same labels."""
    import onnx

    assert stack.model is not None
    proto = onnx.load(str(stack.model.model_path))
    proto.doc_string = f"digits, pushed to object storage by an end-to-end test as {path.name}"
    onnx.save(proto, str(path))
    return path


def model_push(stack: DevStack, tag: str) -> tuple[Path, dict[str, dict[str, str]]]:
    """``parkfleet model push MODEL --to s3://models/digits/TAG.onnx --secret
    default/model-store`` as a user runs it, MODEL a variant of digits; MODEL, and the spec
    lines the command prints, read as YAML."""
    model = variant_of_digits(stack, stack.root / f"digits-{tag}.onnx")
    to = f"s3://{BUCKET}/digits/{tag}.onnx"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "parkfleet.cli",
            "model",
            "push",
            str(model),
            "--to",
            to,
            f"--secret=default/{SECRET}",
            f"--kubeconfig={stack.kubeconfig}",
        ],
        env={**os.environ, "PYTHONPATH": str(REPO / "operator")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "The job goes in namespace default, where Secret model-store is." in proc.stdout
    block = proc.stdout[proc.stdout.index("  model:") :]
    spec: dict[str, dict[str, str]] = yaml.safe_load("spec:\n" + block)["spec"]
    return model, spec


def by_reference(kubectl: Kubectl, name: str, spec: dict[str, dict[str, str]], items: int) -> str:
    model = {**spec["model"], "outputNames": ["label"]}
    extra = f"  objectStore: {json.dumps(spec['objectStore'])}\n"
    return job(kubectl, name, json.dumps(model), items=items, extra=extra)


def test_a_pushed_model_runs_by_s3_reference_and_matches_local_onnx(
    stack: DevStack, kubectl: Kubectl, s3: devs3.S3Server
) -> None:
    model, spec = model_push(stack, "v2")
    sha = spec["model"]["sha256"]
    assert spec == {
        "model": {"uri": f"s3://{BUCKET}/digits/v2.onnx", "sha256": sha},
        "objectStore": {"secretName": SECRET},
    }
    assert not (stack.root / "store" / sha).exists()  # the gateway has yet to fetch it
    x = np.load(stack.area() / "digits" / "inputs.npy")
    kubectl("apply", "-f", "-", stdin=by_reference(kubectl, "by-s3", spec, len(x)))
    st = wait_done(kubectl, "by-s3")
    assert condition(kubectl, "by-s3", "Complete")["status"] == "True", st
    assert st["items"]["succeeded"] == len(x)
    items, labels = unit_results(stack.area() / "results" / "by-s3")
    assert np.array_equal(items, np.arange(len(x))), "every item exactly once"
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert np.array_equal(labels, session.run(["label"], {"input": x})[0])
    # Fetched once into the store, by hash, the bytes pushed; cars got it from there.
    assert (stack.root / "store" / sha).read_bytes() == model.read_bytes()
    kubectl("delete", "ij", "by-s3")


def test_a_wrong_sha256_fails_the_job_saying_so(
    stack: DevStack, kubectl: Kubectl, s3: devs3.S3Server
) -> None:
    _, spec = model_push(stack, "v3")
    right = spec["model"]["sha256"]
    wrong = "0" * 64
    spec["model"]["sha256"] = wrong
    kubectl("apply", "-f", "-", stdin=by_reference(kubectl, "wrong-sha", spec, 10))
    wait_done(kubectl, "wrong-sha", 120)
    failed = condition(kubectl, "wrong-sha", "Failed")
    assert failed["status"] == "True", failed
    assert "ModelHashMismatch" in failed["message"]
    assert f"do not have sha256 {wrong}" in failed["message"]
    assert right not in failed["message"]  # nothing of what was fetched
    assert s3.secret_key not in json.dumps(get_json(kubectl, "ij", "wrong-sha"))
    pods = get_json(kubectl, "pods", "-l", "batch.kubernetes.io/job-name=wrong-sha")["items"]
    assert pods, "the unit's pod"
    status = pods[0]["status"]
    assert status["reason"] == "ModelHashMismatch"
    assert status["message"].startswith(
        f"spec.containers[0].env[PARKFLEET_MODEL_URI]: s3://{BUCKET}/digits/v3.onnx: "
        f"the bytes fetched do not have sha256 {wrong}; not kept"
    )
    assert not (stack.root / "store" / wrong).exists()
    assert not (stack.root / "store" / right).exists()  # nothing kept
    kubectl("delete", "ij", "wrong-sha")

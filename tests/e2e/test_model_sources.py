"""Model references end to end: a pod or a job that names a location for a car to fetch
its model from is refused before any car sees it, naming the field.

A car never fetches from a location a user named (cars get models from their gateway, by
hash): a pod with ``PARKFLEET_MODEL_URI=file://...`` ends ``Failed`` ``UnsupportedPodSpec``
while the car of its cell is never offered anything, and the API server refuses an
InferenceJob whose ``spec.model.uri`` is not ``https://``.
"""

from __future__ import annotations

import pytest

from parkfleet.devstack import DevStack, free_port

from .conftest import REPO, Kubectl
from .kube import SOLO_POOL, events_of, get_json, inference_pod, pod_phase, scrape, until

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
        (f"{{sha256: {SHA}, uri: 's3://bucket/digits.onnx'}}", "s3:// is not supported yet"),
        ("{name: digits, uri: 'https://models.invalid/digits.onnx'}", "spec.model.uri needs"),
    ],
)
def test_a_job_naming_a_model_location_is_refused_by_the_api_server(
    stack: DevStack, kubectl: Kubectl, model: str, expected: str
) -> None:
    proc = kubectl("apply", "-f", "-", stdin=job(kubectl, "elsewhere", model), check=False)
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr
    assert "spec.model.uri" in proc.stderr
    assert kubectl("get", "ij", "elsewhere", check=False).returncode != 0


def test_a_job_with_an_https_model_uri_and_its_sha256_is_admitted(
    stack: DevStack, kubectl: Kubectl
) -> None:
    doc = job(kubectl, "fetched", f"{{sha256: {SHA}, uri: 'https://models.invalid/d.onnx'}}")
    kubectl("apply", "--dry-run=server", "-f", "-", stdin=doc)


def job(kubectl: Kubectl, name: str, model: str) -> str:
    """A small InferenceJob of pool demo with this ``spec.model`` (the CRD applied first)."""
    kubectl("apply", "-f", str(REPO / "crds" / "inferencejobs.parkfleet.io.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/inferencejobs.parkfleet.io")
    return (
        f"apiVersion: parkfleet.io/v1alpha1\nkind: InferenceJob\nmetadata: {{name: {name}}}\n"
        f"spec:\n  pool: demo\n  model: {model}\n  input: {{path: digits/inputs.npy, items: 10}}\n"
        f"  itemsPerUnit: 10\n  output: {{path: results/{name}}}\n"
    )

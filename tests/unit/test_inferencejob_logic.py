"""InferenceJob logic without a cluster: units, the Job it becomes, status, comparisons."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from parkfleet.api import FleetPoolSpec, InferenceJobSpec
from parkfleet.contract import DEFAULT_SPOT_CHECK_FRACTION, exit_code
from parkfleet.controller.inferencejob import job_status
from parkfleet.controller.jobs import batch_job, parse_indexes, tally
from parkfleet.nodeagent.compare import agree, majority
from parkfleet.nodeagent.translate import Unsupported, translate

OBJ: dict[str, Any] = {
    "metadata": {"name": "digits", "namespace": "ml", "uid": "u-1", "generation": 3},
    "spec": {
        "pool": "demo",
        "model": {"name": "digits"},
        "input": {"path": "digits/in.npy", "items": 1001},
        "itemsPerUnit": 250,
        "parallelism": 8,
        "output": {"path": "results/d"},
        "deadlineSeconds": 600,
        "redundancy": {"copies": 2, "compare": {"mode": "argmax", "output": "probabilities"}},
    },
}


def job_pod(job: dict[str, Any], index: int) -> dict[str, Any]:
    """A pod of ``job`` as the Job controller creates it: the template's labels, the
    completion index, and the Job as its controller."""
    template = job["spec"]["template"]
    return {
        "metadata": {
            "name": f"{job['metadata']['name']}-{index}-x7k2p",
            "namespace": job["metadata"]["namespace"],
            "labels": dict(template["metadata"]["labels"]),
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": job["metadata"]["name"],
                    "uid": "batch-job-uid",
                    "controller": True,
                }
            ],
        },
        "spec": template["spec"],
    }


def test_items_split_into_units_the_last_one_shorter() -> None:
    spec = InferenceJobSpec.from_k8s(OBJ)
    assert spec.unit_count == 5
    assert [spec.unit(i).items for i in range(5)] == [250, 250, 250, 250, 1]
    assert spec.unit_items({0, 4}) == 251
    assert spec.compare == "argmax:probabilities:0.0001"


def test_the_job_is_indexed_with_a_failure_policy_for_cars_leaving() -> None:
    job = batch_job(InferenceJobSpec.from_k8s(OBJ), "u-1")
    spec = job["spec"]
    assert (spec["completions"], spec["parallelism"], spec["completionMode"]) == (5, 5, "Indexed")
    assert spec["backoffLimitPerIndex"] == 3
    assert spec["activeDeadlineSeconds"] == 600
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "Ignore"
    assert rules[0]["onExitCodes"]["values"] == [exit_code("NoEligibleCar")]
    assert rules[1]["action"] == "FailJob"
    assert exit_code("ModelLoadFailed") in rules[1]["onExitCodes"]["values"]
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    env = {e["name"]: e["value"] for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert env["PARKFLEET_UNIT_ITEMS"] == "250"
    assert env["PARKFLEET_REDUNDANCY"] == "2"


def test_a_jobs_spot_check_fraction_reaches_its_pods_at_one_copy_only() -> None:
    single = {**OBJ, "spec": {**OBJ["spec"], "redundancy": {"spotCheckFraction": 0.25}}}
    job = batch_job(InferenceJobSpec.from_k8s(single), "u-1")
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PARKFLEET_SPOT_CHECK_FRACTION"] == "0.25"
    pod = job_pod(job, 0)
    assert translate(pod, ("onnxruntime",)).spot_check == 0.25
    # No override: the pool's fraction decides (the pod says nothing).
    plain = {**OBJ, "spec": {**OBJ["spec"], "redundancy": {}}}
    job = batch_job(InferenceJobSpec.from_k8s(plain), "u-1")
    names = [e["name"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert "PARKFLEET_SPOT_CHECK_FRACTION" not in names
    pool = FleetPoolSpec.from_k8s({"metadata": {"name": "p"}, "spec": {}})
    assert pool.spot_check_fraction == DEFAULT_SPOT_CHECK_FRACTION
    pool = FleetPoolSpec.from_k8s(
        {"metadata": {"name": "p"}, "spec": {"gateway": {"spotCheckFraction": 0}}}
    )
    assert pool.spot_check_fraction == 0.0


def test_a_job_pod_translates_to_its_unit() -> None:
    job = batch_job(InferenceJobSpec.from_k8s(OBJ), "u-1")
    pod = job_pod(job, 4)
    task = translate(pod, ("onnxruntime",))
    assert (task.unit, task.item_start, task.item_end) == (4, 1000, 1001)
    assert task.result_name == "unit-000004.npz"
    assert task.job_uid == "u-1"  # the InferenceJob's, from the operator's label
    assert (task.copies, task.compare) == (2, ("argmax", "probabilities", 0.0001))
    pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] = "5"
    with pytest.raises(Unsupported, match="starts past the last item"):
        translate(pod, ("onnxruntime",))


@pytest.mark.parametrize(
    "forge",
    [
        lambda p: p["metadata"]["labels"].pop("parkfleet.io/inference-job-uid"),
        lambda p: p["metadata"].pop("ownerReferences"),
        lambda p: p["metadata"]["ownerReferences"][0].update(controller=False),
        lambda p: p["metadata"]["ownerReferences"][0].update(kind="ReplicaSet"),
        lambda p: p["metadata"]["labels"].update({"parkfleet.io/inference-job-uid": "../x"}),
    ],
)
def test_a_pod_that_is_not_its_jobs_own_is_no_work_unit(forge: Any) -> None:
    # A plain pod copying a unit's env (PARKFLEET_UNIT_ITEMS) would write unit-NNNNNN.npz.
    pod = job_pod(batch_job(InferenceJobSpec.from_k8s(OBJ), "u-1"), 1)
    forge(pod)
    with pytest.raises(Unsupported) as err:
        translate(pod, ("onnxruntime",))
    assert err.value.field == "spec.containers[0].env[PARKFLEET_UNIT_ITEMS]"
    assert "only an InferenceJob's pods" in err.value.detail


def test_a_plain_pod_cannot_take_a_unit_files_name() -> None:
    pod = job_pod(batch_job(InferenceJobSpec.from_k8s(OBJ), "u-1"), 1)
    pod["metadata"] = {"name": "unit-000003", "namespace": "ml"}
    env = pod["spec"]["containers"][0]["env"]
    pod["spec"] = {
        "containers": [
            {
                **pod["spec"]["containers"][0],
                "env": [e for e in env if e["name"] != "PARKFLEET_UNIT_ITEMS"],
            }
        ]
    }
    with pytest.raises(Unsupported) as err:
        translate(pod, ("onnxruntime",))
    assert err.value.field == "metadata.name"
    pod["metadata"]["name"] = "unit-000003-rerun"  # any other name is a plain pod's result
    task = translate(pod, ("onnxruntime",))
    assert (task.unit, task.job_uid, task.result_name) == (None, "", "")


def test_the_job_reports_its_results_in_its_namespaces_area() -> None:
    spec = InferenceJobSpec.from_k8s(OBJ)
    assert job_status(spec, 3, None, [])["resultLocation"] == "ml/results/d"


def with_model(**model: str) -> dict[str, Any]:
    obj = json.loads(json.dumps(OBJ))
    obj["spec"]["model"] = model
    return obj


def model_env(obj: dict[str, Any]) -> dict[str, str]:
    job = batch_job(InferenceJobSpec.from_k8s(obj), "u-1")
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e["value"] for e in env if e["name"].startswith("PARKFLEET_MODEL")}


def test_a_job_passes_only_an_https_or_s3_model_uri_on() -> None:
    sha = "ab" * 32
    assert model_env(OBJ) == {"PARKFLEET_MODEL": "digits"}  # the store: no URI at all
    assert model_env(with_model(name="digits", uri="gateway:")) == {"PARKFLEET_MODEL": "digits"}
    uri = "https://models.invalid/digits.onnx"
    assert model_env(with_model(sha256=sha, uri=uri)) == {
        "PARKFLEET_MODEL_SHA256": sha,
        "PARKFLEET_MODEL_URI": uri,
    }
    assert InferenceJobSpec.from_k8s(with_model(sha256=sha, uri=uri)).model_problem is None
    obj = with_model(sha256=sha, uri="s3://models/digits/v2.onnx")
    obj["spec"]["objectStore"] = {"secretName": "store"}
    job = batch_job(InferenceJobSpec.from_k8s(obj), "u-1")
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PARKFLEET_MODEL_URI"] == "s3://models/digits/v2.onnx"
    assert env["PARKFLEET_MODEL_SHA256"] == sha
    assert env["PARKFLEET_OBJECT_STORE_SECRET"] == "store"  # the gateway fetches with it
    assert InferenceJobSpec.from_k8s(obj).model_problem is None


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ({"sha256": "ab" * 32, "uri": "file:///etc/hostname"}, "file:// is not a model source"),
        ({"sha256": "ab" * 32, "uri": "http://10.0.0.1/m.onnx"}, "http:// is not a model source"),
        ({"sha256": "ab" * 32, "uri": "s3://models/digits/"}, "names one object"),
        ({"sha256": "ab" * 32, "uri": "s3://Models/m.onnx"}, "is not a bucket name"),
        ({"name": "digits", "uri": "https://models.invalid/m.onnx"}, "needs spec.model.sha256"),
    ],
)
def test_a_job_stored_with_a_model_location_is_never_passed_on(
    model: dict[str, str], says: str
) -> None:
    # The CRD refuses these; an object stored before that rule still holds one.
    spec = InferenceJobSpec.from_k8s(with_model(**model))
    assert spec.model_problem is not None
    assert spec.model_problem.startswith("spec.model.uri")
    assert says in spec.model_problem
    if model["uri"].startswith("https://"):
        return  # the URI itself is fine: the node agent refuses it without the digest
    with pytest.raises(ValueError, match=r"is not a model source|one object|bucket name"):
        batch_job(spec, "u-1")


def test_completed_indexes_parse() -> None:
    assert parse_indexes("0-2,5,7-8") == {0, 1, 2, 5, 7, 8}
    assert parse_indexes(None) == set()


def pod(index: int, phase: str, summary: dict[str, Any] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if summary is not None:
        status["containerStatuses"] = [
            {"state": {"terminated": {"exitCode": 0, "message": json.dumps(summary)}}}
        ]
    return {
        "metadata": {"annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
        "status": status,
    }


def test_status_sums_units_items_cars_and_energy() -> None:
    spec = InferenceJobSpec.from_k8s(OBJ)
    pods = [
        pod(
            0,
            "Succeeded",
            {"items": 9, "cars": ["a", "b"], "moves": 1, "energyWh": 0.5, "disagreements": 1},
        ),
        pod(1, "Succeeded", {"items": 9, "cars": ["b"], "energyWh": 0.25, "energyModelled": True}),
        pod(2, "Running"),
        # Bound to a cell, waiting at the gateway for a car to free: ready, not running.
        {**pod(3, "Pending"), "spec": {"nodeName": "pf-eu-0"}},
        # Not bound yet: neither.
        pod(4, "Pending"),
    ]
    job = {
        **batch_job(spec, "u-1"),
        "status": {
            "completedIndexes": "0-1",
            "startTime": "2026-01-01T00:00:00Z",
            "conditions": [],
        },
    }
    st = job_status(spec, 3, job, pods)
    assert st["units"] == {"total": 5, "running": 1, "ready": 1, "succeeded": 2, "failed": 0}
    assert st["items"]["succeeded"] == 500
    assert st["progress"] == "49%"
    assert (st["carsUsed"], st["carsMoved"], st["disagreements"]) == (2, 1, 1)
    assert st["energyWh"] == 0.75
    assert st["energyModelled"] is True
    progressing = st["conditions"][0]
    assert (progressing["type"], progressing["status"], progressing["observedGeneration"]) == (
        "Progressing",
        "True",
        3,
    )


@pytest.mark.parametrize(
    "message",
    [
        '{"items": 1, "energyWh": Infinity}',
        '{"items": 1, "energyWh": 1e999}',
        '{"items": 1, "moves": "many"}',
        '{"items": -1}',
        '{"items": 1, "cars": "abc"}',
        '{"items": 1, "cars": [1, 2]}',
        '{"items": 1, "owner": "me"}',
        "[1, 2]",
        "not json",
    ],
)
def test_a_summary_that_is_not_ours_is_counted_not_added(message: str) -> None:
    good = pod(0, "Succeeded", {"items": 3, "cars": ["a"], "energyWh": 0.5})
    bad = pod(1, "Succeeded")
    bad["status"]["containerStatuses"] = [
        {"state": {"terminated": {"exitCode": 0, "message": message}}}
    ]
    t = tally([good, bad])
    assert (t.cars, t.energy_wh, t.unreadable) == ({"a"}, 0.5, 1)


def test_a_failed_pods_message_is_never_read_as_a_summary() -> None:
    failed = pod(0, "Failed")
    summary = {"items": 3, "cars": ["x"], "energyWh": 99.0}
    failed["status"]["containerStatuses"] = [
        {"state": {"terminated": {"exitCode": 1, "message": json.dumps(summary)}}}
    ]
    t = tally([failed])
    assert (t.cars, t.energy_wh, t.unreadable) == (set(), 0.0, 0)


def test_failed_job_carries_the_loader_error() -> None:
    spec = InferenceJobSpec.from_k8s(OBJ)
    broken = {
        "status": {
            "containerStatuses": [
                {
                    "state": {
                        "terminated": {
                            "exitCode": exit_code("ModelLoadFailed"),
                            "reason": "ModelLoadFailed",
                            "message": "InvalidProtobuf: not a model",
                        }
                    }
                }
            ]
        }
    }
    assert tally([broken]).failure == "ModelLoadFailed: InvalidProtobuf: not a model"
    job = {
        "status": {
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "PodFailurePolicy",
                    "message": "Container infer failed",
                }
            ]
        }
    }
    st = job_status(spec, 3, job, [broken])
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True"
    assert "InvalidProtobuf: not a model" in failed["message"]


def test_comparisons_have_a_tolerance_and_a_majority() -> None:
    a = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)
    b = a + np.float32(1e-6)
    c = a[:, ::-1]
    assert agree(a, b, "argmax", 0)
    assert agree(a, b, "absolute", 1e-5)
    assert not agree(a, b, "absolute", 1e-7)
    assert agree(a, b, "relative", 1e-4)
    assert not agree(a, c, "argmax", 0)
    assert not agree(a, a[:1], "argmax", 0)
    assert majority([c, a, b], "argmax", 0) == 1
    assert majority([a, c], "argmax", 0) is None

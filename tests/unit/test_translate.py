"""Pod → task translation: what cars can do, and a field-naming refusal for the rest."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from parkfleet.nodeagent.translate import Unsupported, runtime_of, translate

RUNTIMES = ("onnxruntime",)


def pod(**container: Any) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": "infer",
        "image": "parkfleet.io/runtime/onnxruntime:1",
        "env": [
            {"name": "PARKFLEET_MODEL", "value": "digits"},
            {"name": "PARKFLEET_INPUT", "value": "digits/inputs.npy"},
            {"name": "PARKFLEET_ITEMS", "value": "10-42"},
            {"name": "PARKFLEET_BATCH_SIZE", "value": "8"},
            {"name": "PARKFLEET_OUTPUT", "value": "out/sample"},
        ],
    }
    c.update(container)
    return {"metadata": {"name": "p", "namespace": "default"}, "spec": {"containers": [c]}}


def test_a_plain_inference_pod_translates() -> None:
    task = translate(pod(), RUNTIMES)
    assert task.runtime == "onnxruntime"
    assert (task.model_name, task.input_path, task.output_dir) == (
        "digits",
        "digits/inputs.npy",
        "out/sample",
    )
    assert (task.item_start, task.item_end, task.batch_size) == (10, 42, 8)
    assert task.model_uri == "gateway:"


def test_annotations_give_defaults_that_env_overrides() -> None:
    p = pod()
    p["metadata"]["annotations"] = {"parkfleet.io/batch-size": "64", "parkfleet.io/items": "5"}
    p["spec"]["containers"][0]["env"] = [
        e for e in p["spec"]["containers"][0]["env"] if e["name"] != "PARKFLEET_ITEMS"
    ]
    task = translate(p, RUNTIMES)
    assert task.batch_size == 8  # env wins
    assert (task.item_start, task.item_end) == (0, 5)  # from the annotation


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (
            lambda p: p["spec"].update(volumes=[{"name": "h", "hostPath": {"path": "/"}}]),
            "spec.volumes[0].hostPath",
        ),
        (lambda p: p["spec"].update(hostNetwork=True), "spec.hostNetwork"),
        (
            lambda p: p["spec"]["containers"][0].update(securityContext={"privileged": True}),
            "spec.containers[0].securityContext.privileged",
        ),
        (
            lambda p: p["spec"]["containers"][0].update(ports=[{"containerPort": 80}]),
            "spec.containers[0].ports",
        ),
        (
            lambda p: p["spec"]["containers"][0].update(image="python:3.11"),
            "spec.containers[0].image",
        ),
        (
            lambda p: p["spec"]["containers"].append({"name": "x", "image": "onnxruntime"}),
            "spec.containers",
        ),
        (
            lambda p: p["spec"]["containers"][0].update(livenessProbe={"exec": {"command": ["x"]}}),
            "spec.containers[0].livenessProbe",
        ),
        (
            lambda p: p["spec"]["containers"][0]["env"].append(
                {"name": "PARKFLEET_INPUT", "value": "../../etc/passwd"}
            ),
            "spec.containers[0].env[PARKFLEET_INPUT]",
        ),
        (
            lambda p: p["spec"]["containers"][0]["env"].append(
                {"name": "PARKFLEET_ITEMS", "value": "9-3"}
            ),
            "spec.containers[0].env[PARKFLEET_ITEMS]",
        ),
        (
            lambda p: p["spec"]["containers"][0]["env"].append(
                {"name": "PARKFLEET_BATCH_SIZE", "value": "lots"}
            ),
            "spec.containers[0].env[PARKFLEET_BATCH_SIZE]",
        ),
        (lambda p: p["spec"]["containers"][0].update(env=[]), "spec.containers[0].env"),
    ],
)
def test_what_cars_cannot_honour_is_refused_naming_the_field(mutate: Any, field: str) -> None:
    p = copy.deepcopy(pod())
    mutate(p)
    with pytest.raises(Unsupported) as err:
        translate(p, RUNTIMES)
    assert err.value.field == field
    assert str(err.value).startswith(field)


def test_runtime_comes_from_the_image_name() -> None:
    assert runtime_of("onnxruntime") == "onnxruntime"
    assert runtime_of("registry.example:5000/parkfleet/onnxruntime:1.19") == "onnxruntime"
    assert runtime_of("tensorflow/serving") == "serving"
    assert runtime_of("") == ""


def test_the_automatic_service_account_volume_is_accepted_but_secrets_are_not() -> None:
    p = pod(volumeMounts=[{"name": "kube-api-access-x", "mountPath": "/var/run/secrets"}])
    p["spec"]["volumes"] = [{"name": "kube-api-access-x", "projected": {"sources": []}}]
    translate(p, RUNTIMES)
    p["spec"]["volumes"].append({"name": "creds", "secret": {"secretName": "s"}})
    p["spec"]["containers"][0]["volumeMounts"].append({"name": "creds", "mountPath": "/c"})
    with pytest.raises(Unsupported) as err:
        translate(p, RUNTIMES)
    assert err.value.field == "spec.volumes[1].secret"

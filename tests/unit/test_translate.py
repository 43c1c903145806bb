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
    assert task.model_uri == ""  # no URI: the gateway's store


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
                {"name": "PARKFLEET_INPUT", "value": "/data/other-namespace/inputs.npy"}
            ),
            "spec.containers[0].env[PARKFLEET_INPUT]",
        ),
        (
            lambda p: p["spec"]["containers"][0]["env"].append(
                {"name": "PARKFLEET_INPUT", "value": "results/job/.spool/task/0.bin"}
            ),
            "spec.containers[0].env[PARKFLEET_INPUT]",
        ),
        (
            lambda p: p["spec"]["containers"][0]["env"].append(
                {"name": "PARKFLEET_OUTPUT", "value": "../other-namespace/results"}
            ),
            "spec.containers[0].env[PARKFLEET_OUTPUT]",
        ),
        (
            lambda p: p["spec"]["containers"][0]["env"].append(
                {"name": "PARKFLEET_OUTPUT", "value": "/results"}
            ),
            "spec.containers[0].env[PARKFLEET_OUTPUT]",
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
        (
            lambda p: p["spec"]["containers"][0]["env"].append(
                {"name": "PARKFLEET_SPOT_CHECK_FRACTION", "value": "1.5"}
            ),
            "spec.containers[0].env[PARKFLEET_SPOT_CHECK_FRACTION]",
        ),
        (
            lambda p: p["spec"]["containers"][0]["env"].append(
                {"name": "PARKFLEET_SPOT_CHECK_FRACTION", "value": "nan"}
            ),
            "spec.containers[0].env[PARKFLEET_SPOT_CHECK_FRACTION]",
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


SHA = "ab" * 32
URI_FIELD = "spec.containers[0].env[PARKFLEET_MODEL_URI]"


def model_pod(uri: str | None, sha: str | None = SHA, name: str | None = None) -> dict[str, Any]:
    """A pod whose model is given by these env values (None: not set)."""
    p = pod()
    env = [e for e in p["spec"]["containers"][0]["env"] if e["name"] != "PARKFLEET_MODEL"]
    for key, value in (
        ("PARKFLEET_MODEL", name),
        ("PARKFLEET_MODEL_SHA256", sha),
        ("PARKFLEET_MODEL_URI", uri),
    ):
        if value is not None:
            env.append({"name": key, "value": value})
    p["spec"]["containers"][0]["env"] = env
    return p


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("file:///etc/passwd", "file:// is not a model source"),
        ("FILE:///etc/hostname", "file:// is not a model source"),
        ("http://192.168.1.10/model.onnx", "http:// is not a model source"),
        ("ftp://models.invalid/m.onnx", "ftp:// is not a model source"),
        ("/etc/hostname", "a path (not a URI)"),
        ("models/digits.onnx", "a path (not a URI)"),
        ("s3://bucket/models/", "names one object: s3://bucket/key"),
        ("s3://bucket", "names one object: s3://bucket/key"),
        ("s3://My_Bucket/digits.onnx", "is not a bucket name"),
        ("s3://bucket/a/../digits.onnx", "'.' or '..' part"),
        ("s3://bucket/digits.onnx?versionId=1", "no query or fragment"),
        ("https:///digits.onnx", "needs a host"),
        ("https://user:secret@models.invalid/digits.onnx", "credentials"),
        ("https://models.invalid/a b.onnx", "spaces"),
        ("https://models.invalid:port/digits.onnx", "port"),
    ],
)
def test_a_model_location_is_refused_naming_the_field(uri: str, says: str) -> None:
    with pytest.raises(Unsupported) as err:
        translate(model_pod(uri), RUNTIMES)
    assert err.value.field == URI_FIELD
    assert says in err.value.detail, err.value.detail
    assert str(err.value).startswith(URI_FIELD)


def test_file_and_url_refusals_say_that_cars_never_fetch() -> None:
    for uri in ("file:///etc/passwd", "http://router.local/admin"):
        with pytest.raises(Unsupported) as err:
            translate(model_pod(uri), RUNTIMES)
        assert "cars never fetch from a location a pod or a job names" in err.value.detail


def test_an_annotation_cannot_name_a_location_either() -> None:
    p = model_pod(None)
    p["metadata"]["annotations"] = {"parkfleet.io/model-uri": "file:///etc/shadow"}
    with pytest.raises(Unsupported) as err:
        translate(p, RUNTIMES)
    assert err.value.field == URI_FIELD


def test_an_https_uri_with_its_sha256_is_taken() -> None:
    uri = "https://models.invalid/digits.onnx?X-Signature=abc"
    task = translate(model_pod(uri, sha=SHA.upper()), RUNTIMES)
    assert (task.model_uri, task.model_sha256, task.model_name) == (uri, SHA, "")


def test_an_s3_uri_is_taken_with_the_pods_object_store_secret() -> None:
    uri = "s3://models/digits/v2.onnx"
    p = model_pod(uri)
    p["spec"]["containers"][0]["env"].append(
        {"name": "PARKFLEET_OBJECT_STORE_SECRET", "value": "store"}
    )
    task = translate(p, RUNTIMES)
    assert (task.model_uri, task.model_sha256, task.object_store_secret) == (uri, SHA, "store")


def test_an_s3_uri_without_an_object_store_secret_is_refused_naming_the_field() -> None:
    with pytest.raises(Unsupported) as err:
        translate(model_pod("s3://models/digits/v2.onnx"), RUNTIMES)
    assert err.value.field == URI_FIELD
    assert "an s3:// model needs PARKFLEET_OBJECT_STORE_SECRET" in err.value.detail
    with pytest.raises(Unsupported) as err:
        translate(model_pod("s3://models/digits/v2.onnx", sha=None), RUNTIMES)
    assert err.value.field == "spec.containers[0].env[PARKFLEET_MODEL_SHA256]"


def test_an_https_uri_without_its_sha256_is_refused() -> None:
    for name in (None, "digits"):
        with pytest.raises(Unsupported) as err:
            translate(
                model_pod("https://models.invalid/digits.onnx", sha=None, name=name), RUNTIMES
            )
        assert err.value.field == "spec.containers[0].env[PARKFLEET_MODEL_SHA256]"
        assert "required with PARKFLEET_MODEL_URI" in err.value.detail


def test_the_store_uri_of_older_pods_means_no_uri() -> None:
    task = translate(model_pod("gateway:", sha=None, name="digits"), RUNTIMES)
    assert (task.model_uri, task.model_name) == ("", "digits")

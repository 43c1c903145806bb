"""`parkfleet model push`: its target, its credentials from the environment, its checks of
the file and the block it prints (the upload itself: tests/integration/test_model_push.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from parkfleet.models.push import (
    Pushed,
    PushError,
    check_model,
    credentials_from_env,
    model_block,
    target_of,
)
from parkfleet.objectstore import S3Credentials, S3Location

ENV = {
    "AWS_ENDPOINT_URL": "https://s3.example.com",
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI",
}


def test_the_target_is_one_object() -> None:
    assert target_of("s3://models/digits/v1.onnx") == S3Location("models", "digits/v1.onnx")
    for uri, says in [
        ("s3://models/", "name the object"),
        ("s3://models", "name the object"),
        ("https://models.example.com/x.onnx", "is not an s3:// URI"),
        ("s3://Models/x.onnx", "is not a bucket name"),
        ("s3://models/a/../x.onnx", "'.' or '..' part"),
    ]:
        with pytest.raises(PushError, match=r"^--to ") as err:
            target_of(uri)
        assert says in str(err.value)


def test_credentials_come_from_the_aws_variables() -> None:
    assert credentials_from_env(ENV) == S3Credentials(
        "https://s3.example.com", "AKIDEXAMPLE", "wJalrXUtnFEMI", "us-east-1"
    )
    both = {**ENV, "AWS_ENDPOINT_URL_S3": "http://minio:9000", "AWS_REGION": "eu-west-1"}
    assert credentials_from_env(both) == S3Credentials(
        "http://minio:9000", "AKIDEXAMPLE", "wJalrXUtnFEMI", "eu-west-1"
    )


def test_missing_or_bad_variables_are_named_and_no_key_is_shown() -> None:
    with pytest.raises(PushError) as err:
        credentials_from_env({"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE"})
    assert str(err.value) == (
        "no credentials: give --secret NAMESPACE/NAME, or set AWS_ENDPOINT_URL, "
        "AWS_SECRET_ACCESS_KEY"
    )
    with pytest.raises(PushError) as err:
        credentials_from_env({**ENV, "AWS_ENDPOINT_URL": "s3.example.com"})
    assert "AWS_ENDPOINT_URL" in str(err.value)
    assert "is not an http:// or https:// URL" in str(err.value)
    assert "wJalrXUtnFEMI" not in str(err.value)


def test_a_missing_file_or_one_that_is_no_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PushError, match="no such file"):
        check_model(tmp_path / "nope.onnx")
    (tmp_path / "text.onnx").write_text("not a model")
    with pytest.raises(PushError, match="not an ONNX model ONNX Runtime loads"):
        check_model(tmp_path / "text.onnx")


def test_the_block_is_yaml_for_a_jobs_spec() -> None:
    pushed = Pushed("s3://models/digits/v1.onnx", "ab" * 32, 100)
    spec = yaml.safe_load("spec:\n" + model_block(pushed, "store"))["spec"]
    assert spec == {
        "model": {"uri": "s3://models/digits/v1.onnx", "sha256": "ab" * 32},
        "objectStore": {"secretName": "store"},
    }
    unnamed = yaml.safe_load("spec:\n" + model_block(pushed))["spec"]
    assert unnamed["objectStore"]["secretName"] == "<a parkfleet.io/object-store Secret>"

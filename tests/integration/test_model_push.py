"""`parkfleet model push` against a real S3 server (versitygw, ``parkfleet.devs3``): the
object is the file, byte for byte (a large one in parts), the sha256 printed is its digest,
the block printed is what the gateway's store fetches and verifies; a missing bucket or
wrong keys fail the command with a message that shows no key.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from parkfleet import devs3
from parkfleet.gateway.modelfetch import FetchConfig
from parkfleet.gateway.modelstore import ModelStore
from parkfleet.objectstore import S3Credentials
from tests.integration.car_env import REPO, digits

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devs3.S3Server]:
    if not devs3.default_binary().exists():
        pytest.fail("versitygw is not built: run `make versitygw` (make test does)")
    server = devs3.start(tmp_path_factory.mktemp("s3"))
    server.bucket("models")
    try:
        yield server
    finally:
        server.stop()


def push(s3: devs3.S3Server, *args: str, secret: str = "") -> subprocess.CompletedProcess[str]:
    """``parkfleet model push ARGS`` with the server's endpoint and keys in the environment."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "operator"),
        "AWS_ENDPOINT_URL": s3.endpoint,
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": secret or s3.secret_key,
    }
    return subprocess.run(
        [sys.executable, "-m", "parkfleet.cli", "model", "push", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def printed_spec(stdout: str) -> dict[str, dict[str, str]]:
    """The lines the command prints for the job's spec, read as YAML."""
    block = stdout[stdout.index("  model:") :]
    spec: dict[str, dict[str, str]] = yaml.safe_load("spec:\n" + block)["spec"]
    return spec


def large_model(path: Path) -> Path:
    """An ONNX model of about 20 MB (several upload parts): y = x + w."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = 5_000_000
    w = numpy_helper.from_array(np.arange(n, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


async def test_a_pushed_model_is_the_file_and_the_gateway_fetches_what_was_printed(
    s3: devs3.S3Server, tmp_path: Path
) -> None:
    model = digits().model_path
    proc = push(s3, str(model), "--to", "s3://models/digits/v1.onnx")
    assert proc.returncode == 0, proc.stderr
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert f"sha256: {sha}" in proc.stdout
    assert "inputs: input; outputs: label, probabilities" in proc.stdout
    spec = printed_spec(proc.stdout)
    assert spec["model"] == {"uri": "s3://models/digits/v1.onnx", "sha256": sha}
    assert "objectStore" in spec
    assert (s3.root / "models" / "digits" / "v1.onnx").read_bytes() == model.read_bytes()

    store = ModelStore(tmp_path / "store", FetchConfig())
    creds = S3Credentials(s3.endpoint, s3.access_key, s3.secret_key)
    info = await store.resolve(credentials=creds, **spec["model"])
    assert (info.ref.sha256, info.input_name) == (sha, "input")


def test_a_large_model_goes_in_parts_and_arrives_whole(s3: devs3.S3Server, tmp_path: Path) -> None:
    model = large_model(tmp_path / "large.onnx")
    proc = push(s3, str(model), "--to", "s3://models/large.onnx")
    assert proc.returncode == 0, proc.stderr
    data = model.read_bytes()
    assert len(data) > 2 * 8 * 1024 * 1024  # more than two parts
    assert f"sha256: {hashlib.sha256(data).hexdigest()}" in proc.stdout
    assert (s3.root / "models" / "large.onnx").read_bytes() == data


def test_bad_input_and_refused_uploads_fail_saying_why(s3: devs3.S3Server, tmp_path: Path) -> None:
    model = str(digits().model_path)
    (tmp_path / "notes.onnx").write_text("not a model")
    cases = [
        ((str(tmp_path / "nope.onnx"), "--to", "s3://models/x.onnx"), "", "no such file"),
        ((str(tmp_path / "notes.onnx"), "--to", "s3://models/x.onnx"), "", "not an ONNX model"),
        ((model, "--to", "s3://models/"), "", "name the object"),
        ((model, "--to", "s3://no-such-bucket/x.onnx"), "", "no such bucket"),
        ((model, "--to", "s3://models/x.onnx"), "wrong-secret", "refused the keys"),
    ]
    for args, secret, says in cases:
        proc = push(s3, *args, secret=secret)
        assert proc.returncode == 1, (args, proc.stdout)
        assert proc.stderr.startswith("parkfleet model push: "), proc.stderr
        assert says in proc.stderr, proc.stderr
        assert s3.secret_key not in proc.stderr
        assert "wrong-secret" not in proc.stderr
        assert proc.stdout == ""
    assert not (s3.root / "models" / "x.onnx").exists()

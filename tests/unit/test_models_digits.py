"""The digits model: built, deterministic, cached, and a real classifier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from parkfleet.models.digits import build_digits, load_digits_model


def test_build_is_cached_deterministic_and_accurate(tmp_path: Path) -> None:
    a = build_digits(tmp_path / "a")
    assert a.accuracy > 0.9
    mtime = a.model_path.stat().st_mtime_ns
    assert build_digits(tmp_path / "a") == a  # cached: nothing rewritten
    assert a.model_path.stat().st_mtime_ns == mtime
    b = build_digits(tmp_path / "b")
    assert b.sha256 == a.sha256  # same seed, same bytes

    session = ort.InferenceSession(str(a.model_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["label", "probabilities"]
    x, y = a.test_inputs(), a.test_labels()
    assert x.dtype == np.float32
    assert x.shape[1] == 64
    label, probs = session.run(None, {"input": x})
    assert probs.shape == (len(x), 10)
    np.testing.assert_array_equal(label, probs.argmax(axis=1))
    assert (label == y).mean() > 0.9

    a.model_path.write_bytes(b"tampered")
    assert load_digits_model(tmp_path / "a") is None  # a changed file is not "cached"

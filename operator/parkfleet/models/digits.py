"""The digits classifier: a small real ONNX model built from scikit-learn's bundled data.

``build_digits(out_dir)`` trains a small multi-layer perceptron on ``load_digits`` (bundled
with scikit-learn, so nothing is downloaded), converts it to ONNX with skl2onnx and writes:

- ``digits.onnx``: input ``input`` float32 [N, 64] (pixel intensities scaled to 0..1),
  outputs ``label`` int64 [N] and ``probabilities`` float32 [N, 10];
- ``digits.json``: the manifest (sha256, names, shapes, accuracy);
- ``digits_inputs.npy`` / ``digits_labels.npy``: the held-out test split.

The build is deterministic (fixed seed) and cached: when the files exist and the manifest
matches them, nothing is rebuilt.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from parkfleet.files import write_atomic
from parkfleet.models.builds import (
    INPUT_NAME,
    OUTPUT_NAMES,
    BuiltModel,
    built_fields,
    read_manifest,
    write_build,
)

__all__ = [
    "BUILDER_VERSION",
    "INPUT_NAME",
    "MODEL_FILE",
    "OUTPUT_NAMES",
    "DigitsModel",
    "add_parser",
    "build_digits",
    "load_digits_model",
]

# Bump when the training recipe changes, so cached builds are redone.
BUILDER_VERSION = 1
MODEL_FILE = "digits.onnx"
MANIFEST_FILE = "digits.json"
INPUTS_FILE = "digits_inputs.npy"
LABELS_FILE = "digits_labels.npy"
FEATURES = 64
CLASSES = 10


@dataclass(frozen=True)
class DigitsModel(BuiltModel):
    """A built digits model on disk (see :class:`BuiltModel` for the common attributes).

    Attributes:
        accuracy: Accuracy on the held-out split, measured at build time.
    """

    accuracy: float

    def test_inputs(self) -> npt.NDArray[np.float32]:
        """Returns the held-out inputs, float32 [N, 64]."""
        arr: npt.NDArray[np.float32] = np.load(self.directory / INPUTS_FILE)
        return arr

    def test_labels(self) -> npt.NDArray[np.int64]:
        """Returns the held-out labels, int64 [N]."""
        arr: npt.NDArray[np.int64] = np.load(self.directory / LABELS_FILE)
        return arr


def _npy_bytes(arr: npt.NDArray[Any]) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def load_digits_model(directory: Path) -> DigitsModel | None:
    """Loads a built model, or returns None when it is missing, stale or altered.

    Args:
        directory: The folder ``build_digits`` wrote.

    Returns:
        The model when every file is there and the ONNX file's sha256 matches the manifest.
    """
    model_path = directory / MODEL_FILE
    manifest = read_manifest(
        directory / MANIFEST_FILE,
        model_path,
        BUILDER_VERSION,
        needed=(directory / INPUTS_FILE, directory / LABELS_FILE),
    )
    if manifest is None:
        return None
    return DigitsModel(
        **built_fields(manifest, directory, model_path), accuracy=float(manifest["accuracy"])
    )


def build_digits(out_dir: Path, *, seed: int = 0, force: bool = False) -> DigitsModel:
    """Builds the digits model into ``out_dir`` unless an intact build is already there.

    Args:
        out_dir: Folder to write into (created if missing).
        seed: Seed for the split and the training.
        force: Rebuild even when a cached build exists.

    Returns:
        The built (or cached) model.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if not force:
        cached = load_digits_model(out_dir)
        if cached is not None:
            return cached

    # Heavy imports only when building: `parkfleet --help` must stay fast.
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    x_all, y_all = load_digits(return_X_y=True)
    x_all = (x_all / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x_all, y_all, test_size=0.25, random_state=seed, stratify=y_all
    )
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=400, random_state=seed)
    clf.fit(x_train, y_train)
    accuracy = float(clf.score(x_test, y_test))
    onx = to_onnx(
        clf,
        initial_types=[(INPUT_NAME, FloatTensorType([None, FEATURES]))],
        options={"zipmap": False},
        target_opset={"": 17, "ai.onnx.ml": 1},
    )
    write_atomic(out_dir / INPUTS_FILE, _npy_bytes(np.ascontiguousarray(x_test, np.float32)))
    write_atomic(out_dir / LABELS_FILE, _npy_bytes(np.asarray(y_test, dtype=np.int64)))
    write_build(
        out_dir / MODEL_FILE,
        out_dir / MANIFEST_FILE,
        onx.SerializeToString(),
        builder_version=BUILDER_VERSION,
        seed=seed,
        input_shape=(FEATURES,),
        classes=CLASSES,
        test_items=len(y_test),
        accuracy=accuracy,
    )
    model = load_digits_model(out_dir)
    if model is None:  # pragma: no cover - only if the disk changed under us
        raise RuntimeError(f"digits model build in {out_dir} did not verify")
    return model


def _cmd_build(args: argparse.Namespace) -> int:
    model = build_digits(Path(args.out), seed=args.seed, force=args.force)
    print(
        f"digits model: {model.model_path} sha256={model.sha256} "
        f"size={model.size_bytes} accuracy={model.accuracy:.4f}"
    )
    return 0


def add_parser(sub: Any) -> None:
    """Adds ``parkfleet model build --out DIR``."""
    build = sub.add_parser("build", help="build the digits ONNX model (cached)")
    build.add_argument("--out", required=True, help="output folder, e.g. .cache/models")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--force", action="store_true", help="rebuild even when cached")
    build.set_defaults(func=_cmd_build)

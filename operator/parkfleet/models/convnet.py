"""A small convolutional image classifier whose cost per item is like a car's real workloads.

The digits model costs about 0.2 µs per item, so a benchmark on it measures the car link,
not the car's compute. A car's real tasks are vision and language models costing
milliseconds per item. ``build_convnet(out_dir)`` writes a CIFAR-sized CNN (3x32x32 in,
three conv/ReLU/max-pool stages of 64, 128 and 256 channels, two dense layers, 10
classes; about 80 MFLOP per item, roughly 1 ms per item on one CPU core) with
fixed-seed random weights — nothing is trained or downloaded:

- ``convnet.onnx``: input ``input`` float32 [N, 3, 32, 32], outputs ``label`` int64 [N]
  and ``probabilities`` float32 [N, 10] (the digits model's output names);
- ``convnet.json``: the manifest (sha256, names, shapes, MFLOP per item).

Inputs for it come from :meth:`ConvNetModel.inputs` (deterministic, seeded). The build is
deterministic and cached like the digits model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

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
    "INPUT_SHAPE",
    "MODEL_FILE",
    "OUTPUT_NAMES",
    "ConvNetModel",
    "build_convnet",
    "load_convnet_model",
]

# Bump when the architecture or the weights' recipe changes, so cached builds are redone.
BUILDER_VERSION = 1
MODEL_FILE = "convnet.onnx"
MANIFEST_FILE = "convnet.json"
INPUT_SHAPE = (3, 32, 32)
CLASSES = 10
# Output channels of the conv stages (3x3, padding 1, each followed by ReLU and 2x2 max-pool).
CHANNELS = (64, 128, 256)
HIDDEN = 256


@dataclass(frozen=True)
class ConvNetModel(BuiltModel):
    """A built convnet on disk (see :class:`BuiltModel` for the common attributes).

    Attributes:
        mflop_per_item: Floating-point operations per item, in millions.
    """

    mflop_per_item: float

    def inputs(self, items: int, seed: int = 0) -> npt.NDArray[np.float32]:
        """Deterministic images, float32 [items, 3, 32, 32] in 0..1."""
        rng = np.random.default_rng(seed)
        return rng.random((items, *INPUT_SHAPE), dtype=np.float32)


def _mflop() -> float:
    flop = 0
    channels, side = INPUT_SHAPE[0], INPUT_SHAPE[1]
    for out in CHANNELS:
        flop += 2 * side * side * out * channels * 9
        channels, side = out, side // 2
    flop += 2 * channels * side * side * HIDDEN + 2 * HIDDEN * CLASSES
    return flop / 1e6


def load_convnet_model(directory: Path) -> ConvNetModel | None:
    """Loads a built model, or returns None when it is missing, stale or altered."""
    model_path = directory / MODEL_FILE
    manifest = read_manifest(directory / MANIFEST_FILE, model_path, BUILDER_VERSION)
    if manifest is None:
        return None
    return ConvNetModel(
        **built_fields(manifest, directory, model_path),
        mflop_per_item=float(manifest["mflop_per_item"]),
    )


def _model_bytes(seed: int) -> bytes:
    # Heavy import only when building.
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def weight(name: str, shape: tuple[int, ...], fan_in: int) -> str:
        # He initialisation: activations keep their scale through the ReLUs.
        w = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
        inits.append(numpy_helper.from_array(w, name))
        return name

    def bias(name: str, size: int) -> str:
        inits.append(numpy_helper.from_array(np.zeros(size, np.float32) + 0.01, name))
        return name

    x = INPUT_NAME
    channels, side = INPUT_SHAPE[0], INPUT_SHAPE[1]
    for i, out in enumerate(CHANNELS):
        w = weight(f"conv{i}.w", (out, channels, 3, 3), channels * 9)
        b = bias(f"conv{i}.b", out)
        nodes += [
            helper.make_node("Conv", [x, w, b], [f"conv{i}"], kernel_shape=[3, 3], pads=[1] * 4),
            helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]),
            helper.make_node(
                "MaxPool", [f"relu{i}"], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2]
            ),
        ]
        x, channels, side = f"pool{i}", out, side // 2
    flat = channels * side * side
    nodes += [
        helper.make_node("Flatten", [x], ["flat"], axis=1),
        helper.make_node(
            "Gemm", ["flat", weight("fc0.w", (flat, HIDDEN), flat), bias("fc0.b", HIDDEN)], ["fc0"]
        ),
        helper.make_node("Relu", ["fc0"], ["hidden"]),
        helper.make_node(
            "Gemm",
            ["hidden", weight("fc1.w", (HIDDEN, CLASSES), HIDDEN), bias("fc1.b", CLASSES)],
            ["logits"],
        ),
        helper.make_node("Softmax", ["logits"], [OUTPUT_NAMES[1]], axis=1),
        helper.make_node("ArgMax", ["logits"], [OUTPUT_NAMES[0]], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "convnet",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, *INPUT_SHAPE])],
        [
            helper.make_tensor_value_info(OUTPUT_NAMES[0], TensorProto.INT64, [None]),
            helper.make_tensor_value_info(OUTPUT_NAMES[1], TensorProto.FLOAT, [None, CLASSES]),
        ],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="parkfleet"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def build_convnet(out_dir: Path, *, seed: int = 0, force: bool = False) -> ConvNetModel:
    """Builds the convnet into ``out_dir`` unless an intact build is already there.

    Args:
        out_dir: Folder to write into (created if missing).
        seed: Seed for the weights.
        force: Rebuild even when a cached build exists.

    Returns:
        The built (or cached) model.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if not force:
        cached = load_convnet_model(out_dir)
        if cached is not None:
            return cached
    write_build(
        out_dir / MODEL_FILE,
        out_dir / MANIFEST_FILE,
        _model_bytes(seed),
        builder_version=BUILDER_VERSION,
        seed=seed,
        input_shape=INPUT_SHAPE,
        classes=CLASSES,
        mflop_per_item=round(_mflop(), 3),
    )
    model = load_convnet_model(out_dir)
    if model is None:  # pragma: no cover - only if the disk changed under us
        raise RuntimeError(f"convnet build in {out_dir} did not verify")
    return model

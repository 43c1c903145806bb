"""What every locally built classifier shares: its manifest, how a build is written and read."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parkfleet.files import write_atomic

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "BuiltModel",
    "built_fields",
    "read_manifest",
    "sha256_file",
    "write_build",
]

INPUT_NAME = "input"
OUTPUT_NAMES = ("label", "probabilities")


@dataclass(frozen=True)
class BuiltModel:
    """A built model on disk.

    Attributes:
        directory: Where the files are.
        model_path: The ONNX file.
        sha256: Hex sha256 of the ONNX file.
        size_bytes: Size of the ONNX file.
        input_name: The model's input name.
        output_names: The model's output names, in order.
    """

    directory: Path
    model_path: Path
    sha256: str
    size_bytes: int
    input_name: str
    output_names: tuple[str, ...]


def sha256_file(path: Path) -> str:
    """Returns the hex sha256 of a file, read in blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(
    manifest_path: Path, model_path: Path, builder_version: int, needed: Sequence[Path] = ()
) -> dict[str, Any] | None:
    """A built model's manifest, or None when a file is missing, the build is from another
    builder version, or the model file's sha256 is not the manifest's (altered)."""
    if not all(p.is_file() for p in (manifest_path, model_path, *needed)):
        return None
    try:
        manifest: dict[str, Any] = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("builder_version") != builder_version:
        return None
    if sha256_file(model_path) != manifest.get("sha256"):
        return None
    return manifest


def built_fields(manifest: dict[str, Any], directory: Path, model_path: Path) -> dict[str, Any]:
    """The :class:`BuiltModel` fields a verified manifest gives."""
    return {
        "directory": directory,
        "model_path": model_path,
        "sha256": str(manifest["sha256"]),
        "size_bytes": int(manifest["size_bytes"]),
        "input_name": str(manifest["input"]["name"]),
        "output_names": tuple(str(o["name"]) for o in manifest["outputs"]),
    }


def write_build(
    model_path: Path,
    manifest_path: Path,
    model_bytes: bytes,
    *,
    builder_version: int,
    seed: int,
    input_shape: Sequence[int],
    classes: int,
    **extra: Any,
) -> None:
    """Writes a classifier (``label`` int64 [N], ``probabilities`` float32 [N, classes])
    and then its manifest, with ``extra`` keys (accuracy, cost ...) added."""
    write_atomic(model_path, model_bytes)
    manifest = {
        "builder_version": builder_version,
        "seed": seed,
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "size_bytes": len(model_bytes),
        "runtime": "onnxruntime",
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": [None, *input_shape]},
        "outputs": [
            {"name": OUTPUT_NAMES[0], "dtype": "int64", "shape": [None]},
            {"name": OUTPUT_NAMES[1], "dtype": "float32", "shape": [None, classes]},
        ],
        **extra,
    }
    # The manifest goes last: its presence with a matching sha marks a complete build.
    write_atomic(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())

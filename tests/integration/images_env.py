"""The images ``make images`` builds, for the tests that run them.

``build`` runs the real builder (``hack/images/build.py``: nothing to do when the archives
are up to date); ``Unpacked`` is an archive's root filesystem made back from its layers,
run the way the chart runs a container: the image's user, a read-only root, a tmpfs
``/tmp``, no network. Root only (mounts, chroot).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from parkfleet.models.digits import DigitsModel, build_digits

REPO = Path(__file__).resolve().parents[2]
BUILDER = REPO / "hack" / "images" / "build.py"
CACHE = REPO / ".cache" / "images"

# Runs in an agent image, the digits model's folder at /models: which providers ONNX
# Runtime has, which the agent's compute picks and the session really uses, and the labels.
RUN_DIGITS = """
import asyncio, json
import numpy as np
import onnxruntime as ort
from parkfleet.vehicle import compute

async def main():
    model = open("/models/digits.onnx", "rb").read()
    inputs = np.load("/models/digits_inputs.npy")
    name = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).get_inputs()[0].name
    ortc = compute.OrtCompute()
    session = await ortc.session("digits", model)
    outs = await session.infer({name: inputs}, session.output_names[:1], 64)
    print(json.dumps({
        "available": ort.get_available_providers(),
        "selected": compute.available_providers(),
        "asked": ortc.providers,
        "used": session.providers,
        "labels": outs[0].astype(int).tolist(),
    }))

asyncio.run(main())
"""


def digits() -> DigitsModel:
    """The digits model, built once into the repo's cache (as ``make model`` does)."""
    return build_digits(REPO / ".cache" / "models")


def model_folder(where: Path) -> Path:
    """The digits model's files for /models, readable by the image's user (the cache's are not)."""
    folder = where / "models"
    folder.mkdir()
    for name in ("digits.onnx", "digits_inputs.npy"):
        shutil.copyfile(digits().directory / name, folder / name)
        (folder / name).chmod(0o644)
    return folder


def accuracy(labels: Sequence[int]) -> float:
    """How many of ``labels`` (for the digits model's held-out inputs) are right."""
    truth = digits().test_labels().tolist()
    return sum(a == b for a, b in zip(labels, truth, strict=True)) / len(truth)


def require_root() -> None:
    """Skips unless root; fails when Debian's mmdebstrap is missing."""
    if os.geteuid() != 0:
        pytest.skip("building and running the images needs root (mmdebstrap, chroot, mounts)")
    if shutil.which("mmdebstrap") is None:
        pytest.fail("no mmdebstrap: run `make images` (hack/images/packages.sh installs it)")


@dataclass(frozen=True)
class Image:
    """One built image, as ``.cache/images/images.json`` lists it."""

    name: str
    ref: str
    archive: Path
    archive_bytes: int
    unpacked_bytes: int

    def record(self) -> dict[str, Any]:
        """Its stamp: the key, the layers' digests, the base and wheels it was built from."""
        data: dict[str, Any] = json.loads(
            self.archive.with_name(self.archive.name + ".json").read_text()
        )
        return data


def build(*names: str) -> tuple[dict[str, Image], str]:
    """Builds the named images (cached); returns them and the builder's output."""
    proc = subprocess.run(
        [sys.executable, str(BUILDER), "build", *names],
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    index = json.loads((CACHE / "images.json").read_text())
    images = {
        n: Image(
            n,
            index[n]["ref"],
            CACHE / index[n]["archive"],
            index[n]["archive_bytes"],
            index[n]["unpacked_bytes"],
        )
        for n in names
    }
    return images, proc.stdout


def built(*names: str) -> dict[str, Image]:
    """The named images, built if they are not (root only: skips otherwise)."""
    require_root()
    return build(*names)[0]


@dataclass(frozen=True)
class Unpacked:
    """An image's root filesystem made back from its archive, and its config."""

    root: Path
    config: dict[str, Any]

    @staticmethod
    def of(image: Image, where: Path) -> Unpacked:
        """Unpacks ``image`` into ``where/rootfs`` with the builder's ``unpack``."""
        root = where / "rootfs"
        subprocess.run(
            [sys.executable, str(BUILDER), "unpack", str(image.archive), str(root)],
            check=True,
            timeout=600,
        )
        config = json.loads(root.with_name(root.name + ".json").read_text())
        return Unpacked(root, config)

    def run(
        self,
        *args: str,
        entrypoint: str | None = None,
        user: str | None = None,
        binds: Sequence[tuple[Path, str]] = (),
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Runs the image's command (``args`` instead of its CMD) as a container would."""
        argv = [sys.executable, str(BUILDER), "run", str(self.root)]
        if entrypoint:
            argv.append(f"--entrypoint={entrypoint}")
        if user:
            argv.append(f"--user={user}")
        argv += [f"--bind={src}:{dst}" for src, dst in binds]
        return subprocess.run([*argv, "--", *args], capture_output=True, text=True, timeout=timeout)

    def python(
        self, script: str, binds: Sequence[tuple[Path, str]] = (), timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Runs ``script`` with the image's Python (its venv's, first on its PATH)."""
        return self.run("-c", script, entrypoint="python3", binds=binds, timeout=timeout)

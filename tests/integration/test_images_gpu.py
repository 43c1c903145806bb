"""The GPU agent image (``make images-gpu``): ONNX Runtime's CUDA provider, picked first.

The image swaps ONNX Runtime for onnxruntime-gpu and NVIDIA's CUDA libraries from PyPI.
Run as the chart would run it (user 10001, read-only root, no network), its ONNX Runtime
reports the CUDA provider, the agent's compute asks for CUDA first, and every library
the CUDA provider links against resolves in the image but the driver's ``libcuda.so.1``
(the NVIDIA container runtime mounts it from the machine). This machine has no GPU, so
the session falls back to the CPU, and the model still runs. CUDA itself cannot run here.

Root only; not part of ``make test`` (marker ``node``). The first build downloads about
1.3 GB of wheels and takes several minutes; later ones are cached.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .images_env import RUN_DIGITS, Image, Unpacked, accuracy, built, model_folder

pytestmark = [pytest.mark.integration, pytest.mark.node, pytest.mark.timeout(3000)]

SITE = "/opt/parkfleet/lib/python3.11/site-packages"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@pytest.fixture(scope="module")
def gpu_image() -> Image:
    return built("agent-gpu")["agent-gpu"]


@pytest.fixture(scope="module")
def gpu_fs(gpu_image: Image, tmp_path_factory: pytest.TempPathFactory) -> Unpacked:
    return Unpacked.of(gpu_image, tmp_path_factory.mktemp("agent-gpu-image"))


def test_gpu_image_is_the_agent_with_the_gpu_runtime(gpu_image: Image, gpu_fs: Unpacked) -> None:
    assert gpu_image.ref.endswith("/parkfleet/agent:" + gpu_image.ref.rpartition(":")[2])
    assert gpu_image.ref.endswith("-gpu")
    assert gpu_fs.config["config"]["Entrypoint"] == ["parkfleet", "agent"]
    dists = gpu_fs.python(
        "import importlib.metadata as m, json;"
        " print(json.dumps(sorted(d.metadata['Name'].lower() for d in m.distributions())))"
    )
    assert dists.returncode == 0, dists.stderr
    names = json.loads(dists.stdout)
    assert "onnxruntime-gpu" in names
    assert "onnxruntime" not in names  # one of the two only: both install the same module
    print(
        f"GPU image: archive {gpu_image.archive_bytes / 1e6:.0f} MB,"
        f" unpacked {gpu_image.unpacked_bytes / 1e6:.0f} MB"
    )


def test_cuda_provider_is_picked_first_and_the_agent_falls_back_to_cpu(
    gpu_fs: Unpacked, tmp_path: Path
) -> None:
    proc = gpu_fs.python(RUN_DIGITS, binds=[(model_folder(tmp_path), "/models")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert CUDA in facts["available"]
    assert facts["selected"] == facts["asked"] == [CUDA, CPU]
    # No GPU (no driver) here: ONNX Runtime drops the CUDA provider and runs on the CPU.
    assert facts["used"] == [CPU]
    assert accuracy(facts["labels"]) > 0.9


def test_cuda_provider_libraries_resolve_all_but_the_driver(gpu_fs: Unpacked) -> None:
    lib = f"{SITE}/onnxruntime/capi/libonnxruntime_providers_cuda.so"
    ldd = gpu_fs.run(lib, entrypoint="ldd")
    missing = sorted(line.split()[0] for line in ldd.stdout.splitlines() if "not found" in line)
    assert missing == ["libcuda.so.1"], ldd.stdout
    cache = gpu_fs.run("-p", entrypoint="ldconfig").stdout
    for soname in (
        "libcudart.so.13",
        "libcublas.so.13",
        "libcublasLt.so.13",
        "libcurand.so.10",
        "libcudnn.so.9",
    ):
        assert soname in cache, soname

"""A pod's task spec: its paths in its namespace's area, its unit file naming its job."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from kubernetes_asyncio import client

from parkfleet.api import FleetPoolSpec
from parkfleet.nodeagent.taskio import ResultFile
from parkfleet.nodeagent.taskspecs import BadInput, TaskSpecs
from parkfleet.nodeagent.translate import translate
from parkfleet.objectstore import BadSecret, S3Credentials
from parkfleet.taskport import ModelInfo, ModelRef, OutputSpec, TaskPort

POOL = FleetPoolSpec(name="eu")
JOB = "0b8c5e2e-7f0a-4a51-8d0e-5e3f9a7c2b10"


class FakeStore:
    """Plain fake of the gateway's model store: one model with these outputs."""

    def __init__(self, *outputs: str) -> None:
        self.outputs = outputs
        self.asked: list[tuple[str, str, str, S3Credentials | None]] = []

    async def resolve_model(
        self,
        name: str = "",
        sha256: str = "",
        uri: str = "",
        credentials: S3Credentials | None = None,
    ) -> ModelInfo:
        self.asked.append((name, sha256, uri, credentials))
        specs = tuple(OutputSpec(o, "float32", (10,)) for o in self.outputs)
        return ModelInfo(ModelRef("0" * 64), "input", specs)


class FakeSecrets:
    """Plain fake of the object-store Secrets: namespace a holds Secret store."""

    def __init__(self) -> None:
        self.read: list[tuple[str, str]] = []

    async def get(self, namespace: str, name: str) -> S3Credentials:
        self.read.append((namespace, name))
        if (namespace, name) != ("a", "store"):
            raise BadSecret(f"Secret {name}: no such Secret in namespace {namespace}")
        return S3Credentials("http://s3.invalid:9000", "id", "key")


@pytest.fixture
async def api() -> AsyncIterator[client.ApiClient]:
    api = client.ApiClient()  # no ConfigMap input here: it never connects
    yield api
    await api.close()


def job_pod(namespace: str, output_names: str = "") -> dict[str, Any]:
    """Unit 1 of a job's pod, as its Job controller creates it."""
    env = {
        "PARKFLEET_MODEL": "digits",
        "PARKFLEET_INPUT": "digits/x.npy",
        "PARKFLEET_OUTPUT": "results/j",
        "PARKFLEET_UNIT_ITEMS": "2",
        "PARKFLEET_TOTAL_ITEMS": "4",
    }
    if output_names:
        env["PARKFLEET_OUTPUT_NAMES"] = output_names
    return {
        "metadata": {
            "name": "j-1-abcde",
            "namespace": namespace,
            "uid": "pod-uid",
            "labels": {"parkfleet.io/inference-job-uid": JOB},
            "annotations": {"batch.kubernetes.io/job-completion-index": "1"},
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": "j", "controller": True}
            ],
        },
        "spec": {
            "containers": [
                {
                    "name": "infer",
                    "image": "parkfleet.io/runtime/onnxruntime:1",
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                }
            ]
        },
    }


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "a" / "digits").mkdir(parents=True)
    np.save(tmp_path / "a" / "digits" / "x.npy", np.zeros((4, 3), np.float32))
    return tmp_path


async def test_a_units_result_is_in_its_namespaces_area_and_names_its_job(
    api: client.ApiClient, root: Path
) -> None:
    specs = TaskSpecs(api, cast(TaskPort, FakeStore("label")), root)
    pod = job_pod("a")
    prepared = await specs.prepare(pod, "eu-0", translate(pod, POOL.runtimes), POOL)
    assert prepared.result == ResultFile(
        (root / "a" / "results" / "j").resolve() / "unit-000001.npz", JOB
    )
    assert (prepared.spec.item_start, prepared.spec.item_end) == (2, 4)
    assert prepared.spec.job == JOB  # the gateway measures the job's items/s under it
    # The same pod in namespace b reads b's digits/x.npy, which b does not have.
    pod = job_pod("b")
    with pytest.raises(BadInput) as err:
        await specs.prepare(pod, "eu-0", translate(pod, POOL.runtimes), POOL)
    assert err.value.message == (
        "spec.containers[0].env[PARKFLEET_INPUT]: No such file or directory"
    )


@pytest.mark.parametrize("reserved", ["job_uid", "first_item"])
async def test_a_model_output_cannot_pass_for_the_files_own_entries(
    api: client.ApiClient, root: Path, reserved: str
) -> None:
    # A model (fetched from a URI its user chose) whose output would be written as the
    # unit file's job_uid could make a file count as another job's unit.
    specs = TaskSpecs(api, cast(TaskPort, FakeStore("label", reserved)), root)
    for names in ("", f"label,{reserved}"):
        pod = job_pod("a", output_names=names)
        with pytest.raises(BadInput) as err:
            await specs.prepare(pod, "eu-0", translate(pod, POOL.runtimes), POOL)
        assert err.value.message.startswith("spec.containers[0].env[PARKFLEET_OUTPUT_NAMES]:")
        assert f"output {reserved!r} has a name result files reserve" in err.value.message


def s3_model_pod(namespace: str) -> dict[str, Any]:
    """A job's pod whose model is an s3:// object read with Secret store."""
    pod = job_pod(namespace)
    env = [e for e in pod["spec"]["containers"][0]["env"] if e["name"] != "PARKFLEET_MODEL"]
    env += [
        {"name": "PARKFLEET_MODEL_URI", "value": "s3://models/digits/v2.onnx"},
        {"name": "PARKFLEET_MODEL_SHA256", "value": "ab" * 32},
        {"name": "PARKFLEET_OBJECT_STORE_SECRET", "value": "store"},
    ]
    pod["spec"]["containers"][0]["env"] = env
    return pod


async def test_an_s3_model_is_resolved_with_the_secret_of_the_pods_own_namespace(
    api: client.ApiClient, root: Path
) -> None:
    port = FakeStore("label")
    specs = TaskSpecs(api, cast(TaskPort, port), root)
    secrets = FakeSecrets()
    specs.secrets = secrets  # type: ignore[assignment]
    pod = s3_model_pod("a")
    await specs.prepare(pod, "eu-0", translate(pod, POOL.runtimes), POOL)
    assert secrets.read == [("a", "store")]
    assert port.asked == [
        (
            "",
            "ab" * 32,
            "s3://models/digits/v2.onnx",
            S3Credentials("http://s3.invalid:9000", "id", "key"),
        )
    ]
    # The same pod in namespace b names b's Secret store, which b does not have.
    pod = s3_model_pod("b")
    with pytest.raises(BadInput) as err:
        await specs.prepare(pod, "eu-0", translate(pod, POOL.runtimes), POOL)
    assert err.value.reason == "InvalidTaskInput"
    assert err.value.message == (
        "spec.containers[0].env[PARKFLEET_OBJECT_STORE_SECRET]: "
        "Secret store: no such Secret in namespace b"
    )
    assert len(port.asked) == 1  # nothing asked of the gateway without credentials


async def test_a_model_by_name_or_https_reads_no_secret(api: client.ApiClient, root: Path) -> None:
    specs = TaskSpecs(api, cast(TaskPort, FakeStore("label")), root)
    secrets = FakeSecrets()
    specs.secrets = secrets  # type: ignore[assignment]
    pod = job_pod("a")
    await specs.prepare(pod, "eu-0", translate(pod, POOL.runtimes), POOL)
    assert secrets.read == []

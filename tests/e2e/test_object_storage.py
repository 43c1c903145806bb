"""InferenceJobs reading from and writing to object storage, end to end: a real S3 server
(versitygw from its Go module), the real control plane, operator, gateway and cars.

Inputs are read by range, each unit's result is one object named with the job's uid,
a gateway restart mid-job keeps every completed unit's object as it was, and
``parkfleet results`` assembles the units in item order and refuses a gap.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import obstore
import pyarrow.parquet as pq
import pytest

from parkfleet import devs3
from parkfleet.devstack import DevStack, free_port
from parkfleet.objectstore import s3_store, secret_manifest

from .conftest import Kubectl, creds
from .kube import get_json, until
from .test_inferencejob import ITEMS, condition, local_labels_of, pool, wait_done, wait_gpus

pytestmark = pytest.mark.e2e

BUCKET = "jobs"
SECRET = "jobs-store"


@pytest.fixture(scope="module")
def stored(stack: DevStack, kubectl: Kubectl, s3: devs3.S3Server) -> DevStack:
    """The InferenceJob CRD, the digits input as an object, and the job namespace's Secret."""
    from .conftest import REPO

    kubectl("apply", "-f", str(REPO / "crds" / "inferencejobs.parkfleet.io.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/inferencejobs.parkfleet.io")
    s3.bucket(BUCKET)
    x = np.load(stack.area() / "digits" / "inputs.npy")
    big = np.tile(x, (-(-ITEMS // len(x)), 1))[:ITEMS]
    buf = io.BytesIO()
    np.save(buf, big)
    obstore.put(s3_store(creds(s3), BUCKET), "in/digits.npy", buf.getvalue())
    np.save(stack.area() / "digits" / "s3-reference.npy", big)
    kubectl("apply", "-f", "-", stdin=json.dumps(secret_manifest(SECRET, "default", creds(s3))))
    return stack


def s3_job(name: str, pool_name: str = "demo", **spec: Any) -> str:
    fields: dict[str, Any] = {
        "pool": pool_name,
        "objectStore": f"{{secretName: {SECRET}}}",
        "model": "{name: digits, outputNames: [label, probabilities]}",
        "input": f"{{uri: 's3://{BUCKET}/in/digits.npy', items: {ITEMS}}}",
        "itemsPerUnit": 250,
        "parallelism": 6,
        "batchSize": 50,
        "output": f"{{uri: 's3://{BUCKET}/out/{name}'}}",
    }
    fields.update(spec)
    body = "\n".join(f"  {k}: {v}" for k, v in fields.items())
    return (
        "apiVersion: parkfleet.io/v1alpha1\nkind: InferenceJob\n"
        f"metadata: {{name: {name}}}\nspec:\n{body}\n"
    )


def unit_objects(s3: devs3.S3Server, prefix: str) -> dict[str, Any]:
    """The unit objects under ``prefix``: key -> last modified."""
    store = s3_store(creds(s3), BUCKET)
    out = {}
    for batch in obstore.list(store, prefix=prefix):
        for meta in batch:
            out[str(meta["path"])] = meta["last_modified"]
    return out


def results_cli(kubectl: Kubectl, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "parkfleet.cli",
            "results",
            "--kubeconfig",
            str(kubectl.kubeconfig),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_digits_from_object_storage_to_object_storage(
    stored: DevStack, kubectl: Kubectl, s3: devs3.S3Server, tmp_path: Path
) -> None:
    kubectl("apply", "-f", "-", stdin=s3_job("from-s3"))
    st = wait_done(kubectl, "from-s3")
    assert condition(kubectl, "from-s3", "Complete")["status"] == "True", st
    uid = get_json(kubectl, "ij", "from-s3")["metadata"]["uid"]
    assert st["results"] == f"s3://{BUCKET}/out/from-s3/{uid}/"
    objects = unit_objects(s3, f"out/from-s3/{uid}/")
    assert sorted(objects) == [f"out/from-s3/{uid}/unit-{i:06d}.npz" for i in range(12)]
    # Nothing was written to the data volume for it.
    assert not (stored.area() / "out").exists()

    truth = local_labels_of(stored, np.load(stored.area() / "digits" / "s3-reference.npy"))
    out = tmp_path / "labels.npy"
    got = results_cli(kubectl, "default/from-s3", "--out", str(out), "--output", "label")
    assert got.returncode == 0, got.stdout + got.stderr
    assert np.array_equal(np.load(out), truth)
    table = pq.read_table(results_cli_out(kubectl, tmp_path / "all.parquet", "from-s3"))
    assert table.column("item").to_pylist() == list(range(ITEMS))
    assert np.array_equal(np.asarray(table.column("label").to_pylist()), truth)
    lines = results_cli_out(kubectl, tmp_path / "all.jsonl", "from-s3").read_text().splitlines()
    assert [json.loads(line)["item"] for line in lines] == list(range(ITEMS))
    # A .npy of two outputs is refused, naming them, and leaves nothing.
    two = results_cli(kubectl, "default/from-s3", "--out", str(tmp_path / "two.npy"))
    assert two.returncode == 1
    assert "label" in two.stdout
    assert "probabilities" in two.stdout
    assert not (tmp_path / "two.npy").exists()

    # A missing unit is named, and no file is left behind.
    store = s3_store(creds(s3), BUCKET)
    obstore.delete(store, f"out/from-s3/{uid}/unit-000007.npz")
    gap = results_cli(
        kubectl, "default/from-s3", "--out", str(tmp_path / "gap.npy"), "--output", "label"
    )
    assert gap.returncode == 1
    assert "1 of 12 units have no result: 7" in gap.stdout
    assert not (tmp_path / "gap.npy").exists()
    kubectl("delete", "ij", "from-s3")


def results_cli_out(kubectl: Kubectl, out: Path, job: str) -> Path:
    got = results_cli(kubectl, f"default/{job}", "--out", str(out))
    assert got.returncode == 0, got.stdout + got.stderr
    return out


def test_gateway_restart_keeps_completed_unit_objects(
    stored: DevStack, kubectl: Kubectl, s3: devs3.S3Server
) -> None:
    kubectl("apply", "-f", "-", stdin=pool("s3steady"))
    fleet = stored.start_fleet(
        6,
        1,
        "s3steady",
        prefix="s3s-",
        name="s3steady",
        extra=["--compute=modelled", "--modelled-rate=120"],
    )
    wait_gpus(kubectl, "pf-s3steady-0", 6)
    kubectl("apply", "-f", "-", stdin=s3_job("s3-restarted", "s3steady"))
    uid = get_json(kubectl, "ij", "s3-restarted")["metadata"]["uid"]
    prefix = f"out/s3-restarted/{uid}/"
    until(lambda: len(unit_objects(s3, prefix)) >= 2, 120, "a few unit objects")
    stored.procs["gateway"].stop()
    before = unit_objects(s3, prefix)
    port = free_port()
    stored.start_gateway(f"--metrics-port={port}")
    st = wait_done(kubectl, "s3-restarted", 240)
    assert condition(kubectl, "s3-restarted", "Complete")["status"] == "True", st
    after = unit_objects(s3, prefix)
    assert sorted(after) == [f"{prefix}unit-{i:06d}.npz" for i in range(12)]
    # Every unit completed before the restart is the object written then: not redone.
    assert {k: after[k] for k in before} == before
    # What the restarted gateway did shows on its /metrics: the rest of the units put as
    # objects, their inputs read by range from object storage.
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    put = sample(text, 'parkfleet_result_objects_total{result="ok"}')
    assert 12 - len(before) <= put <= 12
    assert sample(text, "parkfleet_result_object_bytes_total") > 0
    assert sample(text, 'parkfleet_input_bytes_read_total{source="s3"}') > 0
    fleet.stop()
    kubectl("delete", "ij", "s3-restarted")
    kubectl("delete", "fp", "s3steady", "--wait=false")


def sample(text: str, name: str) -> float:
    """The value of one sample of a /metrics page (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def pod_messages(k: Kubectl, job_name: str) -> str:
    pods = get_json(k, "pods", "-l", f"batch.kubernetes.io/job-name={job_name}")["items"]
    out = []
    for p in pods:
        for cs in p.get("status", {}).get("containerStatuses", []):
            term = (cs.get("state") or {}).get("terminated") or {}
            out.append(str(term.get("message", "")))
    return "\n".join(out)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"objectStore": "{secretName: no-such-secret}"}, "no such Secret"),
        ({"input": f"{{uri: 's3://{BUCKET}/in/missing.npy', items: {ITEMS}}}"}, "no such object"),
    ],
)
def test_unusable_object_storage_fails_the_job_with_the_reason(
    stored: DevStack, kubectl: Kubectl, override: dict[str, str], expected: str
) -> None:
    name = "s3-bad"
    kubectl("apply", "-f", "-", stdin=s3_job(name, **override))
    st = wait_done(kubectl, name)
    failed = condition(kubectl, name, "Failed")
    assert failed["status"] == "True", st
    assert expected in failed["message"], failed
    assert "PARKFLEET_" in failed["message"]  # names the field
    kubectl("delete", "ij", name)


def test_s3_uris_without_an_object_store_are_refused_by_the_api(
    kubectl: Kubectl, stored: DevStack
) -> None:
    body = s3_job("s3-nostore").replace(f"  objectStore: {{secretName: {SECRET}}}\n", "")
    got = kubectl("apply", "-f", "-", stdin=body, check=False)
    assert got.returncode != 0
    assert "spec.objectStore.secretName is required" in got.stderr


def test_a_secret_of_another_type_is_not_used(stored: DevStack, kubectl: Kubectl) -> None:
    kubectl(
        "create",
        "secret",
        "generic",
        "not-a-store",
        "--from-literal=endpoint=http://x",
        "--from-literal=accessKeyId=a",
        "--from-literal=secretAccessKey=b",
    )
    kubectl("apply", "-f", "-", stdin=s3_job("s3-generic", objectStore="{secretName: not-a-store}"))
    wait_done(kubectl, "s3-generic")
    failed = condition(kubectl, "s3-generic", "Failed")
    assert "parkfleet.io/object-store" in failed["message"], failed
    kubectl("delete", "ij", "s3-generic")
    kubectl("delete", "secret", "not-a-store")

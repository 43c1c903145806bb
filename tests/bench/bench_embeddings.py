"""Embeddings job benchmark: an InferenceJob's sentences/s on the fleet against the raw
local sentences/s of one car times the cars busy, measured in the same run.

Not a test (pytest does not collect ``bench_*.py``). Run by ``make bench-jobs`` (after
the digits job benchmark), or ``.venv/bin/python tests/bench/bench_embeddings.py``.

What runs: a fresh local control plane, a real S3 server (versitygw) on loopback, the
operator and a gateway with its node agent, and ``--cars`` cars, each a simulator
process of its own with one car (so that each has its own ONNX Runtime worker, as a real
car has its own computer; one ORT thread each, as ``parkfleet simulate`` runs cars). The
sentences (``models.sentences``), the tokenizer and the pooled all-MiniLM-L6-v2
(``parkfleet model push``) are in a bucket; the job reads from it and writes to it, as
``crds/samples/inferencejob-embeddings.yaml`` does.

What it measures:
- ``raw_one_car``: sentences/s of one car's compute alone (``vehicle.compute.OrtCompute``
  as a car makes it, on the same batches the gateway sends: tokenised by the gateway's
  own tokenizer, padded per batch), before the fleet starts, with nothing else running;
- ``achieved``: sentences / (completionTime - startTime) of the job's status;
- ``cars_busy``: the gateway's ``parkfleet_gateway_cars_busy``, sampled every 0.5 s from the
  job's first running unit to its end, averaged (and, as a check, the car-seconds of its
  tasks, ``parkfleet_gateway_task_duration_seconds_sum``, over the job's seconds);
- ``efficiency`` = achieved / (raw_one_car x cars_busy). On this 2-core machine the
  gateway (tokenising, streaming), the operator and the control plane share the cores
  with the cars, which a real fleet's cars do not: the figure is a floor.

Writes ``.cache/bench/jobs_embeddings.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import obstore
from bench_jobs import gateway_counter
from manifests import pool_doc

from parkfleet import devcluster, devs3
from parkfleet.controller.jobs import elapsed_s
from parkfleet.devstack import DevStack, free_port
from parkfleet.models import minilm, sentences
from parkfleet.models.push import push
from parkfleet.nodeagent.tokenize import TextTokenizer
from parkfleet.objectstore import S3Credentials, parse_s3_uri, s3_store, secret_manifest
from parkfleet.results import assemble, source_of
from parkfleet.vehicle.compute import OrtCompute

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / ".cache" / "bench" / "jobs_embeddings.json"
POOL = "bench-embed"
BUCKET = "bench"
SECRET = "bench-store"
MAX_TOKENS = 128


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


async def raw_one_car(model: minilm.MiniLM, texts: list[str], batch: int) -> float:
    """Sentences/s of one car's compute on the batches the gateway would send."""
    tok = TextTokenizer(model.tokenizer_path.read_text(), MAX_TOKENS)
    batches = [tok.encode(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    compute = OrtCompute(intra_op_threads=1, workers=1)
    try:
        session = await compute.session("pooled", model.pooled_path.read_bytes())
        await session.infer(batches[0], ["embedding"], batch)  # warm up
        t0 = time.perf_counter()
        for b in batches:
            await session.infer(b, ["embedding"], batch)
        return len(texts) / (time.perf_counter() - t0)
    finally:
        compute.close()


def job_doc(name: str, items: int, per_unit: int, parallelism: int, batch: int, sha: str) -> str:
    return json.dumps(
        {
            "apiVersion": "parkfleet.io/v1alpha1",
            "kind": "InferenceJob",
            "metadata": {"name": name},
            "spec": {
                "pool": POOL,
                "objectStore": {"secretName": SECRET},
                "model": {
                    "uri": f"s3://{BUCKET}/minilm/pooled.onnx",
                    "sha256": sha,
                    "outputNames": ["embedding"],
                },
                "input": {
                    "uri": f"s3://{BUCKET}/texts/sentences.jsonl",
                    "items": items,
                    "text": {
                        "tokenizer": f"s3://{BUCKET}/minilm/tokenizer.json",
                        "maxTokens": MAX_TOKENS,
                    },
                },
                "output": {"uri": f"s3://{BUCKET}/out/{name}"},
                "itemsPerUnit": per_unit,
                "batchSize": batch,
                "parallelism": parallelism,
            },
        }
    )


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    return devcluster.kubectl(kubeconfig, *args, stdin=stdin).stdout


def get(kubeconfig: Path, *args: str) -> Any:
    return json.loads(kubectl(kubeconfig, "get", *args, "-o", "json"))


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    model = minilm.load_minilm(ROOT / ".cache" / "models" / "minilm")
    if model is None:
        raise SystemExit("no MiniLM files: run `make model-minilm`")
    texts = sentences.write_jsonl(work / "sentences.jsonl", args.items)
    log(f"raw: one car's compute alone, {len(texts)} sentences, batch {args.batch}")
    raw = asyncio.run(raw_one_car(model, texts, args.batch))
    log(f"raw_one_car {raw:.1f} sentences/s")
    cluster = devcluster.start(work / "cluster", kubeconfig=work / "kubeconfig")
    kube = cluster.kubeconfig
    server = devs3.start(work / "s3")
    stack = DevStack(work / "stack", kube, telemetry_interval_s=1.0)
    try:
        for crd in ("fleetpools", "inferencejobs"):
            kubectl(kube, "apply", "-f", str(ROOT / "crds" / f"{crd}.parkfleet.io.yaml"))
            kubectl(kube, "wait", "--for=condition=Established", f"crd/{crd}.parkfleet.io")
        creds = S3Credentials(server.endpoint, server.access_key, server.secret_key)
        server.bucket(BUCKET)

        async def upload() -> str:
            store = s3_store(creds, BUCKET)
            await obstore.put_async(store, "texts/sentences.jsonl", work / "sentences.jsonl")
            await obstore.put_async(store, "minilm/tokenizer.json", model.tokenizer_path)
            target = parse_s3_uri(f"s3://{BUCKET}/minilm/pooled.onnx")
            return (await push(model.pooled_path, target, creds)).sha256

        sha = asyncio.run(upload())
        kubectl(
            kube, "apply", "-f", "-", stdin=json.dumps(secret_manifest(SECRET, "default", creds))
        )
        stack.prepare()
        stack.start_operator()
        port = free_port()
        stack.start_gateway(f"--metrics-port={port}")
        kubectl(kube, "apply", "-f", "-", stdin=pool_doc(POOL, args.cars, 1, 120, ["onnxruntime"]))
        for i in range(args.cars):
            stack.start_fleet(
                1, 1, POOL, prefix=f"emb{i}-", name=f"car{i}", extra=["--compute=real"]
            )
        deadline = time.monotonic() + 120
        while True:
            st = get(kube, "fp", POOL).get("status", {})
            if st.get("carsEligible", 0) >= args.cars:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {st.get('carsEligible', 0)} cars eligible")
            time.sleep(1)
        log(f"{args.cars} cars eligible; the job: {args.items} sentences")
        kubectl(
            kube,
            "apply",
            "-f",
            "-",
            stdin=job_doc("embed", args.items, args.per_unit, args.cars, args.batch, sha),
        )
        task_s_before = gateway_counter(port, "parkfleet_gateway_task_duration_seconds_sum")
        busy: list[float] = []
        deadline = time.monotonic() + args.timeout_s
        next_poll = 0.0
        while True:
            sample = gateway_counter(port, "parkfleet_gateway_cars_busy")
            if sample or busy:
                busy.append(sample)
            if time.monotonic() >= next_poll:
                st = get(kube, "ij", "embed").get("status", {})
                conds = {c["type"]: c["status"] for c in st.get("conditions", [])}
                if "True" in (conds.get("Complete"), conds.get("Failed")):
                    break
                next_poll = time.monotonic() + 1.0
            if time.monotonic() > deadline:
                raise RuntimeError("the job did not end in time")
            time.sleep(0.5)
        while busy and busy[-1] == 0:
            busy.pop()  # after the last task ended, before the status said so
        if conds.get("Complete") != "True":
            raise RuntimeError(f"the job failed: {st.get('conditions')}")
        seconds = elapsed_s(st.get("startTime"), st.get("completionTime"))
        achieved = args.items / seconds
        mean_busy = float(np.mean(busy)) if busy else 0.0
        task_s = (
            gateway_counter(port, "parkfleet_gateway_task_duration_seconds_sum") - task_s_before
        )
        source = asyncio.run(source_of("default", "embed", str(kube), None, False))
        n = asyncio.run(assemble(source, work / "embeddings.npy", "embedding"))
        return {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
            "items": args.items,
            "cars": args.cars,
            "batch_size": args.batch,
            "items_per_unit": args.per_unit,
            "raw_one_car_items_s": round(raw, 1),
            "achieved_items_s": round(achieved, 1),
            "cars_busy_mean": round(mean_busy, 2),
            "task_car_seconds_per_job_second": round(task_s / seconds, 2),
            "ideal_items_s": round(raw * mean_busy, 1),
            "efficiency": round(achieved / (raw * mean_busy), 3) if mean_busy else 0.0,
            "job_s": seconds,
            "results_assembled": n,
        }
    finally:
        stack.stop()
        server.stop()
        devcluster.stop(cluster)


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--items", type=int, default=3000)
    p.add_argument("--cars", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--per-unit", type=int, default=250)
    p.add_argument("--timeout-s", type=float, default=900)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="parkfleet-bench-embed-") as tmp:
        result = run(args, Path(tmp))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nembeddings job, {result['items']} sentences, {result['cars']} cars")
    print(f"  on {result['machine']}")
    rows = [
        ("raw, one car alone", result["raw_one_car_items_s"]),
        ("cars busy (mean)", result["cars_busy_mean"]),
        ("task car-s per job s", result["task_car_seconds_per_job_second"]),
        ("ideal = raw x cars busy", result["ideal_items_s"]),
        ("achieved (job status)", result["achieved_items_s"]),
        ("efficiency", result["efficiency"]),
    ]
    for name, value in rows:
        print(f"  {name:<26} {value:>10}")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

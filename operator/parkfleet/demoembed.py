"""``parkfleet demo --workload embeddings``: 10,000 sentences embedded on the fleet, from
object storage to object storage, checked against local ONNX Runtime.

It starts the local control plane, a real S3 server (versitygw, ``parkfleet.devs3``) on
loopback, the operator, a gateway and simulated cars that run the model for real; uploads
the sentences, the tokenizer and the pooled all-MiniLM-L6-v2 (``parkfleet model push``);
creates the object-store Secret; applies ``crds/samples/inferencejob-embeddings.yaml``;
then assembles the results (``parkfleet results``) and compares every embedding with the
same sentence embedded locally by an independent path (``models.embeddings``).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import obstore
import yaml

from parkfleet import devs3
from parkfleet.devstack import DevStack
from parkfleet.models import minilm, sentences
from parkfleet.models.embeddings import (
    TextTokens,
    cosines,
    pair_cosines,
    reference_embeddings,
)
from parkfleet.models.push import push
from parkfleet.objectstore import S3Credentials, parse_s3_uri, s3_store, secret_manifest
from parkfleet.results import assemble, source_of

__all__ = ["COSINE_GOAL", "run_embeddings_demo"]

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "crds" / "samples" / "inferencejob-embeddings.yaml"
MINILM_DIR = REPO / ".cache" / "models" / "minilm"
COSINE_GOAL = 0.9999


def _sample() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
    return doc


async def _upload(
    creds: S3Credentials, model: minilm.MiniLM, spec: dict[str, Any], texts_file: Path
) -> str:
    """Puts the sentences, the tokenizer and the pooled model where the sample names them;
    returns the model's sha256 as ``model push`` printed it."""
    inp = spec["input"]
    for uri, path in ((inp["uri"], texts_file), (inp["text"]["tokenizer"], model.tokenizer_path)):
        loc = parse_s3_uri(uri)
        await obstore.put_async(s3_store(creds, loc.bucket), loc.key, path)
    pushed = await push(model.pooled_path, parse_s3_uri(spec["model"]["uri"]), creds)
    return pushed.sha256


def run_embeddings_demo(
    stack: DevStack, kubeconfig: Path, root: Path, cars: int, timeout: float, keep: bool
) -> bool:
    """The workload on a started stack (operator and gateway running); True when every
    embedding matched local ONNX Runtime."""
    from parkfleet.demo import _follow, _kubectl, _wait_for_pool

    model = minilm.load_minilm(MINILM_DIR)
    if model is None:
        print(f"!! no MiniLM files in {MINILM_DIR}: run `make model-minilm`")
        return False
    doc = _sample()
    spec = doc["spec"]
    items = int(spec["input"]["items"])
    print(f"==> a real S3 server (versitygw) on loopback, {items} sentences in it")
    server = devs3.start(root / "s3", detach=keep, pid_file=stack.pids / "s3.pid")
    try:
        creds = S3Credentials(server.endpoint, server.access_key, server.secret_key)
        for uri in (spec["input"]["uri"], spec["output"]["uri"], spec["model"]["uri"]):
            server.bucket(parse_s3_uri(uri).bucket)
        texts_file = root / "sentences.jsonl"
        texts = sentences.write_jsonl(texts_file, items)
        sha = asyncio.run(_upload(creds, model, spec, texts_file))
        print(f"    parkfleet model push {model.pooled_path.name} -> {spec['model']['uri']}")
        print(f"    sha256 {sha}")
        if sha != spec["model"]["sha256"]:
            print(f"!! the sample names sha256 {spec['model']['sha256']}: rebuild the sample")
            return False
        secret = secret_manifest(spec["objectStore"]["secretName"], "default", creds)
        _kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps(secret))
        print(f"    Secret {secret['metadata']['name']} (type {secret['type']}) for the job")
        print(f"==> {cars} simulated cars in 5 cells, parked, running the model for real")
        stack.start_fleet(cars, 5, "demo", extra=["--compute=real"])
        print("==> kubectl apply -f crds/samples/fleetpool-demo.yaml")
        _kubectl(kubeconfig, "apply", "-f", str(REPO / "crds" / "samples" / "fleetpool-demo.yaml"))
        _wait_for_pool(kubeconfig)
        print(f"==> kubectl apply -f crds/samples/{SAMPLE.name}")
        _kubectl(kubeconfig, "apply", "-f", str(SAMPLE))
        st = _follow(kubeconfig, timeout, doc["metadata"]["name"])
        return _report(kubeconfig, root, model, st, texts, int(spec["input"]["text"]["maxTokens"]))
    finally:
        if not keep:
            server.stop()


def _report(
    kubeconfig: Path,
    root: Path,
    model: minilm.MiniLM,
    st: dict[str, Any],
    texts: list[str],
    max_tokens: int,
) -> bool:
    conds = {c["type"]: c for c in st.get("conditions", [])}
    if conds.get("Failed", {}).get("status") == "True":
        print(f"!! the job failed: {conds['Failed']['reason']}: {conds['Failed']['message']}")
        return False
    from parkfleet.demo import _elapsed

    seconds = _elapsed(st)
    out = root / "embeddings.npy"
    print(f"==> parkfleet results default/embeddings --out {out}")
    source = asyncio.run(source_of("default", "embeddings", str(kubeconfig), None, False))
    n = asyncio.run(assemble(source, out, "embedding"))
    fleet = np.load(out)
    print(f"    {n} embeddings of {fleet.shape[1]} floats, in item order, none missing")
    print(f"==> the same {len(texts)} sentences through local ONNX Runtime (unpooled model,")
    print("    pooled and normalised in numpy, tokenised independently)")
    t0 = time.monotonic()
    local = reference_embeddings(
        model.model_path, TextTokens(model.tokenizer_path, max_tokens), texts
    )
    local_s = time.monotonic() - t0
    cos = cosines(fleet, local)
    worst = int(np.argmin(cos))
    ok = bool(np.all(cos >= COSINE_GOAL))
    para = pair_cosines(local, texts, sentences.PARAPHRASES)
    unrel = pair_cosines(local, texts, sentences.UNRELATED)
    near = min(para) > max(unrel)
    print("==> done")
    print(
        f"    cosine with local ONNX Runtime: min {cos.min():.6f} (item {worst}), "
        f"mean {cos.mean():.6f}; every item >= {COSINE_GOAL}: {'yes' if ok else 'NO'}"
    )
    print(
        f"    paraphrases {np.mean(para):.3f} (min {min(para):.3f}) vs unrelated "
        f"{np.mean(unrel):.3f} (max {max(unrel):.3f}): "
        f"paraphrases nearer: {'yes' if near else 'NO'}"
    )
    print(
        f"    {st.get('carsUsed', 0)} cars used, {st.get('carsMoved', 0)} moves, {seconds:.0f} s, "
        f"{len(texts) / max(seconds, 1e-9):.0f} sentences/s on the fleet "
        f"(this machine alone: {len(texts) / max(local_s, 1e-9):.0f}/s)"
    )
    print(f"    results: {st.get('results')} ({st['units']['succeeded']} objects)")
    return ok and near

"""The text-embedding workload end to end: a .jsonl of texts tokenised on the gateway,
all-MiniLM-L6-v2 with pooling appended run by the cars (the real agent, real ONNX
Runtime), embeddings assembled by ``parkfleet results`` and compared item by item with the
same texts embedded locally by an independent path (``parkfleet.models.embeddings``).

From object storage to object storage (the model by ``s3://`` after ``model push``), and
from the data volume to the data volume; a tokenizer with the wrong sha256 and a line that
is not a text fail the job saying why.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import obstore
import pytest
import yaml

from parkfleet import devs3
from parkfleet.devstack import DevStack
from parkfleet.models import minilm, sentences
from parkfleet.models.embeddings import TextTokens, cosines, pair_cosines, reference_embeddings
from parkfleet.objectstore import s3_store, secret_manifest

from .conftest import REPO, Kubectl, creds
from .kube import get_json
from .test_inferencejob import condition, wait_done

pytestmark = pytest.mark.e2e

BUCKET = "texts"
SECRET = "texts-store"
ITEMS = 600
MAX_TOKENS = 128
MINILM_DIR = REPO / ".cache" / "models" / "minilm"


@dataclass(frozen=True)
class Corpus:
    texts: list[str]
    model: minilm.MiniLM
    model_sha256: str
    tokenizer_sha256: str
    reference: np.ndarray  # local ONNX Runtime, pooled in numpy


def cli(kubectl: Kubectl, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "parkfleet.cli", *args, "--kubeconfig", str(kubectl.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def corpus(
    stack: DevStack, kubectl: Kubectl, s3: devs3.S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Corpus:
    """Texts and the tokenizer in a bucket and on the data volume; the pooled model pushed
    with ``parkfleet model push``; the namespace's object-store Secret."""
    model = minilm.load_minilm(MINILM_DIR)
    if model is None:
        pytest.fail(f"no MiniLM files in {MINILM_DIR}: run `make model-minilm` (make test does)")
    kubectl("apply", "-f", str(REPO / "crds" / "inferencejobs.parkfleet.io.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/inferencejobs.parkfleet.io")
    s3.bucket(BUCKET)
    tmp = tmp_path_factory.mktemp("texts")
    texts = sentences.write_jsonl(tmp / "sentences.jsonl", ITEMS, seed=7)
    store = s3_store(creds(s3), BUCKET)
    obstore.put(store, "in/sentences.jsonl", tmp / "sentences.jsonl")
    obstore.put(store, "minilm/tokenizer.json", model.tokenizer_path)
    area = stack.area() / "texts"
    area.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tmp / "sentences.jsonl", area / "sentences.jsonl")
    shutil.copyfile(model.tokenizer_path, area / "tokenizer.json")
    kubectl("apply", "-f", "-", stdin=json.dumps(secret_manifest(SECRET, "default", creds(s3))))
    pushed = cli(
        kubectl,
        "model",
        "push",
        str(model.pooled_path),
        "--to",
        f"s3://{BUCKET}/minilm/pooled.onnx",
        "--secret",
        f"default/{SECRET}",
    )
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    start = pushed.stdout.index("  model:")
    block = yaml.safe_load(pushed.stdout[start:])
    reference = reference_embeddings(
        model.model_path, TextTokens(model.tokenizer_path, MAX_TOKENS), texts
    )
    return Corpus(
        texts=texts,
        model=model,
        model_sha256=block["model"]["sha256"],
        tokenizer_sha256=hashlib.sha256(model.tokenizer_path.read_bytes()).hexdigest(),
        reference=reference,
    )


def embed_job(name: str, corpus: Corpus, *, volume: bool = False, tokenizer_sha: str = "") -> str:
    sha = tokenizer_sha or corpus.tokenizer_sha256
    if volume:
        where = {
            "input": f"{{path: texts/sentences.jsonl, items: {ITEMS}, text: "
            f"{{tokenizer: texts/tokenizer.json, tokenizerSha256: '{sha}', "
            f"maxTokens: {MAX_TOKENS}}}}}",
            "output": f"{{path: results/{name}}}",
        }
    else:
        where = {
            "input": f"{{uri: 's3://{BUCKET}/in/sentences.jsonl', items: {ITEMS}, text: "
            f"{{tokenizer: 's3://{BUCKET}/minilm/tokenizer.json', tokenizerSha256: '{sha}', "
            f"maxTokens: {MAX_TOKENS}}}}}",
            "output": f"{{uri: 's3://{BUCKET}/out/{name}'}}",
        }
    fields = {
        "pool": "demo",
        "objectStore": f"{{secretName: {SECRET}}}",
        "model": f"{{uri: 's3://{BUCKET}/minilm/pooled.onnx', sha256: {corpus.model_sha256}, "
        "outputNames: [embedding]}",
        **where,
        "itemsPerUnit": 100,
        "batchSize": 16,
        "parallelism": 6,
    }
    body = "\n".join(f"  {k}: {v}" for k, v in fields.items())
    return (
        "apiVersion: parkfleet.io/v1alpha1\nkind: InferenceJob\n"
        f"metadata: {{name: {name}}}\nspec:\n{body}\n"
    )


def check_embeddings(corpus: Corpus, got: np.ndarray) -> None:
    assert got.shape == (ITEMS, 384)
    cos = cosines(got, corpus.reference)
    assert float(cos.min()) >= 0.9999, f"item {int(np.argmin(cos))}: cosine {cos.min()}"
    # The fleet's own embeddings place paraphrases nearer than unrelated sentences.
    para = pair_cosines(got, corpus.texts, sentences.PARAPHRASES)
    unrelated = pair_cosines(got, corpus.texts, sentences.UNRELATED)
    assert min(para) > max(unrelated), (para, unrelated)


def test_embeddings_from_object_storage_to_object_storage(
    corpus: Corpus, kubectl: Kubectl, s3: devs3.S3Server, tmp_path: Path
) -> None:
    kubectl("apply", "-f", "-", stdin=embed_job("embed-s3", corpus))
    st = wait_done(kubectl, "embed-s3", 300)
    assert condition(kubectl, "embed-s3", "Complete")["status"] == "True", st
    uid = get_json(kubectl, "ij", "embed-s3")["metadata"]["uid"]
    assert st["results"] == f"s3://{BUCKET}/out/embed-s3/{uid}/"
    out = tmp_path / "embeddings.npy"
    got = cli(kubectl, "results", "default/embed-s3", "--out", str(out))
    assert got.returncode == 0, got.stdout + got.stderr
    check_embeddings(corpus, np.load(out))
    kubectl("delete", "ij", "embed-s3")


def test_embeddings_from_the_volume_to_the_volume(
    stack: DevStack, corpus: Corpus, kubectl: Kubectl, tmp_path: Path
) -> None:
    kubectl("apply", "-f", "-", stdin=embed_job("embed-vol", corpus, volume=True))
    st = wait_done(kubectl, "embed-vol", 300)
    assert condition(kubectl, "embed-vol", "Complete")["status"] == "True", st
    assert st["results"] == "volume:default/results/embed-vol/"
    out = tmp_path / "embeddings.parquet"
    got = cli(
        kubectl, "results", "default/embed-vol", "--out", str(out), "--data-root", str(stack.data)
    )
    assert got.returncode == 0, got.stdout + got.stderr
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert table.column("item").to_pylist() == list(range(ITEMS))
    check_embeddings(corpus, np.asarray(table.column("embedding").to_pylist(), dtype=np.float32))
    kubectl("delete", "ij", "embed-vol")


def test_a_tokenizer_of_another_sha256_fails_the_job_saying_so(
    corpus: Corpus, kubectl: Kubectl
) -> None:
    kubectl("apply", "-f", "-", stdin=embed_job("embed-badtok", corpus, tokenizer_sha="0" * 64))
    wait_done(kubectl, "embed-badtok", 120)
    failed = condition(kubectl, "embed-badtok", "Failed")
    assert failed["status"] == "True", failed
    assert "PARKFLEET_TOKENIZER" in failed["message"]
    assert "sha256 is not the one the job names" in failed["message"]
    kubectl("delete", "ij", "embed-badtok")


def test_a_line_that_is_not_a_text_fails_the_job_naming_the_item(
    stack: DevStack, corpus: Corpus, kubectl: Kubectl
) -> None:
    lines = [json.dumps({"text": t}) for t in corpus.texts[:ITEMS]]
    lines[250] = json.dumps({"body": "no text field"})
    (stack.area() / "texts" / "broken.jsonl").write_text("\n".join(lines) + "\n")
    job = embed_job("embed-broken", corpus, volume=True).replace(
        "texts/sentences.jsonl", "texts/broken.jsonl"
    )
    kubectl("apply", "-f", "-", stdin=job)
    wait_done(kubectl, "embed-broken", 180)
    failed = condition(kubectl, "embed-broken", "Failed")
    assert failed["status"] == "True", failed
    assert "item 250" in failed["message"], failed
    kubectl("delete", "ij", "embed-broken")


def test_the_sample_names_the_pooled_model_make_builds(corpus: Corpus) -> None:
    sample = yaml.safe_load(
        (REPO / "crds" / "samples" / "inferencejob-embeddings.yaml").read_text()
    )
    assert sample["spec"]["model"]["sha256"] == corpus.model_sha256
    assert sample["spec"]["input"]["text"]["tokenizerSha256"] == corpus.tokenizer_sha256

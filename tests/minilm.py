"""all-MiniLM-L6-v2 in tests and benchmarks: the extracted files, texts, their tokens.

The files come from ``make model-minilm`` (``parkfleet.models.minilm``, a prerequisite of
``make test``); a test that needs them fails, saying so, when they are not there. Texts are
tokenised here with the ``tokenizers`` library and the model's own ``tokenizer.json``,
padded to the longest text of each call (int64), as the gateway's text inputs are.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from parkfleet.models.minilm import INPUT_NAMES, MiniLM, load_minilm

REPO = Path(__file__).resolve().parents[1]
MINILM_DIR = REPO / ".cache" / "models" / "minilm"
MAX_TOKENS = 128

# Pairs that say the same thing, and sentences about something else.
PARAPHRASES = [
    ("A man is playing a guitar.", "Someone is strumming a guitar."),
    ("The car is charging in the garage.", "The vehicle is plugged in at home."),
    ("It will rain tomorrow in the city.", "Tomorrow the city expects showers."),
]
UNRELATED = [
    "The stock market fell sharply today.",
    "Bake the bread for forty minutes.",
    "Penguins live in the southern hemisphere.",
]

_SUBJECTS = ["The driver", "A parked car", "The fleet", "My neighbour", "The battery", "A robot"]
_VERBS = ["waits for", "charges", "computes", "watches", "reports", "ignores", "remembers"]
_OBJECTS = [
    "the evening traffic",
    "a long list of documents to embed before tomorrow morning",
    "the rain",
    "an owner's policy that forbids any work between seven and nine",
    "its daily energy budget",
    "a sentence",
]


def minilm() -> MiniLM:
    """The extracted model, or the test fails (``make model-minilm`` builds it)."""
    found = load_minilm(MINILM_DIR)
    if found is None:
        pytest.fail(f"no MiniLM files in {MINILM_DIR}: run `make model-minilm` (make test does)")
    return found


def texts(n: int, seed: int = 0) -> list[str]:
    """``n`` sentences of varied lengths (a few tokens to a few dozen)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        clauses = [
            f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
            for _ in range(rng.choice([1, 1, 1, 2, 3]))
        ]
        out.append(", and ".join(clauses) + ".")
    return out


class TextTokens:
    """The model's token inputs for texts, padded to the longest text of each call."""

    def __init__(self, tokenizer_path: Path, max_tokens: int = MAX_TOKENS) -> None:
        tok = Tokenizer.from_file(str(tokenizer_path))
        tok.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest of each call
        tok.enable_truncation(max_tokens)
        self._tok = tok

    def encode(self, batch: Sequence[str]) -> dict[str, np.ndarray]:
        enc = self._tok.encode_batch(list(batch))
        fields = {
            "input_ids": "ids",
            "attention_mask": "attention_mask",
            "token_type_ids": "type_ids",
        }
        return {
            name: np.array([getattr(e, fields[name]) for e in enc], dtype=np.int64)
            for name in INPUT_NAMES
        }


class TextInput:
    """An input source of texts: each read tokenised, padded to its longest text."""

    padded = True

    def __init__(self, texts: Sequence[str], tokens: TextTokens) -> None:
        self.texts = list(texts)
        self.tokens = tokens

    def read(self, start: int, end: int) -> dict[str, np.ndarray]:
        return self.tokens.encode(self.texts[start:end])


def reference_embeddings(
    model_path: Path, tokens: TextTokens, batch: Sequence[str], batch_size: int = 32
) -> np.ndarray:
    """The encoder in local ONNX Runtime, then mean pooling by the mask and L2 norm in numpy."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    out = []
    for i in range(0, len(batch), batch_size):
        feeds = tokens.encode(batch[i : i + batch_size])
        (hidden,) = session.run(["last_hidden_state"], feeds)
        mask = feeds["attention_mask"][..., None].astype(np.float32)
        mean = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        out.append(mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12))
    return np.concatenate(out)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity."""
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

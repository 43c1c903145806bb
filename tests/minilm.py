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

from parkfleet.models import embeddings
from parkfleet.models.embeddings import cosines, reference_embeddings
from parkfleet.models.minilm import MiniLM, load_minilm

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


class TextTokens(embeddings.TextTokens):
    """The model's token inputs for texts (``models.embeddings``), truncated at
    :data:`MAX_TOKENS` unless told otherwise."""

    def __init__(self, tokenizer_path: Path, max_tokens: int = MAX_TOKENS) -> None:
        super().__init__(tokenizer_path, max_tokens)


class TextInput:
    """An input source of texts: each read tokenised, padded to its longest text."""

    padded = True

    def __init__(self, texts: Sequence[str], tokens: TextTokens) -> None:
        self.texts = list(texts)
        self.tokens = tokens

    def read(self, start: int, end: int) -> dict[str, np.ndarray]:
        return self.tokens.encode(self.texts[start:end])


__all__ = [
    "MINILM_DIR",
    "PARAPHRASES",
    "UNRELATED",
    "TextInput",
    "TextTokens",
    "cosines",
    "minilm",
    "reference_embeddings",
    "texts",
]

"""The text-embedding workload's reference: the same texts embedded by local ONNX Runtime.

Tokenised here with the ``tokenizers`` library itself (padding to the longest text of each
batch, truncation at ``max_tokens``), not with the gateway's code, run through the
unpooled encoder (``last_hidden_state``), mean-pooled by the attention mask and
L2-normalised in numpy: an independent path to what the fleet computes with the pooled
model on the cars, so the two agreeing (cosine ≥ 0.9999 item by item) checks tokenising,
padding, the link and the pooling graph together.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

__all__ = ["TextTokens", "cosines", "pair_cosines", "reference_embeddings"]

_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


class TextTokens:
    """A model's token inputs for texts, padded to the longest text of each call."""

    def __init__(self, tokenizer_path: Path, max_tokens: int) -> None:
        tok = Tokenizer.from_file(str(tokenizer_path))
        pad = tok.padding or {}
        tok.enable_padding(
            pad_id=int(pad.get("pad_id", 0)), pad_token=str(pad.get("pad_token", "[PAD]"))
        )
        tok.enable_truncation(max_tokens)
        self._tok = tok

    def encode(self, batch: Sequence[str]) -> dict[str, npt.NDArray[np.int64]]:
        """``input_ids``, ``attention_mask`` and ``token_type_ids`` [texts, longest]."""
        enc = self._tok.encode_batch(list(batch))
        return {
            name: np.array([getattr(e, attr) for e in enc], dtype=np.int64)
            for name, attr in _FIELDS.items()
        }


def reference_embeddings(
    model_path: Path, tokens: TextTokens, texts: Sequence[str], batch_size: int = 32
) -> npt.NDArray[np.float32]:
    """``texts`` through the encoder in local ONNX Runtime, mean-pooled and normalised."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    out = []
    for i in range(0, len(texts), batch_size):
        feeds = {k: v for k, v in tokens.encode(texts[i : i + batch_size]).items() if k in names}
        (hidden,) = session.run(["last_hidden_state"], feeds)
        mask = feeds["attention_mask"][..., None].astype(np.float32)
        mean = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        out.append(mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12))
    return np.concatenate(out).astype(np.float32)


def cosines(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Per-row cosine similarity."""
    num = np.sum(a.astype(np.float64) * b, axis=1)
    return np.asarray(num / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


def pair_cosines(
    embeddings: npt.NDArray[np.floating],
    texts: Sequence[str],
    pairs: Sequence[tuple[str, str]],
) -> list[float]:
    """The cosine of each pair of texts, by their rows of ``embeddings`` (one per text)."""
    at = {t: i for i, t in enumerate(texts)}
    return [float(cosines(embeddings[[at[a]]], embeddings[[at[b]]])[0]) for a, b in pairs]

"""Texts to a model's token inputs, on the gateway, with the model's own ``tokenizer.json``.

Cars get token ids, never text (and never the tokenizer): what a car sees of a document
is a list of integers, padded to the longest text of its batch. The ``tokenizers``
library (Rust) reads the file; its own padding and truncation settings are replaced by
the job's: truncation at ``max_tokens`` and padding to the longest text of each call, so
a batch of short sentences is not padded to the model's limit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

__all__ = ["TOKEN_INPUTS", "TextTokenizer"]

# The inputs a BERT-style encoder takes, as tokenizers names them and models call them.
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class TextTokenizer:
    """A ``tokenizer.json`` ready to encode batches of texts.

    Args:
        text: The file's content.
        max_tokens: Texts are truncated to this many tokens (special tokens included).

    Raises:
        ValueError: It is not a tokenizer the library reads.
    """

    def __init__(self, text: str, max_tokens: int) -> None:
        try:
            tok = Tokenizer.from_str(text)
        except Exception as exc:  # the library's own parse errors
            raise ValueError(f"not a tokenizer.json the tokenizers library reads: {exc}") from None
        padding = tok.padding or {}
        pad_id = int(padding.get("pad_id", tok.token_to_id("[PAD]") or 0))
        pad_token = str(padding.get("pad_token", "[PAD]"))
        tok.no_padding()
        tok.enable_truncation(max_tokens)
        self._tok = tok
        self.pad_id = pad_id
        self.pad_token = pad_token
        self.max_tokens = max_tokens

    def encode(self, texts: Sequence[str]) -> dict[str, npt.NDArray[np.int64]]:
        """``input_ids``, ``attention_mask`` and ``token_type_ids`` [texts, longest], int64.

        Padding is ``pad_id`` for the ids and 0 for the mask and the type ids. CPU-bound:
        call it in a thread (the library releases the GIL while it encodes).
        """
        encodings = self._tok.encode_batch(list(texts))
        longest = max((len(e.ids) for e in encodings), default=0)
        longest = max(longest, 1)
        n = len(encodings)
        ids = np.full((n, longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, longest), dtype=np.int64)
        types = np.zeros((n, longest), dtype=np.int64)
        for i, e in enumerate(encodings):
            k = len(e.ids)
            ids[i, :k] = e.ids
            mask[i, :k] = e.attention_mask
            types[i, :k] = e.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

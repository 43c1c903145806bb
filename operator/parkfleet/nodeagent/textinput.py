"""Text inputs: a ``.jsonl`` of texts (a volume file or an object, or a folder or prefix of
them), tokenised on the gateway a batch at a time (:mod:`parkfleet.nodeagent.tokenize`).

Each line is a JSON string, or a JSON object whose ``field`` holds the text. A task's
items are read by range, never the whole file, and tokenised in a thread; what goes to a
car is the model's token inputs, padded to the batch's longest text.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection, Sequence

import numpy as np
import numpy.typing as npt

from parkfleet.nodeagent.ranged import Parts
from parkfleet.nodeagent.tokenize import TextTokenizer
from parkfleet.taskport import InvalidItems

__all__ = ["TextInput", "texts_of"]


def texts_of(lines: Sequence[bytes], field: str, first: int) -> list[str]:
    """The texts of ``lines`` (items from number ``first``).

    Raises:
        InvalidItems: A line is neither a JSON string nor an object with a string ``field``
            (the message names the item).
    """
    out = []
    for i, line in enumerate(lines):
        try:
            doc = json.loads(line)
        except ValueError:
            raise InvalidItems(f"item {first + i}: not a line of JSON") from None
        if isinstance(doc, dict):
            doc = doc.get(field)
            if not isinstance(doc, str):
                raise InvalidItems(f"item {first + i}: no string {field!r} in the object")
        elif not isinstance(doc, str):
            raise InvalidItems(f"item {first + i}: neither a JSON string nor an object")
        out.append(doc)
    return out


class TextInput:
    """Texts in, token inputs out.

    Args:
        parts: The ``.jsonl`` parts.
        tokenizer: The model's tokenizer.
        field: The text's key in a line that is a JSON object.
        names: The model's inputs: only these of ``input_ids``, ``attention_mask`` and
            ``token_type_ids`` are sent (all three when empty).
    """

    # Each read is one batch: its tensors are padded to its longest text (the gateway
    # sends it as one chunk, so the padding stays per batch).
    padded = True

    def __init__(
        self, parts: Parts, tokenizer: TextTokenizer, field: str, names: Collection[str] = ()
    ) -> None:
        self.parts = parts
        self.tokenizer = tokenizer
        self.field = field
        self.names = frozenset(names)

    @property
    def items(self) -> int:
        """How many texts the input holds."""
        return self.parts.items

    def _encode(self, lines: Sequence[bytes], first: int) -> dict[str, npt.NDArray[np.int64]]:
        encoded = self.tokenizer.encode(texts_of(lines, self.field, first))
        if self.names:
            encoded = {k: v for k, v in encoded.items() if k in self.names}
        return encoded

    async def read(self, start: int, end: int) -> dict[str, npt.NDArray[np.int64]]:
        """Texts ``[start, end)`` tokenised: the model's token inputs [items, longest]."""
        lines = await self.parts.lines(start, end)
        return await asyncio.to_thread(self._encode, lines, start)

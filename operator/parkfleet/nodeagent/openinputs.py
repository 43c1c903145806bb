"""Inputs read by range (:mod:`parkfleet.nodeagent.ranged`) and tokenizers, opened once and
kept for the units of a job, reopened when what they are read from changed.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

from parkfleet.nodeagent.ranged import FileReader, ObjectReader, Parts, RangeReader, open_part
from parkfleet.nodeagent.tokenize import TextTokenizer

__all__ = ["MAX_TOKENIZER_BYTES", "ObjectInputs", "Tokenizers", "file_readers"]

KEPT = 16  # inputs (and tokenizers) kept open
MAX_TOKENIZER_BYTES = 64 * 1024 * 1024
_SUFFIXES = (".npy", ".jsonl")


def file_readers(path: Path, on_read: Callable[[int], None] | None = None) -> list[RangeReader]:
    """A volume file, or the ``.npy``/``.jsonl`` files of a folder in name order (files
    whose names start with ``.`` are parkfleet's own and skipped). Blocking: in a thread.

    Raises:
        ValueError: A folder with no such files.
        OSError: It cannot be read.
    """
    if not path.is_dir():
        return [FileReader(path, on_read)]
    files = sorted(
        f for f in path.iterdir() if f.suffix in _SUFFIXES and not f.name.startswith(".")
    )
    if not files:
        raise ValueError(f"{path.name}/ holds no .npy or .jsonl files")
    return [FileReader(f, on_read) for f in files]


def _signature(readers: Sequence[RangeReader]) -> tuple[tuple[str, int, str], ...]:
    out = []
    for r in readers:
        if isinstance(r, ObjectReader):
            out.append((f"s3:{r.key}", r.size, r.etag))
        elif isinstance(r, FileReader):
            st = r.path.stat()
            out.append((str(r.path), r.size, str(st.st_mtime_ns)))
    return tuple(out)


class ObjectInputs:
    """:class:`Parts` by what they are read from (name, size, ETag or mtime of each)."""

    def __init__(self, size: int = KEPT) -> None:
        self._size = size
        self._open: OrderedDict[tuple[tuple[str, int, str], ...], asyncio.Task[Parts]] = (
            OrderedDict()
        )

    async def open(self, readers: Sequence[RangeReader]) -> Parts:
        """The parts ``readers`` read, opened once however many units ask at once.

        Raises:
            ValueError: A part is not a ``.npy`` or ``.jsonl`` this reads.
        """
        key = await asyncio.to_thread(_signature, readers)
        task = self._open.get(key)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = asyncio.ensure_future(_open_parts(readers))
            self._open[key] = task
            while len(self._open) > self._size:
                self._open.popitem(last=False)
        self._open.move_to_end(key)
        return await asyncio.shield(task)


async def _open_parts(readers: Sequence[RangeReader]) -> Parts:
    return Parts([await open_part(r) for r in readers])


class Tokenizers:
    """Tokenizers by content (sha256) and truncation; a file or object already read (same
    name, size and ETag or mtime) is not read again for every unit of a job."""

    def __init__(self, size: int = KEPT) -> None:
        self._size = size
        self._open: OrderedDict[tuple[str, int], TextTokenizer] = OrderedDict()
        self._digests: OrderedDict[tuple[tuple[str, int, str], ...], str] = OrderedDict()

    async def open(self, reader: RangeReader, max_tokens: int, sha256: str = "") -> TextTokenizer:
        """The tokenizer ``reader`` holds, checked against ``sha256`` when one is given.

        Raises:
            ValueError: Too large, not the sha256 asked for, or not a tokenizer.json.
        """
        if reader.size > MAX_TOKENIZER_BYTES:
            raise ValueError(f"{reader.name}: larger than {MAX_TOKENIZER_BYTES} bytes")
        signature = await asyncio.to_thread(_signature, [reader])
        digest = self._digests.get(signature)
        data = b""
        if digest is None or (digest, max_tokens) not in self._open:
            data = bytes(await reader.read(0, reader.size))
            digest = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
            self._digests[signature] = digest
            while len(self._digests) > self._size:
                self._digests.popitem(last=False)
        if sha256 and digest != sha256:
            raise ValueError(f"{reader.name}: its sha256 is not the one the job names")
        key = (digest, max_tokens)
        known = self._open.get(key)
        if known is None:
            try:
                text = data.decode()
            except UnicodeDecodeError:
                raise ValueError(f"{reader.name}: not UTF-8 text") from None
            known = await asyncio.to_thread(TextTokenizer, text, max_tokens)
            self._open[key] = known
            while len(self._open) > self._size:
                self._open.popitem(last=False)
        self._open.move_to_end(key)
        return known

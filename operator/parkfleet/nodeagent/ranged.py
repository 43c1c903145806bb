"""Inputs read by byte range: ``.npy`` and ``.jsonl`` files and objects, a block at a time.

An input may live in object storage (``s3://``) or on the data volume; either way the
gateway never downloads it whole for a unit. It reads a file's header (``.npy``) or scans
it once for where its lines start (``.jsonl``, streamed), then reads the items a task
asks for as byte ranges. Ranges are read in blocks of about :data:`BLOCK_BYTES`, aligned
on items, the next block read ahead, and the last few blocks are kept: the batches of one
task, and the copies of a redundant unit, share one request instead of one each.

:class:`RangeReader` is what a part is read through: :class:`FileReader` (``pread`` in a
thread) or :class:`ObjectReader` (obstore's ranged GET, async in Rust).
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import obstore
from obstore.store import S3Store

from parkfleet.protocol.limits import MAX_TENSOR_BYTES
from parkfleet.taskport import InvalidItems

__all__ = [
    "BLOCK_BYTES",
    "FileReader",
    "JsonlPart",
    "NpyPart",
    "ObjectReader",
    "Parts",
    "RangeReader",
    "open_part",
]

BLOCK_BYTES = 2 * 1024 * 1024
# Blocks kept per input part (a few tasks' worth, each read ahead by one; at most
# ``BLOCK_BYTES`` each): 64 MiB at most.
BLOCKS_KEPT = 32
_SCAN_BYTES = 8 * 1024 * 1024  # a .jsonl is scanned for its lines this much at a time
_MAX_NPY_HEADER = 64 * 1024
# One item per line: a line longer than this is refused (a block then holds at most
# BLOCK_BYTES plus one line), and a part holds at most MAX_LINES lines (16 bytes kept each).
MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_LINES = 50_000_000
# A .npy item must fit the car link's bound on one tensor (limits.MAX_TENSOR_BYTES).
MAX_ITEM_BYTES = MAX_TENSOR_BYTES
_NEWLINE = 10
_CR = 13


class RangeReader(Protocol):
    """Bytes of one file or object, by range."""

    name: str
    size: int

    async def read(self, start: int, end: int) -> bytes | memoryview:
        """Bytes ``[start, end)``."""
        ...

    def scan(self) -> AsyncIterator[bytes | memoryview]:
        """All of it, in order, in pieces (read once, streamed, never held whole)."""
        ...


class FileReader:
    """A file on the data volume, read with ``pread`` in a thread."""

    def __init__(self, path: Path, on_read: Callable[[int], None] | None = None) -> None:
        self.path = path
        self.name = path.name
        self.size = path.stat().st_size
        self.on_read = on_read

    def _pread(self, start: int, end: int) -> bytes:
        with self.path.open("rb") as f:
            return os.pread(f.fileno(), end - start, start)

    async def read(self, start: int, end: int) -> bytes:
        data = await asyncio.to_thread(self._pread, start, end)
        if self.on_read is not None:
            self.on_read(len(data))
        if len(data) != end - start:
            raise ValueError(f"{self.name}: shorter than when it was opened (changed?)")
        return data

    async def scan(self) -> AsyncIterator[bytes]:
        pos = 0
        while pos < self.size:
            end = min(pos + _SCAN_BYTES, self.size)
            yield await self.read(pos, end)
            pos = end


class ObjectReader:
    """An object in object storage, read with ranged GETs (async; no thread)."""

    def __init__(
        self,
        store: S3Store,
        key: str,
        size: int,
        etag: str = "",
        on_read: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.key = key
        self.name = key.rsplit("/", 1)[-1]
        self.size = size
        self.etag = etag
        self.on_read = on_read

    async def read(self, start: int, end: int) -> memoryview:
        data = await obstore.get_range_async(self.store, self.key, start=start, end=end)
        view = memoryview(data)
        if self.on_read is not None:
            self.on_read(len(view))
        if len(view) != end - start:
            raise ValueError(f"{self.name}: shorter than when it was listed (changed?)")
        return view

    async def scan(self) -> AsyncIterator[memoryview]:
        result = await obstore.get_async(self.store, self.key)
        async for piece in result.stream(min_chunk_size=_SCAN_BYTES):
            view = memoryview(piece)
            if self.on_read is not None:
                self.on_read(len(view))
            yield view


def _consume(task: asyncio.Task[bytes | memoryview]) -> None:
    """Reads a read-ahead's error, if any (a later read of the block retries it)."""
    if not task.cancelled():
        task.exception()


class _Part:
    """A part of an input: ``items`` items, read a block at a time.

    Blocks are runs of whole items; ``firsts[i]`` is block ``i``'s first item (ascending,
    starting at 0), so a block holds about ``BLOCK_BYTES`` and never more than that plus
    one item.
    """

    def __init__(self, reader: RangeReader, items: int, firsts: npt.NDArray[np.int64]) -> None:
        self.reader = reader
        self.items = items
        self.firsts = firsts
        self._blocks: OrderedDict[int, asyncio.Task[bytes | memoryview]] = OrderedDict()

    def _span(self, first: int, end: int) -> tuple[int, int]:
        """Bytes of items ``[first, end)``."""
        raise NotImplementedError

    def _index(self, item: int) -> int:
        """The block that holds ``item``."""
        return int(np.searchsorted(self.firsts, item, side="right")) - 1

    def _items_of(self, index: int) -> tuple[int, int]:
        """Block ``index``'s items ``[first, end)``."""
        first = int(self.firsts[index])
        end = int(self.firsts[index + 1]) if index + 1 < len(self.firsts) else self.items
        return first, end

    def _fetch(self, index: int) -> asyncio.Task[bytes | memoryview]:
        """Block ``index``'s read, started unless one is under way or done."""
        task = self._blocks.get(index)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            start, stop = self._span(*self._items_of(index))
            task = asyncio.ensure_future(self.reader.read(start, stop))
            self._blocks[index] = task
        self._blocks.move_to_end(index)
        if len(self._blocks) > BLOCKS_KEPT:
            # The least recently used blocks go, those read already (not a read under way).
            for old in [k for k, t in self._blocks.items() if t.done()]:
                if len(self._blocks) <= BLOCKS_KEPT:
                    break
                del self._blocks[old]
        return task

    async def _block(self, index: int) -> tuple[int, bytes | memoryview]:
        """Block ``index``: the byte offset of its first item and its bytes. The next
        block is read ahead meanwhile (a task's items are read in order)."""
        task = self._fetch(index)
        if index + 1 < len(self.firsts) and index + 1 not in self._blocks:
            ahead = self._fetch(index + 1)
            ahead.add_done_callback(_consume)
        start, _ = self._span(*self._items_of(index))
        return start, await asyncio.shield(task)

    async def _bytes(self, first: int, end: int) -> list[tuple[int, int, bytes | memoryview, int]]:
        """For items ``[first, end)``: (first item, end item, block bytes, block offset) of
        each block they lie in."""
        out = []
        item = first
        while item < end:
            index = self._index(item)
            stop = min(end, self._items_of(index)[1])
            offset, data = await self._block(index)
            out.append((item, stop, data, offset))
            item = stop
        return out


class NpyPart(_Part):
    """A ``.npy`` file or object: its header read once, then items as byte ranges.

    Raises:
        ValueError: It is not a ``.npy`` array this reads (C order, no objects).
    """

    def __init__(
        self, reader: RangeReader, dtype: np.dtype[np.generic], shape: tuple[int, ...], offset: int
    ) -> None:
        self.dtype = dtype
        self.item_shape = shape[1:]
        self.item_bytes = int(dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64)))
        self.offset = offset
        per_block = max(1, BLOCK_BYTES // max(1, self.item_bytes))
        firsts = np.arange(0, shape[0], per_block, dtype=np.int64)
        super().__init__(reader, shape[0], firsts)

    @classmethod
    async def open(cls, reader: RangeReader) -> NpyPart:
        head = bytes(await reader.read(0, min(reader.size, _MAX_NPY_HEADER)))
        if head[:6] != b"\x93NUMPY":
            raise ValueError(f"{reader.name}: not a .npy file")
        major = head[6]
        if major == 1:
            length, start = int.from_bytes(head[8:10], "little"), 10
        elif major in (2, 3):
            length, start = int.from_bytes(head[8:12], "little"), 12
        else:
            raise ValueError(f"{reader.name}: .npy format version {major} is not one this reads")
        if start + length > len(head):
            raise ValueError(f"{reader.name}: .npy header longer than {_MAX_NPY_HEADER} bytes")
        try:
            header = ast.literal_eval(head[start : start + length].decode("latin1"))
            dtype = np.dtype(header["descr"])
            shape = tuple(int(d) for d in header["shape"])
            fortran = bool(header["fortran_order"])
        except (ValueError, SyntaxError, KeyError, TypeError):
            raise ValueError(f"{reader.name}: unreadable .npy header") from None
        if fortran or dtype.hasobject or not shape or shape[0] == 0:
            raise ValueError(f"{reader.name}: holds no items this reads (C order, no objects)")
        offset = start + length
        item_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
        if item_bytes > MAX_ITEM_BYTES:
            raise ValueError(
                f"{reader.name}: an item is {item_bytes} bytes, more than the car link carries "
                f"in one tensor ({MAX_ITEM_BYTES})"
            )
        expected = offset + shape[0] * dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
        if reader.size != expected:
            raise ValueError(f"{reader.name}: {reader.size} bytes, its header says {expected}")
        return cls(reader, dtype, shape, offset)

    def _span(self, first: int, end: int) -> tuple[int, int]:
        return self.offset + first * self.item_bytes, self.offset + end * self.item_bytes

    async def read(self, first: int, end: int) -> npt.NDArray[np.generic]:
        """Items ``[first, end)`` of this part."""
        pieces = []
        for a, b, data, offset in await self._bytes(first, end):
            lo = self.offset + a * self.item_bytes - offset
            raw = memoryview(data)[lo : lo + (b - a) * self.item_bytes]
            pieces.append(np.frombuffer(raw, dtype=self.dtype).reshape((b - a, *self.item_shape)))
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


class JsonlPart(_Part):
    """A ``.jsonl`` file or object: scanned once for where its lines are, then lines read
    as byte ranges. Blank lines are no items."""

    def __init__(
        self, reader: RangeReader, starts: npt.NDArray[np.int64], ends: npt.NDArray[np.int64]
    ) -> None:
        self.starts = starts
        self.ends = ends
        # A block starts at the first line that starts past each multiple of BLOCK_BYTES:
        # about BLOCK_BYTES of lines, however their lengths vary.
        marks = np.arange(int(starts[0]), int(ends[-1]), BLOCK_BYTES, dtype=np.int64)
        firsts = np.unique(np.searchsorted(starts, marks, side="left"))
        firsts = firsts[firsts < len(starts)].astype(np.int64)
        if len(firsts) == 0 or firsts[0] != 0:
            firsts = np.concatenate(([0], firsts)).astype(np.int64)
        super().__init__(reader, len(starts), firsts)

    @classmethod
    async def open(cls, reader: RangeReader) -> JsonlPart:
        starts: list[npt.NDArray[np.int64]] = []
        ends: list[npt.NDArray[np.int64]] = []
        pos = 0
        line_start = 0
        last_byte = -1
        async for piece in reader.scan():
            if sum(len(x) for x in starts) > MAX_LINES:
                raise ValueError(f"{reader.name}: more than {MAX_LINES} lines in one part")
            arr = np.frombuffer(piece, dtype=np.uint8)
            if len(arr) == 0:
                continue
            nl = np.flatnonzero(arr == _NEWLINE).astype(np.int64)
            if len(nl):
                line_ends = nl + pos
                line_starts = np.concatenate(([line_start], line_ends[:-1] + 1))
                # A line's end without its \r (a file written on Windows).
                before = nl - 1
                cr = np.zeros(len(nl), dtype=bool)
                inside = before >= 0
                cr[inside] = arr[before[inside]] == _CR
                if not inside[0] and last_byte == _CR:
                    cr[0] = True
                line_ends = line_ends - cr
                starts.append(line_starts)
                ends.append(line_ends)
                line_start = int(nl[-1]) + pos + 1
            last_byte = int(arr[-1])
            pos += len(arr)
        if line_start < pos:  # a last line with no newline
            end = pos - (1 if last_byte == _CR else 0)
            starts.append(np.array([line_start], dtype=np.int64))
            ends.append(np.array([end], dtype=np.int64))
        if pos != reader.size:
            raise ValueError(f"{reader.name}: read {pos} bytes of {reader.size} (changed?)")
        s = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
        e = np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)
        keep = e > s
        s, e = s[keep], e[keep]
        if len(s) == 0:
            raise ValueError(f"{reader.name} holds no items")
        longest = int(np.argmax(e - s))
        if e[longest] - s[longest] > MAX_LINE_BYTES:
            raise ValueError(
                f"{reader.name}: item {longest} is a line of {int(e[longest] - s[longest])} "
                f"bytes, more than {MAX_LINE_BYTES} (one item per line)"
            )
        return cls(reader, s, e)

    def _span(self, first: int, end: int) -> tuple[int, int]:
        return int(self.starts[first]), int(self.ends[end - 1])

    async def lines(self, first: int, end: int) -> list[bytes]:
        """Lines ``[first, end)`` of this part, without their line ends."""
        out: list[bytes] = []
        for a, b, data, offset in await self._bytes(first, end):
            lo = int(self.starts[a]) - offset
            blob = bytes(memoryview(data)[lo : int(self.ends[b - 1]) - offset])
            base = offset + lo
            starts = (self.starts[a:b] - base).tolist()
            ends = (self.ends[a:b] - base).tolist()
            out += [blob[s:e] for s, e in zip(starts, ends, strict=True)]
        return out

    async def read(self, first: int, end: int, dtype: str = "float32") -> npt.NDArray[np.generic]:
        """Lines ``[first, end)`` as JSON lists of numbers, one array of items."""
        lines = await self.lines(first, end)
        return await asyncio.to_thread(_json_items, lines, dtype, self.reader.name, first)


def _json_items(
    lines: Sequence[bytes], dtype: str, name: str, first: int
) -> npt.NDArray[np.generic]:
    try:
        return np.asarray([json.loads(line) for line in lines], dtype=dtype)
    except (ValueError, TypeError) as exc:
        raise InvalidItems(
            f"{name}: items from {first}: not JSON lists of numbers ({exc})"
        ) from None


async def open_part(reader: RangeReader) -> NpyPart | JsonlPart:
    """A ``.npy`` or ``.jsonl`` part, by its name.

    Raises:
        ValueError: Neither, or not readable as one.
    """
    if reader.name.endswith(".npy"):
        return await NpyPart.open(reader)
    if reader.name.endswith(".jsonl"):
        return await JsonlPart.open(reader)
    raise ValueError(f"{reader.name}: not a .npy or .jsonl file")


class Parts:
    """Parts numbered on end to end: items of a file or a folder (or prefix) of them.

    Args:
        parts: In order (a folder's or a prefix's in name order).
        dtype: Element type of items of ``.jsonl`` parts holding numbers.
    """

    def __init__(self, parts: Sequence[NpyPart | JsonlPart], dtype: str = "float32") -> None:
        if not parts:
            raise ValueError("holds no .npy or .jsonl files")
        self.parts = list(parts)
        self.dtype = dtype
        self.starts = np.cumsum([0] + [p.items for p in self.parts]).tolist()

    @property
    def items(self) -> int:
        """How many items the input holds."""
        return int(self.starts[-1])

    def _pieces(self, start: int, end: int) -> list[tuple[NpyPart | JsonlPart, int, int]]:
        out = []
        for i, part in enumerate(self.parts):
            lo, hi = self.starts[i], self.starts[i + 1]
            if hi <= start or lo >= end:
                continue
            out.append((part, max(start, lo) - lo, min(end, hi) - lo))
        return out

    async def read(self, start: int, end: int) -> npt.NDArray[np.generic]:
        """Items ``[start, end)`` as one array (tensor inputs)."""
        arrays = []
        for part, a, b in self._pieces(start, end):
            if isinstance(part, NpyPart):
                arrays.append(await part.read(a, b))
            else:
                arrays.append(await part.read(a, b, self.dtype))
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    async def lines(self, start: int, end: int) -> list[bytes]:
        """Lines ``[start, end)`` (text inputs: every part must be a ``.jsonl``).

        Raises:
            ValueError: A part is not a ``.jsonl``.
        """
        out: list[bytes] = []
        for part, a, b in self._pieces(start, end):
            if not isinstance(part, JsonlPart):
                raise ValueError(f"{part.reader.name}: a text input is .jsonl, not .npy")
            out += await part.lines(a, b)
        return out

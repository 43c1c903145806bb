"""A task's results on disk as they arrive, and the unit's ``.npz`` made from them.

A car's results never pile up in the gateway's memory (decision 5; ``docs/security.md``):
each chunk, already checked against the model's declared outputs, is appended to one
file per output in the task's spool folder (in a thread, once ``FLUSH_BYTES`` are
pending, so a task holds at most that much and a chunk). When the task completes, the
unit's ``.npz`` is streamed together from the spool files into a temporary file beside
it and renamed, so the result file exists exactly when every item's result is in it
(and replaces, whole, whatever file was there). A unit file also names its InferenceJob
(entry ``job_uid``: see :func:`parkfleet.nodeagent.taskio.finished_items`). Copies
that are compared (redundancy ≥ 2) are read back as memory maps.

The gateway delivers every item once, in order, across the task's attempts on different
cars, so one spool per task holds them all; a spool left by an earlier process (a
gateway restart) is cleared before the first chunk is written.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from parkfleet.nodeagent.resultobject import ResultObject
from parkfleet.nodeagent.taskio import ENTRY_FIRST_ITEM, ENTRY_JOB_UID, ResultFile

__all__ = ["ResultSpool"]

_COPY_CHUNK = 1024 * 1024
# Chunks wait in memory until this many bytes are pending, then go to disk in one thread
# hop: a task holds at most this (plus one chunk), and small chunks cost no hop each.
FLUSH_BYTES = 1024 * 1024
_INDEX = "outputs.json"


@dataclass(frozen=True, slots=True)
class _Output:
    name: str
    dtype: str
    item_shape: tuple[int, ...]


class ResultSpool:
    """A :class:`~parkfleet.taskport.ResultSink` that spools to disk.

    Args:
        path: The unit's result file (and its job), written when the task completes;
            None writes none (the results are kept for a comparison, or only logged).
        spool: The task's spool folder; None keeps nothing (results only logged).
        on_chunk: Called with each chunk (e.g. to turn results into log lines).
    """

    def __init__(
        self,
        path: ResultFile | ResultObject | None,
        spool: Path | None,
        on_chunk: Callable[[int, Mapping[str, npt.NDArray[np.generic]]], None] | None = None,
    ) -> None:
        self.path = path
        self.spool = spool
        self.on_chunk = on_chunk
        self.items = 0
        self.first_item: int | None = None
        self._outputs: list[_Output] = []
        self._pending: list[Mapping[str, npt.NDArray[np.generic]]] = []
        self._pending_bytes = 0
        self._fresh = True

    async def write(self, first_item: int, outputs: Mapping[str, npt.NDArray[np.generic]]) -> None:
        """Appends a chunk to the spool (the gateway delivers items once, in order).

        Raises:
            ValueError: The chunk's outputs differ in type or item shape from the first's.
        """
        n = len(next(iter(outputs.values()))) if outputs else 0
        if self.spool is not None:
            self._check(outputs)
            # The gateway's arrays may be views of its receive buffer: keep copies.
            self._pending.append({k: np.array(v) for k, v in outputs.items()})
            self._pending_bytes += sum(v.nbytes for v in outputs.values())
            if self._pending_bytes >= FLUSH_BYTES:
                await self._flush()
        if self.first_item is None:
            self.first_item = first_item
        self.items += n
        if self.on_chunk is not None:
            self.on_chunk(first_item, outputs)

    def _check(self, outputs: Mapping[str, npt.NDArray[np.generic]]) -> None:
        if not self._outputs:
            self._outputs = [
                _Output(name, a.dtype.str, tuple(a.shape[1:])) for name, a in outputs.items()
            ]
        if [o.name for o in self._outputs] != list(outputs):
            raise ValueError(f"a chunk's outputs {list(outputs)} differ from the first's")
        for out in self._outputs:
            array = outputs[out.name]
            if array.dtype.str != out.dtype or tuple(array.shape[1:]) != out.item_shape:
                raise ValueError(f"output {out.name!r} changed its type or item shape")

    async def _flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        fresh, self._fresh = self._fresh, False
        await asyncio.to_thread(self._append_all, pending, fresh)

    def _append_all(self, chunks: list[Mapping[str, npt.NDArray[np.generic]]], fresh: bool) -> None:
        for i, outputs in enumerate(chunks):
            self._append(outputs, fresh and i == 0)

    def _append(self, outputs: Mapping[str, npt.NDArray[np.generic]], fresh: bool) -> None:
        assert self.spool is not None
        if fresh:
            shutil.rmtree(self.spool, ignore_errors=True)
            self.spool.mkdir(parents=True)
            index = [[o.name, o.dtype, list(o.item_shape)] for o in self._outputs]
            (self.spool / _INDEX).write_text(json.dumps(index))
        for i, out in enumerate(self._outputs):
            array = outputs[out.name]
            with (self.spool / f"{i}.bin").open("ab") as f:
                f.write(np.ascontiguousarray(array).data)

    async def arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        """Every output over all items received, as read-only memory maps of the spool."""
        if self.spool is None or not self.items:
            return {}
        await self._flush()
        out: dict[str, npt.NDArray[np.generic]] = {}
        for i, o in enumerate(self._outputs):
            out[o.name] = np.memmap(
                self.spool / f"{i}.bin", dtype=o.dtype, mode="r", shape=(self.items, *o.item_shape)
            )
        return out

    async def save(self, target: ResultFile | ResultObject) -> None:
        """Writes the results to ``target`` atomically (with their first item number and,
        for a unit of a job, the job's uid): a file renamed into place, or an object put
        whole from a temporary file in the spool."""
        await self._flush()
        if isinstance(target, ResultFile):
            await asyncio.to_thread(self._save, target)
            return
        scratch = self.spool.parent if self.spool is not None else Path(tempfile.gettempdir())
        tmp = await asyncio.to_thread(self._zip_to_temp, scratch, target.job_uid)
        try:
            await target.upload(tmp, self.items, self.first_item or 0)
        finally:
            await asyncio.to_thread(tmp.unlink, True)

    def _zip_to_temp(self, folder: Path, job_uid: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload.", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                self._write_zip(f, job_uid)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return Path(tmp)

    def _write_zip(self, f: BinaryIO, job_uid: str) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for i, o in enumerate(self._outputs):
                self._copy_into(zf, o, self.spool / f"{i}.bin" if self.spool else None)
            first = np.array([self.first_item or 0], dtype=np.int64)
            with zf.open(f"{ENTRY_FIRST_ITEM}.npy", "w") as entry:
                np.lib.format.write_array(entry, first, allow_pickle=False)
            if job_uid:
                with zf.open(f"{ENTRY_JOB_UID}.npy", "w") as entry:
                    np.lib.format.write_array(entry, np.array(job_uid), allow_pickle=False)

    def _save(self, target: ResultFile) -> None:
        path = target.path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                self._write_zip(f, target.job_uid)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _copy_into(self, zf: zipfile.ZipFile, o: _Output, source: Path | None) -> None:
        header = {
            "descr": o.dtype,
            "fortran_order": False,
            "shape": (self.items, *o.item_shape),
        }
        size = self.items * math.prod(o.item_shape) * np.dtype(o.dtype).itemsize
        with zf.open(f"{o.name}.npy", "w", force_zip64=True) as entry:
            np.lib.format.write_array_header_2_0(entry, header)
            if source is None:
                return
            with source.open("rb") as f:
                copied = 0
                while chunk := f.read(_COPY_CHUNK):
                    entry.write(chunk)
                    copied += len(chunk)
            if copied != size:
                raise OSError(f"spool of {o.name!r} holds {copied} bytes, {size} expected")

    async def complete(self) -> None:
        """Writes the result file atomically (when the sink has a path)."""
        if self.path is not None:
            await self.save(self.path)

    async def discard(self) -> None:
        """Removes the spool (the result is written, or no longer wanted)."""
        if self.spool is not None:
            await asyncio.to_thread(shutil.rmtree, self.spool, True)

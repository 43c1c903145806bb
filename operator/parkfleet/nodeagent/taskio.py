"""Where a pod's task reads its items and writes its results, on the gateway's data root.

Inputs and outputs never touch a car's disk (decision 5): the gateway reads the
input file and streams items inside the mTLS link; results come back the same way
and land here, written atomically, so a task's result file exists exactly when every
item's result is in it.

Tenants are kept apart (decision 11): a pod's paths are resolved in its namespace's
area of the data root, ``<data root>/<namespace>/`` (:func:`resolve_in_area`, the one
place that does it), and nothing it names may lead out of that area. A unit file of an
InferenceJob names the job (entry ``job_uid``); only a file naming this job counts as
the unit done (:func:`finished_items`).
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from parkfleet.contract import data_area

__all__ = [
    "ENTRY_FIRST_ITEM",
    "ENTRY_JOB_UID",
    "RESERVED_ENTRIES",
    "ConfigMapInput",
    "InputCache",
    "ResultFile",
    "VolumeInput",
    "finished_items",
    "namespace_area",
    "read_output",
    "resolve_in_area",
]

# Entries of a result file that are parkfleet's, not a model output's.
ENTRY_FIRST_ITEM = "first_item"  # the number of the file's first item
ENTRY_JOB_UID = "job_uid"  # a unit file's InferenceJob (absent from a plain pod's file)
RESERVED_ENTRIES = frozenset({ENTRY_FIRST_ITEM, ENTRY_JOB_UID})
# A job uid entry is a short string; anything bigger is not one of ours (not even read).
_MAX_JOB_UID_ENTRY = 1024


def namespace_area(root: Path, namespace: str) -> Path:
    """A namespace's area of the data root: ``root/<namespace>``.

    Raises:
        ValueError: ``namespace`` is not a namespace name.
    """
    return root / data_area(namespace)


def resolve_in_area(root: Path, namespace: str, relative: str) -> Path:
    """The path a pod of ``namespace`` names, inside that namespace's area of ``root``.

    Every input and result path of a pod is resolved here. Symlinks are followed (the
    area itself may be one, put there by the volume's admin) and the result must still
    lie inside the area.

    Raises:
        ValueError: ``relative`` is absolute, or leads outside the area.
    """
    area = namespace_area(root, namespace)
    if PurePosixPath(relative).is_absolute():
        raise ValueError(
            f"{relative!r} is an absolute path: a pod's paths are relative to its "
            f"namespace's area of the data volume ({namespace}/)"
        )
    base = area.resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base):
        raise ValueError(
            f"{relative!r} leads outside namespace {namespace}'s area of the data volume"
        )
    return path


@dataclass(frozen=True, slots=True)
class ResultFile:
    """A result file on the data volume, and the InferenceJob it belongs to.

    Attributes:
        path: The ``.npz`` file.
        job_uid: The uid of the InferenceJob whose unit it holds, written into the file
            (entry ``job_uid``); ``""`` for a plain pod's result, which names no job.
    """

    path: Path
    job_uid: str = ""

    @property
    def name(self) -> str:
        """The file's name (``unit-000042.npz``)."""
        return self.path.name

    async def finished_items(self) -> int | None:
        """As :func:`finished_items`."""
        return await finished_items(self)

    async def read_output(self, name: str) -> npt.NDArray[np.generic] | None:
        """One output of the file (None when the file or the output is missing)."""
        return await asyncio.to_thread(read_output, self.path, name)


class VolumeInput:
    """Items from the data volume: a ``.npy`` or ``.jsonl`` file, or a directory of them.

    ``.npy`` files are memory-mapped, so big inputs cost no memory up front; a
    ``.jsonl`` file holds one item per line (a JSON list) and is read into memory. In a
    directory the files are taken in name order and their items numbered on end to end.

    Args:
        path: A file, or a directory of ``.npy``/``.jsonl`` files.
        dtype: Element type for ``.jsonl`` items (the model input's).
    """

    def __init__(self, path: Path, dtype: str = "float32") -> None:
        self.path = path
        files = (
            sorted(f for f in path.iterdir() if f.suffix in (".npy", ".jsonl"))
            if path.is_dir()
            else [path]
        )
        if not files:
            raise ValueError(f"{path.name}/ holds no .npy or .jsonl files")
        self.parts: list[npt.NDArray[np.generic]] = [_load(f, dtype) for f in files]
        # starts[i] is the number of the first item of part i.
        self.starts = np.cumsum([0] + [len(p) for p in self.parts]).tolist()

    @property
    def items(self) -> int:
        """How many items the input holds."""
        return int(self.starts[-1])

    def _slice(self, start: int, end: int) -> npt.NDArray[np.generic]:
        pieces = []
        for i, part in enumerate(self.parts):
            lo, hi = self.starts[i], self.starts[i + 1]
            if hi <= start or lo >= end:
                continue
            pieces.append(part[max(start, lo) - lo : min(end, hi) - lo])
        if len(pieces) == 1:
            return np.ascontiguousarray(pieces[0])
        return np.concatenate(pieces)

    async def read(self, start: int, end: int) -> npt.NDArray[np.generic]:
        """Items ``[start, end)``, read off the event loop (page faults are disk I/O)."""
        return await asyncio.to_thread(self._slice, start, end)


def _load(path: Path, dtype: str) -> npt.NDArray[np.generic]:
    if path.suffix == ".jsonl":
        with path.open() as f:
            array = np.asarray([json.loads(line) for line in f if line.strip()], dtype=dtype)
    else:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    if array.ndim < 1 or len(array) == 0:
        raise ValueError(f"{path.name} holds no items")
    return array


# Opened inputs kept: the units of one job share one input, opened once.
INPUT_CACHE_SIZE = 16


def _signature(path: Path) -> tuple[tuple[str, int, int], ...]:
    """What identifies an input's content cheaply: each file's name, size and mtime."""
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    out = []
    for f in files:
        st = f.stat()
        out.append((f.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


class InputCache:
    """Opens volume inputs in a thread, and keeps the last few open.

    Every unit of a job reads the same input: its directory is listed and its
    ``.jsonl`` parsed once, not once per pod, and never on the event loop. An input
    whose files changed (size or mtime) is opened again.
    """

    def __init__(self, size: int = INPUT_CACHE_SIZE) -> None:
        self._size = size
        self._open: OrderedDict[Path, tuple[object, VolumeInput]] = OrderedDict()

    async def open(self, path: Path) -> VolumeInput:
        """The input at ``path`` (a file or a directory).

        Raises:
            ValueError: It holds no items, or a file is not ``.npy``/``.jsonl`` data.
            OSError: It cannot be read.
        """
        signature = await asyncio.to_thread(_signature, path)
        known = self._open.get(path)
        if known is not None and known[0] == signature:
            self._open.move_to_end(path)
            return known[1]
        opened = await asyncio.to_thread(VolumeInput, path)
        self._open[path] = (signature, opened)
        self._open.move_to_end(path)
        while len(self._open) > self._size:
            self._open.popitem(last=False)
        return opened


def _count_items(result: ResultFile) -> int | None:
    if not result.job_uid or result.path.is_symlink():
        return None
    try:
        with np.load(result.path, allow_pickle=False) as done:
            name = f"{ENTRY_JOB_UID}.npy"
            if name not in done.zip.namelist():
                return None
            if done.zip.getinfo(name).file_size > _MAX_JOB_UID_ENTRY:
                return None
            owner = done[ENTRY_JOB_UID]
            if owner.dtype.kind != "U" or owner.shape != () or str(owner) != result.job_uid:
                return None
            return len(next(done[k] for k in done.files if k not in RESERVED_ENTRIES))
    except (OSError, ValueError, StopIteration, AttributeError):
        return None


def read_output(file: Path | BinaryIO, name: str) -> npt.NDArray[np.generic] | None:
    """One output of a result file (a path, or its bytes as a file); None when the file or
    the output is missing or unreadable. Blocking: in a thread."""
    try:
        with np.load(file, allow_pickle=False) as z:
            return np.asarray(z[name]) if name in z.files else None
    except (OSError, ValueError):
        return None


async def finished_items(result: ResultFile) -> int | None:
    """How many items a unit's result file holds; None when it is not this job's.

    Only a file written for this job counts: it must name ``result.job_uid`` (entry
    ``job_uid``). A file with no such entry or another job's uid (planted by another
    pod or job, or left by an earlier job of the same name) is not the unit done: the
    unit runs, and its file replaces that one. A symlink counts for nothing either.
    Read in a thread, and the file is closed again.
    """
    return await asyncio.to_thread(_count_items, result)


class ConfigMapInput:
    """Items from a ConfigMap key holding a JSON list (tiny inputs; a ConfigMap is ≤ 1 MiB).

    Args:
        text: The key's value, e.g. ``[[0.0, 0.5, ...], ...]``.
        dtype: The model input's element type.
    """

    def __init__(self, text: str, dtype: str = "float32") -> None:
        try:
            self.array: npt.NDArray[np.generic] = np.asarray(json.loads(text), dtype=dtype)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a JSON list of items: {exc}") from None
        if self.array.ndim < 1 or self.array.shape[0] == 0:
            raise ValueError("the ConfigMap holds no items")

    @property
    def items(self) -> int:
        """How many items it holds."""
        return int(self.array.shape[0])

    def read(self, start: int, end: int) -> npt.NDArray[np.generic]:
        """Items ``[start, end)``."""
        return self.array[start:end]

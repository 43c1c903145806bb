"""Models by content hash: fetched from the gateway, verified, cached.

A model is fetched only through the car's gateway, by sha256 over ``CarLink.FetchModel``
(decision 5), and its sha256 is checked BEFORE anything loads it. A reference that names
any other source (``ModelRef.uri`` other than ``"gateway:"`` or empty: a ``file://`` or
``http://`` URL, a path) is refused before any file or socket is opened: a car never
fetches from a location a cluster user named. Verified models are kept in memory (LRU by
bytes) and, when a cache folder is given, on disk by hash; a disk copy is verified again
on every load. Models are not task data, so caching them on disk is allowed.

Hashing, joining and file reads run in a thread: a simulator runs thousands of agents on
one event loop, and hashing a model of a gigabyte takes seconds. Concurrent lookups of one
hash share one fetch (a whole simulated fleet asks for the same model at once).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from parkfleet.files import write_atomic
from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol import carlink_pb2_grpc

__all__ = [
    "GATEWAY_URI",
    "MAX_MODEL_BYTES",
    "ModelCache",
    "ModelFetchError",
    "ModelHashMismatch",
    "from_gateway",
]

log = logging.getLogger(__name__)

# A car will not take a model larger than this (its GPU could not hold it anyway).
MAX_MODEL_BYTES = 2 * 1024 * 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# The one model source a car knows: its gateway (an empty uri means the same).
GATEWAY_URI = "gateway:"


class ModelFetchError(Exception):
    """The model could not be fetched (a source other than the gateway, no link, bad
    chunking, the gateway's own error)."""


def from_gateway(ref: pb.ModelRef) -> bool:
    """Whether a model reference names the gateway, the only source a car fetches from."""
    return ref.uri in ("", GATEWAY_URI)


class ModelHashMismatch(Exception):
    """The fetched bytes do not have the sha256 the task named; they are never loaded."""


def _check_sha(sha256: str) -> str:
    sha = sha256.lower()
    if not _SHA256.match(sha):
        raise ModelFetchError(f"model sha256 {sha256!r} is not 64 hex digits")
    return sha


def _joined_digest(parts: Sequence[bytes]) -> tuple[bytes, str]:
    """The parts as one bytes object and its sha256 (run in a thread: both take seconds
    for a large model; hashlib releases the GIL)."""
    data = parts[0] if len(parts) == 1 else b"".join(parts)  # one part: no copy
    return data, hashlib.sha256(data).hexdigest()


def _read_file(path: Path, limit: int) -> tuple[bytes, str]:
    """The file's bytes and their sha256 (blocking: run it in a thread)."""
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ModelFetchError(f"{path} is larger than {limit} bytes")
    return data, hashlib.sha256(data).hexdigest()


class ModelCache:
    """Fetches and verifies models, keeping verified ones by hash.

    Args:
        cache_dir: Folder for verified models on disk (None = memory only).
        max_memory_bytes: Bytes of models kept in memory.
        max_model_bytes: Largest model accepted.
    """

    def __init__(
        self,
        cache_dir: Path | None = None,
        max_memory_bytes: int = 512 * 1024 * 1024,
        max_model_bytes: int = MAX_MODEL_BYTES,
    ) -> None:
        self._dir = cache_dir
        self._max_memory = max_memory_bytes
        self._max_model = max_model_bytes
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._memory_bytes = 0
        # Lookups under way by hash: later callers wait on the same one.
        self._loading: dict[str, asyncio.Task[tuple[bytes, bool]]] = {}
        self.fetches = 0  # sources actually contacted (tests check the cache works)

    def _remember(self, sha: str, data: bytes) -> None:
        if sha in self._memory or len(data) > self._max_memory:
            return
        self._memory[sha] = data
        self._memory_bytes += len(data)
        while self._memory_bytes > self._max_memory:
            _, old = self._memory.popitem(last=False)
            self._memory_bytes -= len(old)

    async def get(self, ref: pb.ModelRef, stub: carlink_pb2_grpc.CarLinkStub | None) -> bytes:
        """Returns the model's verified bytes (see :meth:`lookup`)."""
        data, _ = await self.lookup(ref, stub)
        return data

    async def lookup(
        self, ref: pb.ModelRef, stub: carlink_pb2_grpc.CarLinkStub | None
    ) -> tuple[bytes, bool]:
        """Returns the model's verified bytes and whether a source was contacted for them.

        Concurrent lookups of one hash share one fetch. When a shared fetch fails for want
        of a source (e.g. the link of the car that started it dropped), a caller that
        only joined it tries once more with its own ``stub``.

        Args:
            ref: The model's sha256 (and its source, which must be the gateway).
            stub: The car link.

        Returns:
            The bytes, and False when memory or the disk cache had them.

        Raises:
            ModelHashMismatch: The bytes do not hash to ``ref.sha256``.
            ModelFetchError: Anything else that stops the fetch, a source other than the
                gateway first of all (nothing is opened for it).
        """
        if not from_gateway(ref):
            raise ModelFetchError("this car fetches models only from its gateway, by sha256")
        sha = _check_sha(ref.sha256)
        if ref.size_bytes > self._max_model:
            raise ModelFetchError(f"model is {ref.size_bytes} bytes, limit {self._max_model}")
        data = self._memory.get(sha)
        if data is not None:
            self._memory.move_to_end(sha)
            return data, False
        for tries_left in (1, 0):
            loading = self._loading.get(sha)
            joined = loading is not None
            if loading is None:
                loading = asyncio.create_task(self._load(sha, stub), name=f"model {sha}")
                self._loading[sha] = loading
                loading.add_done_callback(functools.partial(self._loaded, sha))
            try:
                # Shielded: a caller that is cancelled (its task was) leaves the fetch
                # running for the others, and the cache gets the model anyway.
                return await asyncio.shield(loading)
            except ModelFetchError as e:
                if not joined or not tries_left:
                    raise
                log.info("shared fetch of model %s failed (%s); fetching it again", sha, e)
        raise AssertionError("unreachable")  # the last try returns or raises

    def _loaded(self, sha: str, task: asyncio.Task[tuple[bytes, bool]]) -> None:
        if self._loading.get(sha) is task:
            del self._loading[sha]
        if not task.cancelled() and task.exception() is None:
            self._remember(sha, task.result()[0])

    async def _load(
        self, sha: str, stub: carlink_pb2_grpc.CarLinkStub | None
    ) -> tuple[bytes, bool]:
        data = await self._from_disk(sha)
        if data is not None:
            return data, False
        data, got = await self._fetch(sha, stub)
        if got != sha:
            raise ModelHashMismatch(
                f"model from the gateway has sha256 {got}, the task expects {sha}; not loaded"
            )
        if self._dir is not None:
            await asyncio.to_thread(write_atomic, self._dir / sha, data)
        return data, True

    async def _from_disk(self, sha: str) -> bytes | None:
        if self._dir is None:
            return None
        path = self._dir / sha
        try:
            data, got = await asyncio.to_thread(_read_file, path, self._max_model)
        except FileNotFoundError:
            return None
        except (OSError, ModelFetchError) as e:
            log.warning("model cache entry %s unreadable, fetching it again: %s", path, e)
            return None
        if got != sha:
            # A corrupted cache entry is dropped and fetched again, never loaded.
            log.warning("model cache entry %s has sha256 %s; dropped, fetching it again", path, got)
            await asyncio.to_thread(path.unlink, True)
            return None
        return data

    async def _fetch(
        self, sha: str, stub: carlink_pb2_grpc.CarLinkStub | None
    ) -> tuple[bytes, str]:
        """The model's bytes from the gateway and their sha256."""
        if stub is None:
            raise ModelFetchError("model is on the gateway but there is no link")
        self.fetches += 1
        parts = await self._fetch_gateway(stub, sha)
        return await asyncio.to_thread(_joined_digest, parts)

    async def _fetch_gateway(self, stub: carlink_pb2_grpc.CarLinkStub, sha: str) -> list[bytes]:
        import grpc

        parts: list[bytes] = []
        offset = 0
        total = -1
        try:
            async for chunk in stub.FetchModel(pb.ModelRequest(sha256=sha)):
                if total < 0:
                    total = int(chunk.total_size)
                    if total > self._max_model:
                        raise ModelFetchError(f"model is {total} bytes, limit {self._max_model}")
                if chunk.offset != offset or chunk.total_size != total:
                    raise ModelFetchError(
                        f"model chunk at offset {chunk.offset} (total {chunk.total_size}), "
                        f"expected offset {offset} (total {total})"
                    )
                offset += len(chunk.data)
                if offset > total:
                    raise ModelFetchError("model chunks exceed the announced size")
                parts.append(chunk.data)
        except grpc.aio.AioRpcError as e:
            raise ModelFetchError(
                f"gateway could not serve model {sha}: {e.code().name} {e.details()}"
            ) from None
        if offset != max(total, 0):
            raise ModelFetchError(f"model stream ended at {offset} of {total} bytes")
        return parts

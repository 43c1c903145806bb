"""Models by content hash: fetched, verified, cached.

A model is fetched through the gateway (``ModelRef.uri == "gateway:"``, by sha256 over
``CarLink.FetchModel``) or from a ``file://`` or ``http(s)://`` URL, and its sha256 is
checked BEFORE anything loads it. Verified models are kept in memory (LRU by bytes) and,
when a cache folder is given, on disk by hash; a disk copy is verified again on every load.
Models are not task data, so caching them on disk is allowed.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import OrderedDict
from pathlib import Path
from urllib.parse import unquote, urlparse

from parkfleet.files import write_atomic
from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol import carlink_pb2_grpc

__all__ = [
    "MAX_MODEL_BYTES",
    "ModelCache",
    "ModelFetchError",
    "ModelHashMismatch",
]

# A car will not take a model larger than this (its GPU could not hold it anyway).
MAX_MODEL_BYTES = 2 * 1024 * 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ModelFetchError(Exception):
    """The model could not be fetched (bad URI, unreachable source, bad chunking)."""


class ModelHashMismatch(Exception):
    """The fetched bytes do not have the sha256 the task named; they are never loaded."""


def _check_sha(sha256: str) -> str:
    sha = sha256.lower()
    if not _SHA256.match(sha):
        raise ModelFetchError(f"model sha256 {sha256!r} is not 64 hex digits")
    return sha


def _verify(sha256: str, data: bytes, source: str) -> None:
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise ModelHashMismatch(
            f"model from {source} has sha256 {got}, the task expects {sha256}; not loaded"
        )


def _read_file(path: Path, limit: int) -> bytes:
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ModelFetchError(f"{path} is larger than {limit} bytes")
    return data


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
        self._locks: dict[str, asyncio.Lock] = {}
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
        """Returns the model's verified bytes.

        Args:
            ref: Where the model is and what its sha256 must be.
            stub: The car link, for ``gateway:`` models.

        Raises:
            ModelHashMismatch: The bytes do not hash to ``ref.sha256``.
            ModelFetchError: Anything else that stops the fetch.
        """
        sha = _check_sha(ref.sha256)
        if ref.size_bytes > self._max_model:
            raise ModelFetchError(f"model is {ref.size_bytes} bytes, limit {self._max_model}")
        lock = self._locks.setdefault(sha, asyncio.Lock())
        async with lock:  # one fetch per hash even when several tasks want it
            data = self._memory.get(sha)
            if data is not None:
                self._memory.move_to_end(sha)
                return data
            data = await self._from_disk(sha)
            if data is None:
                data = await self._fetch(ref, sha, stub)
                _verify(sha, data, ref.uri or "gateway:")
                if self._dir is not None:
                    await asyncio.to_thread(write_atomic, self._dir / sha, data)
            self._remember(sha, data)
            return data

    async def _from_disk(self, sha: str) -> bytes | None:
        if self._dir is None:
            return None
        path = self._dir / sha
        try:
            data = await asyncio.to_thread(_read_file, path, self._max_model)
        except (OSError, ModelFetchError):
            return None
        if hashlib.sha256(data).hexdigest() != sha:
            # A corrupted cache entry is dropped and fetched again, never loaded.
            await asyncio.to_thread(path.unlink, True)
            return None
        return data

    async def _fetch(
        self, ref: pb.ModelRef, sha: str, stub: carlink_pb2_grpc.CarLinkStub | None
    ) -> bytes:
        self.fetches += 1
        uri = ref.uri or "gateway:"
        parsed = urlparse(uri)
        if parsed.scheme == "gateway":
            if stub is None:
                raise ModelFetchError("model is on the gateway but there is no link")
            return await self._fetch_gateway(stub, sha)
        if parsed.scheme == "file":
            try:
                return await asyncio.to_thread(
                    _read_file, Path(unquote(parsed.path)), self._max_model
                )
            except OSError as e:
                raise ModelFetchError(f"cannot read {uri}: {e}") from None
        if parsed.scheme in ("http", "https"):
            return await self._fetch_http(uri)
        raise ModelFetchError(f"model uri {uri!r}: scheme must be gateway:, file:// or http(s)://")

    async def _fetch_gateway(self, stub: carlink_pb2_grpc.CarLinkStub, sha: str) -> bytes:
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
        return b"".join(parts)

    async def _fetch_http(self, uri: str) -> bytes:
        import aiohttp

        try:
            timeout = aiohttp.ClientTimeout(total=600)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(uri) as resp,
            ):
                if resp.status != 200:
                    raise ModelFetchError(f"GET {uri}: HTTP {resp.status}")
                buf = bytearray()
                async for block in resp.content.iter_chunked(1 << 20):
                    buf += block
                    if len(buf) > self._max_model:
                        raise ModelFetchError(f"{uri} is larger than {self._max_model} bytes")
                return bytes(buf)
        except aiohttp.ClientError as e:
            raise ModelFetchError(f"GET {uri}: {e}") from None

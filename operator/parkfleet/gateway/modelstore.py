"""The gateway's model store: a directory of files named by their sha256 hex digest.

Names (``names/<name>`` holds a digest) let pods say ``PARKFLEET_MODEL=digits``. A
pod may also name an ``https://`` or ``s3://`` URI with the model's sha256: the store
downloads it itself (:mod:`parkfleet.gateway.modelfetch`: bounded, verified, one
download for concurrent pods; an ``s3://`` one with the pod's object-store credentials)
and keeps it by hash. It serves ``FetchModel`` in chunks of at most
``MAX_MODEL_CHUNK_BYTES``; that is the only way a car gets a model. It does not re-hash
what it serves: the car verifies the digest before loading (decision 5), so a corrupted
store file is caught where it matters.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from parkfleet.files import write_atomic
from parkfleet.gateway.metrics import GatewayMetrics
from parkfleet.gateway.modelfetch import FetchConfig, ModelFetcher
from parkfleet.objectstore import S3Credentials
from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol.limits import MAX_MODEL_CHUNK_BYTES, ORT_ELEMENT_TYPES
from parkfleet.taskport import (
    ModelFetchFailed,
    ModelInfo,
    ModelNotFound,
    ModelRef,
    ModelUnreadable,
    TensorSpec,
)

__all__ = ["ModelNotFound", "ModelStore"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")
_HASH_CHUNK = 1024 * 1024
# (name, sha256, uri, credentials): what one resolve asks for. Downloads are shared by
# those asking for one digest from one location with one set of keys: a pod naming a
# wrong location or keys fails alone, never another's download of the same model.
_Key = tuple[str, str, str, S3Credentials | None]
# A name may be pointed at another model (``parkfleet gateway --model``, or an admin's
# copy onto the volume); a pod sees the change within this long.
NAME_TTL_S = 10.0


class ModelStore:
    """Models by content hash in ``directory``.

    Args:
        directory: Where the files live; created if missing.
        fetch: How models named by URI are downloaded (defaults: 2 GiB, 900 s, the
            system CAs).
        metrics: Where downloads are counted (none: not counted).
    """

    def __init__(
        self,
        directory: Path,
        fetch: FetchConfig | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.fetcher = ModelFetcher(fetch or FetchConfig(), metrics)
        self._described: dict[str, dict[str, Any]] = {}
        self._resolved: dict[_Key, tuple[float, ModelInfo]] = {}
        self._resolving: dict[_Key, asyncio.Future[ModelInfo]] = {}
        self._downloading: dict[_Key, asyncio.Future[int]] = {}

    def path(self, sha256: str) -> Path:
        """The file of a model.

        Raises:
            ModelNotFound: Malformed digest or no such file.
        """
        if not _SHA256.match(sha256):
            raise ModelNotFound(f"{sha256!r} is not a sha256 hex digest")
        path = self.directory / sha256
        if not path.is_file():
            raise ModelNotFound(f"no model {sha256} in the gateway's store")
        return path

    def add_bytes(self, data: bytes) -> ModelRef:
        """Stores a model (atomically) and returns its reference."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.directory / digest
        if not target.exists():
            write_atomic(target, data)
        return ModelRef(sha256=digest, uri="gateway:", size_bytes=len(data))

    def add_file(self, path: Path, name: str | None = None) -> ModelRef:
        """Stores a copy of a model file and returns its reference.

        Args:
            path: The ONNX file.
            name: A name pods may use instead of the hash (``PARKFLEET_MODEL``).
        """
        ref = self.add_bytes(path.read_bytes())
        if name is not None:
            if not _NAME.match(name):
                raise ValueError(f"{name!r} is not a model name")
            names = self.directory / "names"
            names.mkdir(exist_ok=True)
            write_atomic(names / name, (ref.sha256 + "\n").encode())
        return ref

    def lookup(self, name: str) -> ModelRef:
        """The model stored under ``name``.

        Raises:
            ModelNotFound: No model has that name.
        """
        if not _NAME.match(name):
            raise ModelNotFound(f"{name!r} is not a model name")
        try:
            sha = (self.directory / "names" / name).read_text().strip()
        except FileNotFoundError:
            raise ModelNotFound(f"no model named {name!r} in the gateway's store") from None
        path = self.path(sha)
        return ModelRef(sha256=sha, uri="gateway:", size_bytes=path.stat().st_size)

    async def resolve(
        self,
        name: str = "",
        sha256: str = "",
        uri: str = "",
        credentials: S3Credentials | None = None,
    ) -> ModelInfo:
        """A model by name or digest with its input and output names.

        Served from memory once known (a name for ``NAME_TTL_S``, a digest for good: its
        content cannot change); the first lookup reads the store in a thread, and
        concurrent lookups of one model share it.

        Args:
            name: A name of the store.
            sha256: A digest (wins over ``name``).
            uri: An ``https://`` or ``s3://`` URI to download the model from when the
                store lacks ``sha256`` (which it then needs); a model the store has is
                never downloaded again.
            credentials: The object store of an ``s3://`` URI and its keys (the pod's
                object-store Secret).

        Raises:
            ModelNotFound: No such model, or a malformed name or digest.
            ModelUnreadable: The file is not a model ONNX Runtime loads.
            ModelFetchFailed: The URI is refused or its download failed (or, as
                ``ModelDigestMismatch``, brought other bytes).
        """
        key = (name, sha256, uri, credentials)
        known = self._resolved.get(key)
        if known is not None and (not name or time.monotonic() - known[0] < NAME_TTL_S):
            return known[1]
        pending = self._resolving.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._resolve_or_fetch(key))
            self._resolving[key] = pending
            pending.add_done_callback(lambda _: self._resolving.pop(key, None))
        info = await asyncio.shield(pending)
        self._resolved[key] = (time.monotonic(), info)
        return info

    async def _resolve_or_fetch(self, key: _Key) -> ModelInfo:
        name, sha256, uri, _ = key
        if not uri:
            return await asyncio.to_thread(self._resolve, name, sha256)
        if not _SHA256.match(sha256):
            raise ModelFetchFailed(
                "a model URI needs the model's sha256 (64 hex digits): the gateway checks "
                "what it fetches against it"
            )
        try:
            return await asyncio.to_thread(self._resolve, "", sha256)
        except ModelNotFound:
            pass  # not in the store yet: fetch it
        await self._download(key)
        return await asyncio.to_thread(self._resolve, "", sha256)

    async def _download(self, key: _Key) -> None:
        """Downloads a model into the store; callers asking for one digest from one
        location with one set of keys at once share one download (every pod of a job
        starts together)."""
        _, sha256, uri, credentials = key
        pending = self._downloading.get(key)
        if pending is None:
            pending = asyncio.ensure_future(
                self.fetcher.download(uri, sha256, self.directory / sha256, credentials)
            )
            self._downloading[key] = pending
            pending.add_done_callback(functools.partial(self._downloaded, key))
        await asyncio.shield(pending)

    def _downloaded(self, key: _Key, done: asyncio.Future[int]) -> None:
        if self._downloading.get(key) is done:
            del self._downloading[key]
        if not done.cancelled():
            done.exception()  # retrieved: every caller may have gone (cancelled) meanwhile

    def _resolve(self, name: str, sha256: str) -> ModelInfo:
        ref = self.lookup(name) if name else self._by_digest(sha256)
        described = self.describe(ref.sha256)
        return ModelInfo(
            ref=ref,
            input_name=str(described.get("input", "input")),
            outputs=_tensor_specs(described["output_specs"]),
            inputs=_tensor_specs(described["input_specs"]),
        )

    def _by_digest(self, sha256: str) -> ModelRef:
        path = self.path(sha256)
        return ModelRef(sha256=sha256, uri="gateway:", size_bytes=path.stat().st_size)

    def describe(self, sha256: str) -> dict[str, Any]:
        """The model's inputs and outputs: names, element types, item shapes (read once,
        then cached).

        Raises:
            ModelNotFound: Malformed digest or no such model.
            ModelUnreadable: The file is not a model ONNX Runtime loads.
        """
        path = self.path(sha256)
        known = self._described.get(sha256)
        if known is not None:
            return known
        # The cluster side checks the model itself, once per process: a car's word that
        # a model is corrupt is only ever a fact about that car.
        if _file_sha256(path) != sha256:
            raise ModelUnreadable(f"the store's file of model {sha256} does not match its digest")
        meta = self.directory / "meta" / f"{sha256}.json"
        if meta.exists():
            info: dict[str, Any] = json.loads(meta.read_text())
            if "output_specs" in info and "input_specs" in info:
                self._described[sha256] = info
                return info
        import onnxruntime as ort  # only the gateway's cold path needs it

        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # the runtime's own errors: the file is not a model it loads
            raise ModelUnreadable(f"model {sha256} cannot be loaded: {exc}") from exc
        info = {
            "input": session.get_inputs()[0].name,
            "outputs": [o.name for o in session.get_outputs()],
            "output_specs": [_described(o) for o in session.get_outputs()],
            "input_specs": [_described(i) for i in session.get_inputs()],
        }
        # Callers run this in threads, several at once: a reader must never see the
        # file half-written (an empty file once failed a whole job's first pods).
        write_atomic(meta, json.dumps(info).encode())
        self._described[sha256] = info
        return info

    async def chunks(self, sha256: str) -> AsyncIterator[pb.ModelChunk]:
        """The model's bytes as wire chunks, read off the event loop.

        Raises:
            ModelNotFound: Malformed digest or no such model.
        """
        path = self.path(sha256)
        f = await asyncio.to_thread(path.open, "rb")
        try:
            total = os.fstat(f.fileno()).st_size
            offset = 0
            while True:
                data = await asyncio.to_thread(f.read, MAX_MODEL_CHUNK_BYTES)
                if not data:
                    break
                yield pb.ModelChunk(offset=offset, total_size=total, data=data)
                offset += len(data)
        finally:
            f.close()


def _described(node: Any) -> dict[str, Any]:
    """An ONNX Runtime input's or output's name, wire dtype and item shape, as JSON."""
    return {
        "name": node.name,
        "dtype": ORT_ELEMENT_TYPES.get(str(node.type), ""),
        "item_shape": [d if isinstance(d, int) else None for d in (node.shape or [])[1:]],
    }


def _tensor_specs(described: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(
            name=str(o["name"]),
            dtype=str(o["dtype"]),
            item_shape=tuple(d if isinstance(d, int) else None for d in o["item_shape"]),
        )
        for o in described
    )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()

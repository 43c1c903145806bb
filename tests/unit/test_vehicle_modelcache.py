"""Model cache: fetched only from the gateway, verified before use, cached by hash,
corrupted copies never loaded, hashed off the event loop, one fetch for concurrent
lookups; a reference to any other source is refused before anything is opened."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.vehicle import modelcache
from parkfleet.vehicle.modelcache import ModelCache, ModelFetchError, ModelHashMismatch
from tests.file_access import watching
from tests.loop_ticks import SLOW_HASH_S, LoopTicks, slow_sha256

MODEL = b"not really onnx, but bytes are bytes" * 100
SHA = hashlib.sha256(MODEL).hexdigest()


class StoreStub:
    """The gateway's ``FetchModel`` in memory (a unit test's stand-in for the link):
    serves ``models`` by hash in chunks, and counts the requests."""

    def __init__(self, models: dict[str, bytes], chunk: int = 1000, down: bool = False) -> None:
        self.models = models
        self.chunk = chunk
        self.down = down
        self.requests: list[str] = []

    def FetchModel(self, request: pb.ModelRequest) -> AsyncIterator[pb.ModelChunk]:
        self.requests.append(request.sha256)
        return self._serve(request.sha256)

    async def _serve(self, sha: str) -> AsyncIterator[pb.ModelChunk]:
        await asyncio.sleep(0)
        if self.down or sha not in self.models:
            code = grpc.StatusCode.UNAVAILABLE if self.down else grpc.StatusCode.NOT_FOUND
            raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "no")
        data = self.models[sha]
        for offset in range(0, len(data), self.chunk):
            yield pb.ModelChunk(
                offset=offset, total_size=len(data), data=data[offset : offset + self.chunk]
            )


def ref(sha: str = SHA, uri: str = "gateway:", size: int = len(MODEL)) -> pb.ModelRef:
    return pb.ModelRef(uri=uri, sha256=sha, size_bytes=size)


async def test_gateway_fetch_verifies_and_caches(tmp_path: Path) -> None:
    stub = StoreStub({SHA: MODEL})
    cache = ModelCache(cache_dir=tmp_path / "cache")
    assert await cache.get(ref(), stub) == MODEL
    assert await cache.get(ref(uri=""), stub) == MODEL  # an empty uri is the gateway too
    assert stub.requests == [SHA]  # the second get is served from the cache
    assert cache.fetches == 1
    assert (tmp_path / "cache" / SHA).read_bytes() == MODEL
    # A fresh cache on the same folder reads the verified disk copy, not the link.
    assert await ModelCache(cache_dir=tmp_path / "cache").get(ref(), stub) == MODEL
    assert stub.requests == [SHA]


async def test_mismatch_is_refused_and_not_cached(tmp_path: Path) -> None:
    stub = StoreStub({SHA: MODEL + b"tampered"})
    cache = ModelCache(cache_dir=tmp_path / "cache")
    with pytest.raises(ModelHashMismatch, match="the task expects"):
        await cache.get(ref(), stub)
    assert not (tmp_path / "cache" / SHA).exists()


async def test_corrupted_disk_copy_is_refetched(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / SHA).write_bytes(b"bit rot")
    stub = StoreStub({SHA: MODEL})
    cache = ModelCache(cache_dir=tmp_path / "cache")
    assert await cache.get(ref(), stub) == MODEL
    assert cache.fetches == 1
    assert (tmp_path / "cache" / SHA).read_bytes() == MODEL


async def test_bad_refs() -> None:
    cache = ModelCache()
    stub = StoreStub({})
    with pytest.raises(ModelFetchError, match="64 hex"):
        await cache.get(ref(sha="abc"), stub)
    with pytest.raises(ModelFetchError, match="no link"):
        await cache.get(ref(), None)
    with pytest.raises(ModelFetchError, match="could not serve"):
        await cache.get(ref(), stub)
    with pytest.raises(ModelFetchError, match="limit"):
        await cache.get(ref(size=3 * 1024**3), stub)


@pytest.mark.parametrize(
    "uri",
    [
        "file://{sentinel}",
        "{sentinel}",
        "http://127.0.0.1:9/model.onnx",
        "https://127.0.0.1:9/model.onnx",
        "ftp://127.0.0.1:9/model.onnx",
        "s3://bucket/model.onnx",
    ],
)
async def test_a_source_other_than_the_gateway_is_refused_before_anything_opens(
    tmp_path: Path, uri: str
) -> None:
    sentinel = tmp_path / "owner-secret"
    sentinel.write_bytes(MODEL)  # its real sha256: a car that read it would accept it
    stub = StoreStub({SHA: MODEL})
    cache = ModelCache(cache_dir=tmp_path / "cache")
    with watching() as touched, pytest.raises(ModelFetchError, match="only from its gateway"):
        await cache.get(ref(uri=uri.format(sentinel=sentinel)), stub)
    assert touched.opened == []  # no file at all: not the sentinel, not the disk cache
    assert touched.connected == []
    assert stub.requests == []
    assert cache.fetches == 0
    with watching() as control:  # the watch does see opens, in the cache's threads too
        assert await cache.get(ref(), stub) == MODEL
    assert any(p.startswith(str(tmp_path / "cache")) for p in control.opened), control


async def test_hashing_a_model_does_not_block_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = b"\x5a" * (64 * 1024 * 1024)
    sha = hashlib.sha256(big).hexdigest()
    stub = StoreStub({sha: big}, chunk=4 * 1024 * 1024)
    monkeypatch.setattr(modelcache, "hashlib", SimpleNamespace(sha256=slow_sha256))
    for cache in (ModelCache(cache_dir=tmp_path / "cache"), ModelCache(tmp_path / "cache")):
        # From the gateway first, then (a fresh cache on the same folder) from the disk copy.
        ticks = LoopTicks()
        started = time.perf_counter()
        assert await cache.get(ref(sha, size=len(big)), stub) == big
        took = time.perf_counter() - started
        await ticks.stop()
        assert took >= SLOW_HASH_S  # the slow hash ran
        # Blocked, the loop would not have ticked for SLOW_HASH_S; generous for a busy box.
        assert ticks.largest_gap_s < SLOW_HASH_S / 2, ticks.largest_gap_s
    assert (tmp_path / "cache" / sha).exists()
    assert stub.requests == [sha]


async def test_concurrent_lookups_of_one_model_share_one_fetch() -> None:
    stub = StoreStub({SHA: MODEL})
    cache = ModelCache(max_memory_bytes=0)  # nothing kept: only sharing saves fetches
    got = await asyncio.gather(*(cache.lookup(ref(), stub) for _ in range(50)))
    assert all(data == MODEL for data, _ in got)
    assert all(fetched for _, fetched in got)  # each waited for a source, none for memory
    assert cache.fetches == 1
    # A cancelled caller leaves the shared fetch running for the others.
    first = asyncio.create_task(cache.get(ref(), stub))
    second = asyncio.create_task(cache.get(ref(), stub))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == MODEL
    assert first.cancelled()


async def test_a_caller_that_joined_a_failed_fetch_tries_its_own_link() -> None:
    cache = ModelCache()
    broken, working = StoreStub({SHA: MODEL}, down=True), StoreStub({SHA: MODEL})
    failed, joined = await asyncio.gather(
        cache.get(ref(), broken), cache.get(ref(), working), return_exceptions=True
    )
    assert isinstance(failed, ModelFetchError)  # the one that started it sees its failure
    assert joined == MODEL
    assert cache.fetches == 2
    assert await cache.lookup(ref(), working) == (MODEL, False)  # now in memory

"""Model cache: verified before use, cached by hash, corrupted copies never loaded, hashed
off the event loop, one fetch for concurrent lookups."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.vehicle import modelcache
from parkfleet.vehicle.modelcache import ModelCache, ModelFetchError, ModelHashMismatch
from tests.loop_ticks import SLOW_HASH_S, LoopTicks, slow_sha256

MODEL = b"not really onnx, but bytes are bytes" * 100
SHA = hashlib.sha256(MODEL).hexdigest()


def ref(path: Path, sha: str = SHA) -> pb.ModelRef:
    return pb.ModelRef(uri=path.as_uri(), sha256=sha, size_bytes=len(MODEL))


async def test_file_fetch_verifies_and_caches(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(MODEL)
    cache = ModelCache(cache_dir=tmp_path / "cache")
    assert await cache.get(ref(src), None) == MODEL
    src.unlink()  # the second get is served from the cache
    assert await cache.get(ref(src), None) == MODEL
    assert cache.fetches == 1
    assert (tmp_path / "cache" / SHA).read_bytes() == MODEL


async def test_mismatch_is_refused_and_not_cached(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(MODEL + b"tampered")
    cache = ModelCache(cache_dir=tmp_path / "cache")
    with pytest.raises(ModelHashMismatch):
        await cache.get(ref(src), None)
    assert not (tmp_path / "cache" / SHA).exists()


async def test_corrupted_disk_copy_is_refetched(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(MODEL)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / SHA).write_bytes(b"bit rot")
    cache = ModelCache(cache_dir=tmp_path / "cache")
    assert await cache.get(ref(src), None) == MODEL
    assert cache.fetches == 1


async def test_bad_refs(tmp_path: Path) -> None:
    cache = ModelCache()
    with pytest.raises(ModelFetchError, match="64 hex"):
        await cache.get(pb.ModelRef(uri="gateway:", sha256="abc"), None)
    with pytest.raises(ModelFetchError, match="scheme"):
        await cache.get(pb.ModelRef(uri="ftp://x/y", sha256=SHA), None)
    with pytest.raises(ModelFetchError, match="no link"):
        await cache.get(pb.ModelRef(uri="gateway:", sha256=SHA), None)
    with pytest.raises(ModelFetchError, match="cannot read"):
        await cache.get(ref(tmp_path / "missing"), None)


async def test_hashing_a_model_does_not_block_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = b"\x5a" * (64 * 1024 * 1024)
    src = tmp_path / "big.onnx"
    src.write_bytes(big)
    big_ref = pb.ModelRef(
        uri=src.as_uri(), sha256=hashlib.sha256(big).hexdigest(), size_bytes=len(big)
    )
    monkeypatch.setattr(modelcache, "hashlib", SimpleNamespace(sha256=slow_sha256))
    for cache in (ModelCache(cache_dir=tmp_path / "cache"), ModelCache(tmp_path / "cache")):
        # From the source first, then (a fresh cache on the same folder) from the disk copy.
        ticks = LoopTicks()
        started = time.perf_counter()
        assert await cache.get(big_ref, None) == big
        took = time.perf_counter() - started
        await ticks.stop()
        assert took >= SLOW_HASH_S  # the slow hash ran
        # Blocked, the loop would not have ticked for SLOW_HASH_S; generous for a busy box.
        assert ticks.largest_gap_s < SLOW_HASH_S / 2, ticks.largest_gap_s
    assert (tmp_path / "cache" / big_ref.sha256).exists()


async def test_concurrent_lookups_of_one_model_share_one_fetch(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(MODEL)
    cache = ModelCache(max_memory_bytes=0)  # nothing kept: only sharing saves fetches
    got = await asyncio.gather(*(cache.lookup(ref(src), None) for _ in range(50)))
    assert all(data == MODEL for data, _ in got)
    assert all(fetched for _, fetched in got)  # each waited for a source, none for memory
    assert cache.fetches == 1
    # A cancelled caller leaves the shared fetch running for the others.
    first = asyncio.create_task(cache.get(ref(src), None))
    second = asyncio.create_task(cache.get(ref(src), None))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == MODEL
    assert first.cancelled()


async def test_a_caller_that_joined_a_failed_fetch_tries_its_own_source(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(MODEL)
    cache = ModelCache()
    missing, present = ref(tmp_path / "gone.onnx"), ref(src)
    failed, joined = await asyncio.gather(
        cache.get(missing, None), cache.get(present, None), return_exceptions=True
    )
    assert isinstance(failed, ModelFetchError)  # the one that started it sees its failure
    assert joined == MODEL
    assert cache.fetches == 2
    assert await cache.lookup(present, None) == (MODEL, False)  # now in memory

"""Model cache: verified before use, cached by hash, corrupted copies never loaded."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.vehicle.modelcache import ModelCache, ModelFetchError, ModelHashMismatch

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

"""The local S3 server (versitygw from its Go module, ``parkfleet.devs3``) with an async
client (obstore): objects written through the S3 API are files on disk, ranged reads return
exactly the bytes asked for, a wrong key is refused, and stopping leaves nothing running.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import obstore
import pytest
from obstore.store import S3Store

from parkfleet import devs3

pytestmark = pytest.mark.integration


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[devs3.S3Server]:
    if not devs3.default_binary().exists():
        pytest.fail("versitygw is not built: run `make versitygw` (make test does)")
    server = devs3.start(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def _store(s3: devs3.S3Server, bucket: str, secret: str | None = None) -> S3Store:
    return S3Store(
        bucket,
        endpoint=s3.endpoint,
        access_key_id=s3.access_key,
        secret_access_key=secret or s3.secret_key,
        region="us-east-1",
        client_options={"allow_http": True},
    )


async def test_put_then_ranged_reads_return_exactly_the_bytes(s3: devs3.S3Server) -> None:
    folder = s3.bucket("jobs")
    store = _store(s3, "jobs")
    data = bytes(range(256)) * 4096  # 1 MiB, every offset tells its byte
    await obstore.put_async(store, "inputs/items.bin", data)
    assert (folder / "inputs" / "items.bin").read_bytes() == data
    for start, end in ((0, 1), (1000, 5000), (len(data) - 7, len(data))):
        got = await obstore.get_range_async(store, "inputs/items.bin", start=start, end=end)
        assert bytes(got) == data[start:end]
    listed = [m["path"] for batch in obstore.list(store, prefix="inputs/") for m in batch]
    assert listed == ["inputs/items.bin"]


async def test_a_wrong_key_is_refused_and_writes_nothing(s3: devs3.S3Server) -> None:
    folder = s3.bucket("jobs")
    with pytest.raises(Exception, match=r"(?i)signature|denied|forbidden|403"):
        await obstore.put_async(_store(s3, "jobs", secret="wrong"), "x", b"nope")
    assert not (folder / "x").exists()


def test_stop_leaves_nothing_running(tmp_path: Path) -> None:
    server = devs3.start(tmp_path)
    server.stop()
    assert server.proc.poll() is not None
    with pytest.raises(urllib.error.URLError, match=r"(?i)refused"):
        urllib.request.urlopen(server.endpoint, timeout=1)


def test_a_missing_binary_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(devs3.S3Error, match="make versitygw"):
        devs3.start(tmp_path, binary=tmp_path / "nope")

"""Unit results as objects in a real S3 server (versitygw): a unit counts as done only when
its object names this job, an upload is counted, and an upload that fails leaves no object."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import obstore
import pytest

from parkfleet import devs3
from parkfleet.nodeagent.resultobject import ResultObject
from parkfleet.objectstore import S3Credentials, S3Location, s3_store

pytestmark = pytest.mark.integration


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[devs3.S3Server]:
    if not devs3.default_binary().exists():
        pytest.fail("versitygw is not built: run `make versitygw` (make test does)")
    server = devs3.start(tmp_path / "s3")
    try:
        server.bucket("jobs")
        yield server
    finally:
        server.stop()


def creds(s3: devs3.S3Server, secret: str = "") -> S3Credentials:
    return S3Credentials(s3.endpoint, s3.access_key, secret or s3.secret_key)


async def test_a_unit_is_done_only_when_its_object_names_the_job(
    s3: devs3.S3Server, tmp_path: Path
) -> None:
    where = S3Location("jobs", "out/uid-1/unit-000003.npz")
    uploads: list[tuple[int, bool]] = []
    mine = ResultObject(where, creds(s3), "uid-1", lambda n, ok: uploads.append((n, ok)))
    assert await mine.finished_items() is None  # nothing there yet
    file = tmp_path / "unit.npz"
    file.write_bytes(b"x" * 1000)
    await mine.upload(file, 250, 750)
    assert await mine.finished_items() == 250
    assert uploads == [(1000, True)]
    assert (
        s3.root / "jobs" / "out" / "uid-1" / "unit-000003.npz"
    ).read_bytes() == file.read_bytes()
    # The same key written by another job, or planted without metadata, is not this unit done.
    assert await ResultObject(where, creds(s3), "uid-2").finished_items() is None
    obstore.put(s3_store(creds(s3), "jobs"), "out/uid-1/unit-000004.npz", b"planted")
    planted = ResultObject(S3Location("jobs", "out/uid-1/unit-000004.npz"), creds(s3), "uid-1")
    assert await planted.finished_items() is None


async def test_an_output_is_read_back_from_the_object(s3: devs3.S3Server, tmp_path: Path) -> None:
    file = tmp_path / "unit.npz"
    np.savez(file, label=np.arange(5), first_item=np.array([0]))
    result = ResultObject(S3Location("jobs", "out/uid-1/unit-000001.npz"), creds(s3), "uid-1")
    await result.upload(file, 5, 0)
    got = await result.read_output("label")
    assert got is not None
    assert got.tolist() == [0, 1, 2, 3, 4]
    assert await result.read_output("probabilities") is None
    gone = ResultObject(S3Location("jobs", "out/uid-1/unit-000009.npz"), creds(s3), "uid-1")
    assert await gone.read_output("label") is None


async def test_a_refused_upload_is_counted_and_leaves_no_object(
    s3: devs3.S3Server, tmp_path: Path
) -> None:
    uploads: list[tuple[int, bool]] = []
    where = S3Location("jobs", "out/uid-1/unit-000000.npz")
    wrong = ResultObject(
        where, creds(s3, "not-the-key"), "uid-1", lambda n, ok: uploads.append((n, ok))
    )
    file = tmp_path / "unit.npz"
    file.write_bytes(b"y" * 10)
    with pytest.raises(Exception, match=r"(?i)signature|denied|forbidden|403"):
        await wrong.upload(file, 10, 0)
    assert uploads == [(0, False)]
    assert not (s3.root / "jobs" / "out").exists()

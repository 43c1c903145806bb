"""Where a task's items come from on the data volume, and where its results go."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from parkfleet.nodeagent.resultspool import ResultSpool
from parkfleet.nodeagent.taskio import VolumeInput, resolve_under


async def test_a_directory_of_npy_and_jsonl_files_is_one_numbered_input(tmp_path: Path) -> None:
    a = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    b = np.arange(100, 100 + 4 * 2, dtype=np.float32).reshape(4, 2)
    np.save(tmp_path / "00-a.npy", a)
    (tmp_path / "01-b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in b.tolist()))
    (tmp_path / "notes.txt").write_text("not an input")
    source = VolumeInput(tmp_path)
    assert source.items == 14
    got = await source.read(8, 12)  # across the two files
    assert np.array_equal(got, np.concatenate([a[8:], b[:2]]))
    assert np.array_equal(await source.read(0, 14), np.concatenate([a, b]))


def test_an_empty_directory_says_so(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"holds no \.npy or \.jsonl files"):
        VolumeInput(tmp_path)


def test_paths_cannot_leave_the_data_root(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(ValueError, match="outside the data root"):
        resolve_under(tmp_path / "root", "../outside")


async def test_the_result_file_appears_whole_on_completion(tmp_path: Path) -> None:
    path = tmp_path / "out" / "unit-000001.npz"
    spool = tmp_path / "out" / ".spool" / "task"
    sink = ResultSpool(path, spool)
    probs = np.arange(9, dtype=np.float32).reshape(3, 3)
    await sink.write(10, {"label": np.array([1, 2]), "p": probs[:2]})
    assert not path.exists()
    await sink.write(12, {"label": np.array([3]), "p": probs[2:]})
    assert (await sink.arrays())["p"].tolist() == probs.tolist()  # read back from the spool
    await sink.complete()
    with np.load(path) as z:
        assert z["label"].tolist() == [1, 2, 3]
        assert z["p"].tolist() == probs.tolist()
        assert int(z["first_item"][0]) == 10
    await sink.discard()
    assert sorted(p.name for p in path.parent.iterdir()) == [".spool", "unit-000001.npz"]
    assert not spool.exists()


async def test_a_spool_left_by_an_earlier_process_is_cleared(tmp_path: Path) -> None:
    spool = tmp_path / ".spool" / "task"
    spool.mkdir(parents=True)
    (spool / "0.bin").write_bytes(b"stale bytes of an earlier gateway")
    sink = ResultSpool(tmp_path / "unit.npz", spool)
    await sink.write(0, {"label": np.array([7, 8])})
    await sink.complete()
    with np.load(tmp_path / "unit.npz") as z:
        assert z["label"].tolist() == [7, 8]


async def test_a_chunk_that_changes_its_shape_is_refused(tmp_path: Path) -> None:
    sink = ResultSpool(None, tmp_path / "s")
    await sink.write(0, {"p": np.zeros((2, 3), np.float32)})
    with pytest.raises(ValueError, match="item shape"):
        await sink.write(2, {"p": np.zeros((2, 4), np.float32)})


async def test_without_a_spool_nothing_is_kept() -> None:
    lines: list[int] = []
    sink = ResultSpool(None, None, on_chunk=lambda first, _: lines.append(first))
    await sink.write(5, {"p": np.zeros((2, 3), np.float32)})
    assert (sink.items, await sink.arrays(), lines) == (2, {}, [5])

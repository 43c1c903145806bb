"""Where a task's items come from on the data volume, and where its results go."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from parkfleet.nodeagent.taskio import DirectorySink, VolumeInput, resolve_under


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
    sink = DirectorySink(path)
    await sink.write(10, {"label": np.array([1, 2])})
    assert not path.exists()
    await sink.write(12, {"label": np.array([3])})
    await sink.complete()
    with np.load(path) as z:
        assert z["label"].tolist() == [1, 2, 3]
        assert int(z["first_item"][0]) == 10
    assert [p.name for p in path.parent.iterdir()] == ["unit-000001.npz"]

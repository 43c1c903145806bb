"""Where a task's items come from on the data volume, and where its results go."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from parkfleet.nodeagent.resultspool import ResultSpool
from parkfleet.nodeagent.taskio import (
    ResultFile,
    VolumeInput,
    finished_items,
    namespace_area,
    resolve_in_area,
)

JOB = "6f1e0c2a-4b7d-4e57-9a3c-0d2b8e9f1a11"


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


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A data root with two namespaces' areas, ``a`` holding an input."""
    root = tmp_path / "data"
    (root / "a" / "digits").mkdir(parents=True)
    (root / "b").mkdir()
    np.save(root / "a" / "digits" / "x.npy", np.zeros((3, 2), np.float32))
    return root


def test_a_pods_paths_are_in_its_namespaces_area(root: Path) -> None:
    assert resolve_in_area(root, "a", "digits/x.npy") == (root / "a" / "digits" / "x.npy").resolve()
    # The same name in another namespace is that namespace's file, not a's.
    assert resolve_in_area(root, "b", "digits/x.npy") == (root / "b" / "digits" / "x.npy").resolve()
    assert namespace_area(root, "b") == root / "b"
    # An output folder that does not exist yet is still placed inside the area.
    assert resolve_in_area(root, "b", "results/new").is_relative_to((root / "b").resolve())


@pytest.mark.parametrize(
    "path",
    ["../a/digits/x.npy", "digits/../../a/digits/x.npy", "..", "../../etc/passwd"],
)
def test_dot_dot_cannot_leave_the_area(root: Path, path: str) -> None:
    with pytest.raises(ValueError, match="leads outside namespace b's area"):
        resolve_in_area(root, "b", path)


def test_an_absolute_path_is_refused_even_inside_the_area(root: Path) -> None:
    for path in ("/etc/passwd", str(root / "a" / "digits" / "x.npy"), str(root / "b")):
        with pytest.raises(ValueError, match="is an absolute path"):
            resolve_in_area(root, "b", path)


def test_a_symlink_out_of_the_area_is_refused(root: Path) -> None:
    (root / "b" / "stolen").symlink_to(root / "a" / "digits", target_is_directory=True)
    (root / "b" / "x.npy").symlink_to(root / "a" / "digits" / "x.npy")
    (root / "b" / "up").symlink_to(root, target_is_directory=True)
    for path in ("stolen/x.npy", "stolen", "x.npy", "up/a/digits/x.npy", "up"):
        with pytest.raises(ValueError, match="leads outside namespace b's area"):
            resolve_in_area(root, "b", path)


def test_a_symlink_inside_the_area_and_an_area_the_admin_linked_are_followed(
    root: Path, tmp_path: Path
) -> None:
    (root / "a" / "latest").symlink_to("digits", target_is_directory=True)
    assert resolve_in_area(root, "a", "latest/x.npy") == (root / "a" / "digits" / "x.npy").resolve()
    disk = tmp_path / "other-disk" / "c"
    disk.mkdir(parents=True)
    (root / "c").symlink_to(disk, target_is_directory=True)
    assert resolve_in_area(root, "c", "in.npy") == disk.resolve() / "in.npy"


@pytest.mark.parametrize("namespace", ["", "..", ".", "A", "a/b", "-a", "a" * 64])
def test_a_namespace_is_a_dns_label(root: Path, namespace: str) -> None:
    with pytest.raises(ValueError, match="not a namespace name"):
        resolve_in_area(root, namespace, "x.npy")


async def unit_file(path: Path, job_uid: str, labels: list[int]) -> ResultFile:
    """A unit file written the way the node agent writes one."""
    target = ResultFile(path, job_uid)
    sink = ResultSpool(target, path.parent / ".spool" / path.stem)
    await sink.write(0, {"label": np.array(labels)})
    await sink.complete()
    return target


async def test_a_unit_file_names_its_job_and_counts_only_for_it(tmp_path: Path) -> None:
    path = tmp_path / "unit-000000.npz"
    mine = await unit_file(path, JOB, [1, 2, 3])
    with np.load(path, allow_pickle=False) as z:
        assert str(z["job_uid"]) == JOB
        assert z["label"].tolist() == [1, 2, 3]
    assert await finished_items(mine) == 3
    # The same file is not another job's unit, nor a plain pod's.
    assert await finished_items(ResultFile(path, "another-uid")) is None
    assert await finished_items(ResultFile(path)) is None


async def test_a_planted_unit_file_counts_for_nothing(tmp_path: Path) -> None:
    target = ResultFile(tmp_path / "unit-000000.npz", JOB)
    # Planted by hand: results, but no job (as a plain pod's or an older file has).
    np.savez(target.path, label=np.array([9, 9, 9]), first_item=np.array([0]))
    assert await finished_items(target) is None
    # Another job's uid, as a string of the wrong shape, or a huge entry: not this job's.
    for uid in (np.array("another-uid"), np.array([JOB]), np.array(JOB * 100)):
        np.savez(target.path, label=np.array([9]), first_item=np.array([0]), job_uid=uid)
        assert await finished_items(target) is None
    # A symlink to this job's real unit file elsewhere: not a unit file here.
    real = await unit_file(tmp_path / "elsewhere" / "unit-000000.npz", JOB, [1])
    target.path.unlink()
    target.path.symlink_to(real.path)
    assert await finished_items(target) is None
    # Garbage is no unit file either.
    target.path.unlink()
    target.path.write_bytes(b"not a zip")
    assert await finished_items(target) is None


async def test_the_units_file_replaces_a_planted_one_whole(tmp_path: Path) -> None:
    path = tmp_path / "unit-000000.npz"
    np.savez(path, label=np.array([9, 9, 9]), first_item=np.array([0]), job_uid=np.array("x"))
    planted_inode = path.stat().st_ino
    target = await unit_file(path, JOB, [1, 2, 3])
    assert path.stat().st_ino != planted_inode  # a new file renamed over it, not rewritten
    with np.load(path, allow_pickle=False) as z:
        assert (str(z["job_uid"]), z["label"].tolist()) == (JOB, [1, 2, 3])
    assert await finished_items(target) == 3
    assert sorted(os.listdir(tmp_path)) == [".spool", "unit-000000.npz"]  # no temporary left


async def test_the_result_file_appears_whole_on_completion(tmp_path: Path) -> None:
    path = tmp_path / "out" / "unit-000001.npz"
    spool = tmp_path / "out" / ".spool" / "task"
    sink = ResultSpool(ResultFile(path), spool)
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
        assert "job_uid" not in z.files  # a plain pod's result names no job
    await sink.discard()
    assert sorted(p.name for p in path.parent.iterdir()) == [".spool", "unit-000001.npz"]
    assert not spool.exists()


async def test_a_spool_left_by_an_earlier_process_is_cleared(tmp_path: Path) -> None:
    spool = tmp_path / ".spool" / "task"
    spool.mkdir(parents=True)
    (spool / "0.bin").write_bytes(b"stale bytes of an earlier gateway")
    sink = ResultSpool(ResultFile(tmp_path / "unit.npz"), spool)
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

"""The images' builder (``hack/images``) on what needs no root: reading the Dockerfiles,
the build context, and layers that say what changed.

The Dockerfiles' shared stages are the ones the builder reproduces on this machine, so
that ``make images`` and ``docker build`` make the same image; a layer of a change
unpacks to the changed tree; equal files give equal digests.
"""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "hack" / "images"))

from pfimage import BuildError  # noqa: E402
from pfimage.build import IMAGES, LastStage  # noqa: E402
from pfimage.dockerfile import Instruction, expand, parse  # noqa: E402
from pfimage.layers import changes, snapshot, unpack, write_archive, write_layer  # noqa: E402
from pfimage.stages import base_recipe, runtime_pins, wheels_context  # noqa: E402

DOCKERFILES = sorted({REPO / i.dockerfile for i in IMAGES})


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfiles_are_what_the_builder_reproduces(path: Path) -> None:
    df = parse(path)
    assert df.global_args == {"BASE": "debian:bookworm-slim"}
    recipe = base_recipe(df, {})
    assert recipe.suite == "bookworm"
    assert {"python3", "python3-venv"} <= set(recipe.packages)
    LastStage.check(df)
    files = wheels_context(df)
    assert {"pyproject.toml", "README.md", "operator/parkfleet/cli.py"} <= set(files)
    assert not [f for f in files if "__pycache__" in f or f.endswith((".pyc", ".egg-info"))]


def test_both_images_have_one_base() -> None:
    # One base: the operator's and the agent's layers below their own steps are shared.
    recipes = {base_recipe(parse(p), {}) for p in DOCKERFILES}
    assert len(recipes) == 1


def test_a_changed_wheels_stage_is_refused(tmp_path: Path) -> None:
    text = (REPO / "images" / "agent" / "Dockerfile").read_text()
    changed = tmp_path / "Dockerfile"
    changed.write_text(text.replace("--wheel-dir /wheels .", "--wheel-dir /wheels --pre ."))
    with pytest.raises(BuildError, match="the wheels stage is not the one"):
        wheels_context(parse(changed))


def test_unsupported_instructions_fail_before_building(tmp_path: Path) -> None:
    text = (REPO / "images" / "operator" / "Dockerfile").read_text()
    df_path = tmp_path / "Dockerfile"
    df_path.write_text(text + "HEALTHCHECK CMD true\n")
    with pytest.raises(BuildError, match="HEALTHCHECK is not supported"):
        LastStage.check(parse(df_path))
    df_path.write_text(text.replace("from=wheels", "from=base", 1))
    with pytest.raises(BuildError, match="only --mount=type=bind,from=wheels"):
        LastStage.check(parse(df_path))


def test_parsing_joins_lines_and_expands_variables(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text(
        "ARG BASE=debian:bookworm-slim\nFROM ${BASE} AS base\n"
        "RUN a \\\n# a comment inside\n && b\nFROM base\nENV P=/x:$PATH\n"
    )
    df = parse(path)
    assert [s.name for s in df.stages] == ["base", None]
    assert df.stages[0].body == [Instruction("RUN", "a  && b", 3)]
    assert expand("${P:-none} $Q ${Q:-d} ${P:+set}", {"P": "p"}) == "p  d set"


def test_the_pins_are_the_venvs_runtime_closure() -> None:
    pins = runtime_pins()
    assert {"kopf", "grpcio", "onnxruntime", "numpy", "protobuf", "aiohttp"} <= pins.keys()
    assert "pytest" not in pins  # a test extra, not the package's


def _tree(root: Path) -> dict[str, tuple[str, bytes | str | None]]:
    found: dict[str, tuple[str, bytes | str | None]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel.split("/")[0] in ("dev", "proc", "sys", "tmp"):
            continue
        if path.is_symlink():
            found[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            found[rel] = ("dir", None)
        else:
            found[rel] = (oct(path.stat().st_mode & 0o7777), path.read_bytes())
    return found


def test_a_layer_of_a_change_unpacks_to_the_changed_tree(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    (lower / "etc").mkdir(parents=True)
    (lower / "etc" / "passwd").write_text("root:x:0:0\n")
    (lower / "gone").mkdir()
    (lower / "gone" / "file").write_text("bye")
    (lower / "keep").write_text("same")
    os.link(lower / "keep", lower / "keep-link")
    upper = tmp_path / "upper"
    shutil.copytree(lower, upper, symlinks=True)
    (upper / "etc" / "passwd").write_text("root:x:0:0\nparkfleet:x:10001:10001\n")
    shutil.rmtree(upper / "gone")
    (upper / "opt" / "venv" / "bin").mkdir(parents=True)
    (upper / "opt" / "venv" / "bin" / "python3").symlink_to("/usr/bin/python3")
    (upper / "run.sh").write_text("#!/bin/sh\n")
    (upper / "run.sh").chmod(0o755)

    changed, deleted = changes(snapshot(lower), snapshot(upper))
    assert "keep" not in changed
    assert "etc" not in changed  # a folder's time is not a change
    assert deleted == ["gone"]
    base = write_layer(lower, sorted(snapshot(lower)), [], tmp_path / "base.tar.gz", None)
    top = write_layer(upper, changed, deleted, tmp_path / "top.tar.gz", mtime=1704067200)
    with tarfile.open(top.path) as tar:
        assert ".wh.gone" in tar.getnames()  # the folder, not each of its files
        assert "gone/file" not in tar.getnames()
    archive = tmp_path / "image.oci.tar"
    write_archive(archive, "docker.io/x/y:1", [base, top], {"Cmd": ["sh"]}, [{}, {}], "amd64")
    out = tmp_path / "out"
    config = unpack(archive, out)
    assert config["rootfs"]["diff_ids"] == [base.diff_id, top.diff_id]
    assert _tree(out) == _tree(upper)
    assert (out / "keep").stat().st_ino == (out / "keep-link").stat().st_ino  # still one file

    again = write_layer(upper, changed, deleted, tmp_path / "again.tar.gz", mtime=1704067200)
    assert (again.digest, again.diff_id) == (top.digest, top.diff_id)

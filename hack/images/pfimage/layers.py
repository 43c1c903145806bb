"""Layers and OCI image archives: what changed in a root filesystem, written as tars.

Deterministic: entries in path order, numeric owners and no names, a fixed time for what
the build wrote, gzip without a name or time. The same files give the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pfimage import CACHE, EPOCH, BuildError

__all__ = [
    "RUNTIME_DIRS",
    "Layer",
    "Snapshot",
    "changes",
    "snapshot",
    "unpack",
    "walk",
    "write_archive",
    "write_layer",
]

GZIP_LEVEL = 6
# Not part of any layer: a container runtime provides them.
RUNTIME_DIRS = ("dev", "proc", "sys")
# A path's type, mode, owner, size, time (not a folder's), device and link target.
Snapshot = dict[str, tuple[int, int, int, int, int, int, str | None]]


class _Hashing:
    """A write-only file that hashes and counts what goes through it."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


@dataclass(frozen=True)
class Layer:
    """A gzipped layer tar on disk."""

    path: Path
    digest: str  # of the gzip: the blob
    size: int
    diff_id: str  # of the tar: the image config's rootfs.diff_ids
    tar_size: int

    def to_json(self) -> dict[str, Any]:
        """Its fields, the path relative to the cache."""
        return {
            "path": str(self.path.relative_to(CACHE)),
            "digest": self.digest,
            "size": self.size,
            "diff_id": self.diff_id,
            "tar_size": self.tar_size,
        }

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> Layer:
        """The inverse of :meth:`to_json`."""
        return Layer(CACHE / d["path"], d["digest"], d["size"], d["diff_id"], d["tar_size"])


def walk(root: Path) -> Iterator[str]:
    """Every path under ``root`` (relative), parents first; runtime folders kept empty."""
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel if rel else root) as it:
            children = sorted(it, key=lambda e: e.name, reverse=True)
        for entry in children:
            child = f"{rel}/{entry.name}" if rel else entry.name
            yield child
            if entry.is_dir(follow_symlinks=False) and child not in RUNTIME_DIRS:
                stack.append(child)


def snapshot(root: Path) -> Snapshot:
    """What :func:`changes` compares, for every path under ``root``."""
    state: Snapshot = {}
    for rel in walk(root):
        path = root / rel
        st = path.lstat()
        kind = stat.S_IFMT(st.st_mode)
        state[rel] = (
            st.st_mode,
            st.st_uid,
            st.st_gid,
            st.st_size if kind == stat.S_IFREG else 0,
            0 if kind == stat.S_IFDIR else st.st_mtime_ns,  # a folder's time: its children's
            st.st_rdev,
            os.readlink(path) if kind == stat.S_IFLNK else None,
        )
    return state


def changes(before: Snapshot, after: Snapshot) -> tuple[list[str], list[str]]:
    """The paths added or changed, and the ones deleted (topmost only), in path order."""
    changed = sorted(rel for rel, meta in after.items() if before.get(rel) != meta)
    deleted: list[str] = []
    for rel in sorted(before.keys() - after.keys()):
        if not any(rel.startswith(d + "/") for d in deleted):
            deleted.append(rel)
    return changed, deleted


def _whiteout(rel: str) -> str:
    parent, _, name = rel.rpartition("/")
    return f"{parent}/.wh.{name}" if parent else f".wh.{name}"


def write_layer(
    root: Path, entries: Sequence[str], deleted: Sequence[str], out: Path, mtime: int | None
) -> Layer:
    """Writes ``entries`` (paths relative to ``root``) as a gzipped layer at ``out``.

    ``deleted`` become whiteouts (``.wh.NAME``) for the layers below. ``mtime``, when
    given, replaces every entry's time (what a build step wrote); else each keeps its own.
    """
    whiteouts = {_whiteout(rel) for rel in deleted}
    with out.open("wb") as raw:
        outer = _Hashing(raw)
        with gzip.GzipFile(
            filename="", mode="wb", fileobj=outer, mtime=0, compresslevel=GZIP_LEVEL
        ) as gz:
            inner = _Hashing(gz)  # type: ignore[arg-type]
            with tarfile.open(fileobj=inner, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                for rel in sorted({*entries, *whiteouts}):
                    if rel in whiteouts:
                        info = tarfile.TarInfo(rel)
                        info.mtime = mtime or EPOCH
                        tar.addfile(info)
                        continue
                    path = root / rel
                    info = tar.gettarinfo(str(path), arcname=rel)  # a hard link if seen before
                    info.uname = info.gname = ""
                    info.mtime = int(path.lstat().st_mtime) if mtime is None else mtime
                    if info.isreg():
                        with path.open("rb") as f:
                            tar.addfile(info, f)
                    else:
                        tar.addfile(info)
    return Layer(
        out,
        "sha256:" + outer.sha.hexdigest(),
        outer.size,
        "sha256:" + inner.sha.hexdigest(),
        inner.size,
    )


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _descriptor(media_type: str, blob: bytes) -> dict[str, Any]:
    return {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
        "size": len(blob),
    }


def write_archive(
    out: Path,
    ref: str,
    layers: Sequence[Layer],
    config: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    arch: str,
) -> None:
    """Writes an OCI image layout as a tar at ``out``, named ``ref`` for containerd.

    Args:
        out: The archive.
        ref: The full image reference (``docker.io/parkfleet/agent:0.1.0``): the name
            ``ctr images import`` gives it, and the one the kubelet asks for.
        layers: Bottom first.
        config: The image config's ``config`` (Env, Entrypoint, Cmd, User, ...).
        history: One entry per instruction (``empty_layer`` where it made none).
        arch: The OCI architecture (``amd64``).
    """
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(EPOCH))
    config_blob = _json_bytes(
        {
            "architecture": arch,
            "os": "linux",
            "created": created,
            "config": dict(config),
            "rootfs": {"type": "layers", "diff_ids": [lay.diff_id for lay in layers]},
            "history": [{"created": created, **h} for h in history],
        }
    )
    manifest = _json_bytes(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": _descriptor("application/vnd.oci.image.config.v1+json", config_blob),
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": lay.digest,
                    "size": lay.size,
                }
                for lay in layers
            ],
        }
    )
    index = _json_bytes(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    **_descriptor("application/vnd.oci.image.manifest.v1+json", manifest),
                    "platform": {"architecture": arch, "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": ref,
                        "org.opencontainers.image.ref.name": ref.rpartition(":")[2],
                    },
                }
            ],
        }
    )
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, data: bytes | None = None, path: Path | None = None) -> None:
            info = tarfile.TarInfo(name)
            info.mtime = EPOCH
            if path is not None:
                info.mode, info.size = 0o644, path.stat().st_size
                with path.open("rb") as f:
                    tar.addfile(info, f)
            elif data is not None:
                info.mode, info.size = 0o644, len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)

        add("blobs")
        add("blobs/sha256")
        for blob in (config_blob, manifest):
            add("blobs/sha256/" + hashlib.sha256(blob).hexdigest(), data=blob)
        for lay in dict.fromkeys(layers):  # a layer twice in one image is stored once
            add("blobs/sha256/" + lay.digest.removeprefix("sha256:"), path=lay.path)
        add("index.json", data=index)
        add("oci-layout", data=b'{"imageLayoutVersion":"1.0.0"}')
    tmp.replace(out)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def unpack(archive: Path, dest: Path) -> dict[str, Any]:
    """Applies an archive's layers in order (whiteouts too) in ``dest``.

    Returns:
        The image config (``config``, ``rootfs``, ``history``, ...).
    """
    with tarfile.open(archive) as outer:

        def blob(digest: str) -> IO[bytes]:
            return blob_of(outer, "blobs/sha256/" + digest.removeprefix("sha256:"))

        index = json.load(blob_of(outer, "index.json"))
        manifest = json.load(blob(index["manifests"][0]["digest"]))
        config: dict[str, Any] = json.load(blob(manifest["config"]["digest"]))
        dest.mkdir(parents=True, exist_ok=True)
        for layer in manifest["layers"]:
            with tarfile.open(fileobj=blob(layer["digest"]), mode="r|gz") as tar:
                for member in tar:
                    rel = Path(member.name)
                    if rel.is_absolute() or ".." in rel.parts:
                        raise BuildError(f"{archive}: unsafe path {member.name}")
                    if rel.name == ".wh..wh..opq":
                        for child in (dest / rel.parent).iterdir():
                            _remove(child)
                    elif rel.name.startswith(".wh."):
                        _remove(dest / rel.parent / rel.name.removeprefix(".wh."))
                    else:
                        target = dest / rel
                        if os.path.lexists(target) and not (member.isdir() and target.is_dir()):
                            _remove(target)
                        tar.extract(member, dest, numeric_owner=True, filter="fully_trusted")
    for d in (*RUNTIME_DIRS, "tmp"):
        (dest / d).mkdir(exist_ok=True)
    return config


def blob_of(outer: tarfile.TarFile, name: str) -> IO[bytes]:
    """A file of the archive's layout (``index.json``, ``blobs/sha256/...``)."""
    f = outer.extractfile(name)
    if f is None:
        raise BuildError(f"no {name} in the archive")
    return f

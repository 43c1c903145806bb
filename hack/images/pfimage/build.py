"""The images, their last stage run in a chroot, and the ``build``/``unpack``/``run`` command."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pfimage
from pfimage import CACHE, EPOCH, REPO, BuildError, chroot
from pfimage.dockerfile import Dockerfile, Instruction, exec_form, expand, parse, split_flags, words
from pfimage.layers import Layer, changes, snapshot, unpack, write_archive, write_layer
from pfimage.stages import BASE_PATH, base_recipe, digest, make_base, make_wheels, wheels_for

__all__ = ["IMAGES", "Built", "ImageDef", "build", "main"]

# The GPU agent's runtime: ONNX Runtime's CUDA provider and the NVIDIA libraries it loads.
GPU_RUNTIME = "onnxruntime-gpu[cudnn] nvidia-cuda-runtime~=13.0 nvidia-curand~=10.0"


@dataclass(frozen=True)
class ImageDef:
    """One image this builder makes.

    Attributes:
        name: Its name here (``images.json``, the archive's file name).
        dockerfile: The Dockerfile, relative to the repo.
        repository: The image's repository; the tag is the package's version.
        tag_suffix: Appended to the tag (a variant).
        args: Build arguments (``--build-arg``).
    """

    name: str
    dockerfile: str
    repository: str
    tag_suffix: str = ""
    args: tuple[tuple[str, str], ...] = ()


IMAGES = (
    ImageDef("parkfleet", "images/operator/Dockerfile", "parkfleet/parkfleet"),
    ImageDef("agent", "images/agent/Dockerfile", "parkfleet/agent"),
    ImageDef(
        "agent-gpu",
        "images/agent/Dockerfile",
        "parkfleet/agent",
        "-gpu",
        (("ONNXRUNTIME", GPU_RUNTIME),),
    ),
)


@dataclass
class ImageConfig:
    """The image config the last stage's instructions set."""

    env: dict[str, str]
    user: str = ""
    workdir: str = "/"
    entrypoint: list[str] | None = None
    cmd: list[str] | None = field(default_factory=lambda: ["bash"])  # debian:*-slim's
    ports: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)

    def to_oci(self) -> dict[str, Any]:
        """The ``config`` object of an OCI image config."""
        config: dict[str, Any] = {
            "Env": [f"{k}={v}" for k, v in self.env.items()],
            "WorkingDir": self.workdir,
        }
        for key, value in (
            ("User", self.user),
            ("Entrypoint", self.entrypoint),
            ("Cmd", self.cmd),
            ("ExposedPorts", {p if "/" in p else f"{p}/tcp": {} for p in self.ports}),
            ("Volumes", {v: {} for v in self.volumes}),
            ("Labels", self.labels),
        ):
            if value:
                config[key] = value
        return config


def _wheels_bind(flags: Sequence[str], wheels: Path, where: str) -> list[chroot.Bind]:
    # RUN --mount=type=bind,from=wheels,source=/wheels,target=DIR: the wheelhouse, read-only.
    binds: list[chroot.Bind] = []
    for flag in flags:
        name, _, value = flag.partition("=")
        opts = dict(o.partition("=")[::2] for o in value.split(","))
        if name != "--mount" or opts.get("type") != "bind" or opts.get("from") != "wheels":
            raise BuildError(f"{where}: RUN {flag}: only --mount=type=bind,from=wheels,...")
        if opts.get("source", "/").strip("/") != "wheels" or "rw" in opts:
            raise BuildError(f"{where}: RUN {flag}: only source=/wheels, read-only")
        binds.append((wheels, opts["target"]))
    return binds


def _where(df: Dockerfile, ins: Instruction) -> str:
    path = df.path.relative_to(REPO) if df.path.is_relative_to(REPO) else df.path
    return f"{path}:{ins.line}"


# What the last stage may say; RUN takes only the wheels stage's bind mount as a flag.
SUPPORTED = frozenset(
    {"ARG", "ENV", "RUN", "WORKDIR", "USER", "EXPOSE", "VOLUME", "LABEL", "ENTRYPOINT", "CMD"}
)


class LastStage:
    """Runs the last stage's instructions in ``rootfs`` (a copy of the base).

    Every instruction that changes the files (RUN, WORKDIR making a folder) and changes
    something is one layer, as with docker; the others only set the config.
    """

    def __init__(self, df: Dockerfile, rootfs: Path, wheels: Path, out: Path) -> None:
        self.check(df)
        self.df, self.stage = df, df.stages[-1]
        self.rootfs, self.wheels, self.out = rootfs, wheels, out
        self.config = ImageConfig(env={"PATH": BASE_PATH})
        self.layers: list[Layer] = []
        self.history: list[dict[str, Any]] = []
        self._files = snapshot(rootfs)

    @staticmethod
    def check(df: Dockerfile) -> None:
        """Fails now, not after the base and the wheels, on what this builder does not do."""
        stage = df.stages[-1]
        if stage.image != "base" or stage.name is not None:
            raise BuildError(f"{df.path}: the last stage must be a plain FROM base")
        for ins in stage.body:
            where = _where(df, ins)
            if ins.keyword not in SUPPORTED:
                raise BuildError(f"{where}: {ins.keyword} is not supported by this builder")
            if ins.keyword == "RUN":
                _wheels_bind(split_flags(ins.text)[0], Path("/wheels"), where)

    def _commit(self, created_by: str) -> None:
        now = snapshot(self.rootfs)
        changed, deleted = changes(self._files, now)
        self._files = now
        if not changed and not deleted:
            self.history.append({"created_by": created_by, "empty_layer": True})
            return
        out = self.out / f"layer-{len(self.layers)}.tar.gz"
        self.layers.append(write_layer(self.rootfs, changed, deleted, out, mtime=EPOCH))
        self.history.append({"created_by": created_by})

    def run(self, args: Mapping[str, str]) -> None:
        """Runs every instruction; ``args`` are the build arguments."""
        config = self.config
        stage_args: dict[str, str] = {}
        cmd_set = False
        for ins in self.stage.body:
            scope = stage_args | config.env  # ENV wins over ARG, as in docker
            where = _where(self.df, ins)
            created_by = f"{ins.keyword} {ins.normalized()[1]}"
            if ins.keyword == "RUN":
                self._run(ins.text, stage_args, where)
                self._commit(created_by)
                continue
            if ins.keyword == "WORKDIR":
                config.workdir = os.path.join(config.workdir, expand(ins.text, scope))
                (self.rootfs / config.workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
                self._commit(created_by)
                continue
            if ins.keyword == "ARG":
                name, eq, default = ins.text.partition("=")
                stage_args[name] = args.get(name, expand(default, scope) if eq else "")
            elif ins.keyword == "ENV":
                pairs = shlex.split(ins.text)
                if pairs and "=" not in pairs[0]:  # the old form, ENV NAME VALUE
                    pairs = [f"{pairs[0]}={' '.join(pairs[1:])}"]
                for pair in pairs:
                    k, _, v = pair.partition("=")
                    config.env[k] = expand(v, scope)  # each sees the env before this ENV
            elif ins.keyword == "USER":
                config.user = expand(ins.text, scope)
            elif ins.keyword == "EXPOSE":
                config.ports.extend(words(ins.text, scope))
            elif ins.keyword == "VOLUME":
                config.volumes.extend(words(ins.text, scope))
            elif ins.keyword == "LABEL":
                config.labels.update(w.partition("=")[::2] for w in words(ins.text, scope))
            elif ins.keyword == "ENTRYPOINT":
                config.entrypoint = exec_form(ins.text)
                if not cmd_set:
                    config.cmd = None  # a new ENTRYPOINT drops the base's CMD
            else:  # CMD: check() let nothing else through
                config.cmd, cmd_set = exec_form(ins.text), True
            self.history.append({"created_by": created_by, "empty_layer": True})

    def _run(self, text: str, stage_args: Mapping[str, str], where: str) -> None:
        flags, command = split_flags(text)
        binds = _wheels_bind(flags, self.wheels, where)
        config = self.config
        user = chroot.numeric_user(self.rootfs, config.user) if config.user else "0:0"
        # ARGs are in RUN's environment, not the image's; SOURCE_DATE_EPOCH is this builder's.
        env = {**stage_args, **config.env, "SOURCE_DATE_EPOCH": str(EPOCH)}
        print(f"  {where} RUN {' '.join(command.split())[:70]}...", flush=True)
        argv = chroot.argv(self.rootfs, exec_form(command), env, user, config.workdir, binds=binds)
        with chroot.mountpoints(self.rootfs, binds):
            pfimage.run(argv, f"{where}: RUN")


# -- one image ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    """One image's archive and what ``images.json`` says of it."""

    name: str
    ref: str
    archive: Path
    key: str
    archive_bytes: int
    unpacked_bytes: int
    seconds: float
    cached: bool


def _version() -> str:
    version = str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])
    chart = (REPO / "helm" / "parkfleet" / "Chart.yaml").read_text()
    m = re.search(r'^appVersion:\s*"?([^"\s]+)"?', chart, re.M)
    if m is None or m.group(1) != version:
        raise BuildError(
            f"helm/parkfleet/Chart.yaml appVersion ({m.group(1) if m else 'missing'}) is not"
            f" the package's version ({version}): the chart's default image would not exist"
        )
    return version


def _builder_hash() -> str:
    here = Path(pfimage.__file__).parent
    return digest(*(p.read_bytes() for p in sorted(here.glob("*.py"))))


def _oci_arch(machine: str) -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def build_image(image: ImageDef, version: str, force: bool, log: list[str]) -> Built:
    """Builds one image, unless its archive is there with the same key."""
    started = time.monotonic()
    df = parse(REPO / image.dockerfile)
    LastStage.check(df)
    args = dict(image.args)
    base = make_base(base_recipe(df, args), log)
    wheels = wheels_for(df, base, args)
    tag = version + image.tag_suffix
    ref = f"docker.io/{image.repository}:{tag}"
    recipe = (ref, base.recipe.key, wheels.key, df.path.read_text(), json.dumps(args))
    key = digest("image-1", *recipe, _builder_hash())[:16]
    archive = CACHE / f"{image.repository.rpartition('/')[2]}-{tag}.oci.tar"
    stamp = archive.with_name(archive.name + ".json")
    if not force and archive.exists() and stamp.exists():
        d = json.loads(stamp.read_text())
        if d.get("key") == key:
            sizes = d["archive_bytes"], d["unpacked_bytes"]
            return Built(image.name, ref, archive, key, *sizes, time.monotonic() - started, True)
    print(f"building {ref} ({image.dockerfile})", flush=True)
    wheelhouse = make_wheels(wheels, base, log)
    work = CACHE / "work" / image.name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        rootfs = work / "rootfs"
        subprocess.run(["cp", "-a", "--reflink=auto", str(base.rootfs), str(rootfs)], check=True)
        last = LastStage(df, rootfs, wheelhouse, work)
        last.run(args)
        layers = [base.layer, *last.layers]
        packages = " ".join(base.recipe.packages)
        history = [{"created_by": f"mmdebstrap {base.recipe.suite} minbase + {packages}"}]
        arch = _oci_arch(base.machine)
        write_archive(archive, ref, layers, last.config.to_oci(), history + last.history, arch)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    unpacked = sum(lay.tar_size for lay in layers)
    seconds = time.monotonic() - started
    built = Built(image.name, ref, archive, key, archive.stat().st_size, unpacked, seconds, False)
    record = {
        "key": key,
        "ref": ref,
        "archive_bytes": built.archive_bytes,
        "unpacked_bytes": unpacked,
        "layers": [lay.digest for lay in layers],
        "base": base.recipe.key,
        "wheels": wheels.key,
        "seconds": round(seconds, 1),
    }
    stamp.write_text(json.dumps(record, indent=2))
    return built


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    # One build at a time per cache (make images in two shells, or a test and a shell).
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build(names: Sequence[str], force: bool = False) -> list[Built]:
    """Builds the named images (of :data:`IMAGES`); returns what each is.

    Writes ``.cache/images/images.json`` (every image built so far: its reference,
    archive and sizes) and removes cached bases and wheels no image uses any more.
    """
    if os.geteuid() != 0:
        raise BuildError("building the images needs root (mmdebstrap --mode=root, chroot)")
    wanted = [i for i in IMAGES if i.name in names]
    unknown = set(names) - {i.name for i in wanted}
    if unknown:
        known = [i.name for i in IMAGES]
        raise BuildError(f"no image named {', '.join(sorted(unknown))} (known: {known})")
    version = _version()
    log: list[str] = []
    with _locked():
        built = [build_image(i, version, force, log) for i in wanted]
        index_path = CACHE / "images.json"
        index = json.loads(index_path.read_text()) if index_path.exists() else {}
        for b in built:
            old = index.get(b.name, {}).get("archive")
            if old and old != b.archive.name:  # renamed: the old archive is nobody's
                for p in (CACHE / old, CACHE / (old + ".json")):
                    p.unlink(missing_ok=True)
            index[b.name] = {
                "ref": b.ref,
                "archive": b.archive.name,
                "archive_bytes": b.archive_bytes,
                "unpacked_bytes": b.unpacked_bytes,
            }
        index = {k: v for k, v in index.items() if (CACHE / v["archive"]).exists()}
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True))
        stamps = [
            json.loads((CACHE / (v["archive"] + ".json")).read_text()) for v in index.values()
        ]
        for kind in ("base", "wheels"):
            used = {s[kind] for s in stamps}
            for d in (CACHE / kind).glob("*"):
                if d.name not in used:
                    shutil.rmtree(d, ignore_errors=True)
    for line in log:
        print(line)
    return built


def main(argv: Sequence[str] | None = None) -> int:
    """``build``, ``unpack`` or ``run`` (``hack/images/build.py --help``)."""
    parser = argparse.ArgumentParser(
        prog="hack/images/build.py", description="parkfleet's images, without a container engine"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build images into .cache/images (nothing when up to date)")
    b.add_argument(
        "names", nargs="*", default=["parkfleet", "agent"], help=f"of {[i.name for i in IMAGES]}"
    )
    b.add_argument("--force", action="store_true", help="rebuild even when the key is the same")
    u = sub.add_parser("unpack", help="an archive's root filesystem into DIR (config: DIR.json)")
    u.add_argument("archive", type=Path)
    u.add_argument("dir", type=Path)
    r = sub.add_parser("run", help="run an unpacked image: its user, read-only root, no network")
    r.add_argument("dir", type=Path)
    r.add_argument("--user", help="instead of the image's USER")
    r.add_argument("--entrypoint", help="instead of the image's ENTRYPOINT")
    r.add_argument("--bind", action="append", default=[], help="SRC:DST, read-only (repeatable)")
    r.epilog = "run DIR [options] -- ARGS...: ARGS instead of the image's CMD"
    words = list(sys.argv[1:] if argv is None else argv)
    # What follows -- is the container's, whatever it looks like.
    cut = words.index("--") if "--" in words else len(words)
    ns = parser.parse_args(words[:cut])
    cmd_args = words[cut + 1 :]
    try:
        if ns.command == "build":
            done = build(ns.names, ns.force)
            print(f"{'image':<40} {'archive':>8} {'unpacked':>9} {'time':>7}")
            for d in done:
                how = "cached" if d.cached else f"{d.seconds:.0f}s"
                sizes = f"{d.archive_bytes / 1e6:>6.0f}MB {d.unpacked_bytes / 1e6:>7.0f}MB"
                print(f"{d.ref:<40} {sizes} {how:>7}  .cache/images/{d.archive.name}")
        elif ns.command == "unpack":
            config = unpack(ns.archive, ns.dir)
            ns.dir.with_name(ns.dir.name + ".json").write_text(json.dumps(config, indent=2))
        else:
            config = json.loads(ns.dir.with_name(ns.dir.name + ".json").read_text())
            binds = [(Path(s), d) for s, _, d in (b.partition(":") for b in ns.bind)]
            argv_ = chroot.image_argv(
                ns.dir, config, cmd_args or None, ns.user, ns.entrypoint, binds
            )
            with chroot.mountpoints(ns.dir, binds):
                return subprocess.run(argv_).returncode
    except (BuildError, subprocess.CalledProcessError) as e:
        print(f"images: {e}", file=sys.stderr)
        return 1
    return 0

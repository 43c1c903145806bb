"""The two stages made on this machine, not in a chroot: the base and the wheels.

The base stage's packages are installed by mmdebstrap (from this machine's apt sources;
no image keeps them); the wheels stage is reproduced with this machine's pip, for the
base's Python and glibc, at the versions installed in the running venv. Both are cached
under ``.cache/images/{base,wheels}/KEY``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pfimage import CACHE, EPOCH, REPO, BuildError, chroot, run
from pfimage.dockerfile import Dockerfile, expand
from pfimage.layers import Layer, walk, write_layer

__all__ = [
    "BASE_PATH",
    "Base",
    "BaseRecipe",
    "Wheels",
    "base_recipe",
    "digest",
    "make_base",
    "make_wheels",
    "runtime_pins",
    "wheels_context",
    "wheels_for",
]

# debian:bookworm-slim's PATH (its image config), which the Dockerfiles' ENV PATH extends.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# debian:*-slim drops these (dpkg's path-exclude, as the official images' build does).
SLIM_DPKG = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)
# This machine's apt sources and settings go in, and out again: no image names a mirror.
BASE_CLEANUP = (
    'rm -f "$1"/etc/apt/sources.list "$1"/etc/apt/sources.list.d/*'
    ' "$1"/etc/apt/apt.conf.d/99mmdebstrap "$1"/etc/hostname "$1"/etc/resolv.conf'
)
# The host's apt settings that reaching its sources may need (a snapshot mirror's dates).
APT_PASSTHROUGH = ("Acquire::Check-Valid-Until", "Acquire::Check-Date")
# The wheels stage this module reproduces: changed in a Dockerfile, change it here too.
WHEELS_STAGE = (
    ("ARG", "ONNXRUNTIME=onnxruntime"),
    ("WORKDIR", "/src"),
    ("COPY", "pyproject.toml README.md ./"),
    ("COPY", "operator ./operator"),
    (
        "RUN",
        "python3 -m venv /build && /build/bin/pip wheel --no-cache-dir --wheel-dir /wheels ."
        ' $ONNXRUNTIME && if [ "$ONNXRUNTIME" != onnxruntime ];'
        " then rm /wheels/onnxruntime-[0-9]*.whl; fi",
    ),
)
_APT_RUN = re.compile(
    r"apt-get update && (?:DEBIAN_FRONTEND=noninteractive )?apt-get install -y"
    r" --no-install-recommends ([a-z0-9.+\- ]+?) && rm -rf /var/lib/apt/lists/\*"
)


def digest(*parts: str | bytes) -> str:
    """A sha256 of the parts (each length-prefixed: no two lists of parts collide)."""
    h = hashlib.sha256()
    for p in parts:
        data = p.encode() if isinstance(p, str) else p
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


# -- the base -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseRecipe:
    """The base stage: a Debian suite and the packages installed on minbase."""

    suite: str
    packages: tuple[str, ...]

    @property
    def key(self) -> str:
        """Names the cached base: what it is made of."""
        parts = ("base-1", self.suite, *self.packages, *SLIM_DPKG, BASE_CLEANUP)
        return digest(*parts)[:16]


def base_recipe(df: Dockerfile, args: Mapping[str, str]) -> BaseRecipe:
    """Reads the base stage: ``FROM debian:SUITE-slim`` and one ``apt-get install``."""
    stage = df.stage("base")
    image = expand(stage.image, df.scope(args))
    m = re.fullmatch(r"debian:([a-z]+)-slim", image)
    if m is None or [i.keyword for i in stage.body] != ["RUN"]:
        raise BuildError(
            f"{df.path}: the base stage must be FROM debian:SUITE-slim and one RUN apt-get"
            f" install (got FROM {image} and {[i.keyword for i in stage.body]})"
        )
    run = stage.body[0]
    apt = _APT_RUN.fullmatch(run.normalized()[1])
    if apt is None:
        raise BuildError(
            f"{df.path}:{run.line}: the base's RUN must be `apt-get update && apt-get"
            " install -y --no-install-recommends PACKAGES && rm -rf /var/lib/apt/lists/*`"
        )
    return BaseRecipe(m.group(1), tuple(sorted(apt.group(1).split())))


@dataclass(frozen=True)
class Base:
    """A made base: its root filesystem, its layer and its Python's wheel tags."""

    recipe: BaseRecipe
    rootfs: Path
    layer: Layer
    python: str  # e.g. "311"
    glibc: tuple[int, int]
    machine: str
    seconds: float

    @property
    def platforms(self) -> list[str]:
        """The manylinux wheel platforms that run on the base's glibc, newest first."""
        major, minor = self.glibc
        tags = [f"manylinux_{major}_{m}_{self.machine}" for m in range(minor, 16, -1)]
        legacy = ("manylinux2014", "manylinux2010", "manylinux1")
        return tags + [f"{t}_{self.machine}" for t in legacy]


def _host_sources() -> Path:
    for p in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if p.exists() and p.read_text().strip():
            return p
    raise BuildError("no Debian apt sources here (/etc/apt/sources.list.d/debian.sources)")


def _apt_passthrough() -> list[str]:
    dump = subprocess.run(["apt-config", "dump"], capture_output=True, text=True, check=True)
    return [
        f"--aptopt={line}"
        for line in dump.stdout.splitlines()
        if line.split(" ", 1)[0] in APT_PASSTHROUGH
    ]


_PROBE = (
    "import os, platform, sys; v = sys.version_info;"
    " print(f'{v[0]}{v[1]}', platform.libc_ver()[1], os.uname().machine)"
)


def make_base(recipe: BaseRecipe, log: list[str]) -> Base:
    """The cached base for ``recipe``, made with mmdebstrap when missing."""
    home = CACHE / "base" / recipe.key
    done = home / "base.json"
    if not done.exists():
        if shutil.which("mmdebstrap") is None:
            raise BuildError("no mmdebstrap: run hack/images/packages.sh (make images does)")
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        started = time.monotonic()
        rootfs = home / "rootfs"
        run(
            [
                "mmdebstrap",
                "--mode=root",
                "--variant=minbase",
                "--format=directory",
                f"--include={','.join(recipe.packages)}",
                # merged /usr as Debian 12 has it, without the usrmerge package (and Perl).
                "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
                *(f"--dpkgopt={o}" for o in SLIM_DPKG),
                *_apt_passthrough(),
                f"--customize-hook={BASE_CLEANUP}",
                recipe.suite,
                str(rootfs),
                str(_host_sources()),
            ],
            "mmdebstrap",
            env=os.environ | {"SOURCE_DATE_EPOCH": str(EPOCH)},
        )
        probe = run(
            chroot.argv(rootfs, ["python3", "-c", _PROBE], {"PATH": BASE_PATH}),
            "the base's python3",
        ).split()
        # The base keeps its files' own times: Debian's .pyc files were compiled against them.
        layer = write_layer(rootfs, list(walk(rootfs)), [], home / "layer.tar.gz", mtime=None)
        major, minor = (int(x) for x in probe[1].split(".")[:2])
        seconds = round(time.monotonic() - started, 1)
        record = {
            "suite": recipe.suite,
            "packages": list(recipe.packages),
            "layer": layer.to_json(),
            "python": probe[0],
            "glibc": [major, minor],
            "machine": probe[2],
            "seconds": seconds,
        }
        done.write_text(json.dumps(record, indent=2))
        log.append(f"base {recipe.suite} + {' '.join(recipe.packages)}: made in {seconds:.0f}s")
    d = json.loads(done.read_text())
    return Base(
        recipe,
        home / "rootfs",
        Layer.from_json(d["layer"]),
        d["python"],
        (d["glibc"][0], d["glibc"][1]),
        d["machine"],
        d["seconds"],
    )


# -- the wheels ---------------------------------------------------------------------------


def _ignored(rel: str, patterns: Sequence[str]) -> bool:
    # .dockerignore: the last pattern that matches the path or one of its parents wins.
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        alts = [pat, pat[3:]] if pat.startswith("**/") else [pat]
        if any(fnmatch.fnmatchcase(p, a) for p in prefixes for a in alts):
            verdict = not negate
    return verdict


def context_files(dockerfile: Path, sources: Sequence[str]) -> list[str]:
    """The build context's files under ``sources`` (repo-relative), less what is ignored."""
    ignore_file = dockerfile.with_name(dockerfile.name + ".dockerignore")
    lines = ignore_file.read_text().splitlines() if ignore_file.exists() else []
    patterns = [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]
    found: list[str] = []
    for source in sources:
        top = REPO / source
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        found.extend(
            rel
            for rel in (p.relative_to(REPO).as_posix() for p in paths)
            if not _ignored(rel, patterns)
        )
    return sorted(found)


def runtime_pins(root: str = "parkfleet") -> dict[str, str]:
    """The versions installed here of ``root``'s dependencies, all the way down."""
    pins: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    while todo:
        name, extras = todo.pop()
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here: left to pip
        for spec in requires:
            req = Requirement(spec)
            if req.marker is not None and not any(
                req.marker.evaluate({"extra": e}) for e in (extras or {""})
            ):
                continue
            key = canonicalize_name(req.name)
            if key in pins:
                continue
            try:
                pins[key] = importlib.metadata.version(req.name)
            except importlib.metadata.PackageNotFoundError:
                continue
            todo.append((req.name, frozenset(req.extras)))
    return dict(sorted(pins.items()))


@dataclass(frozen=True)
class Wheels:
    """The wheels stage for one image: its key, and what it is made from."""

    key: str
    files: list[str]  # the build context
    pins: dict[str, str]
    onnxruntime: str  # the ONNXRUNTIME build argument

    @property
    def home(self) -> Path:
        """Where the cached wheels are."""
        return CACHE / "wheels" / self.key


def wheels_context(df: Dockerfile) -> list[str]:
    """Checks the wheels stage against :data:`WHEELS_STAGE`; returns its context's files."""
    stage = df.stage("wheels")
    got = tuple(ins.normalized() for ins in stage.body)
    if stage.image != "base" or got != WHEELS_STAGE:
        raise BuildError(
            f"{df.path}: the wheels stage is not the one hack/images/pfimage/stages.py makes"
            f" on this machine; change both together.\n  expected: {WHEELS_STAGE}\n"
            f"  got:      {got}"
        )
    sources = [w for ins in stage.body if ins.keyword == "COPY" for w in ins.text.split()[:-1]]
    return context_files(df.path, sources)


def wheels_for(df: Dockerfile, base: Base, args: Mapping[str, str]) -> Wheels:
    """The wheels stage for ``base`` and the build arguments: its key and its inputs."""
    files = wheels_context(df)
    pins = runtime_pins()
    onnxruntime = args.get("ONNXRUNTIME", "onnxruntime")
    # README.md only becomes the wheel's long description: editing it rebuilds nothing.
    code = [
        part for rel in files if rel != "README.md" for part in (rel, (REPO / rel).read_bytes())
    ]
    key = digest(
        "wheels-1",
        base.recipe.key,
        onnxruntime,
        digest(*code),
        json.dumps(pins),
        json.dumps(base.platforms),
    )[:16]
    return Wheels(key, files, pins, onnxruntime)


def make_wheels(wheels: Wheels, base: Base, log: list[str]) -> Path:
    """The cached wheelhouse: the package's wheel and its dependencies' for the base."""
    home = wheels.home
    if (home / "wheels.json").exists():
        return home
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    started = time.monotonic()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    with tempfile.TemporaryDirectory(prefix="pf-wheels-") as tmp:
        src = Path(tmp) / "src"
        for rel in wheels.files:
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
        own_wheel = [*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        run([*own_wheel, "--wheel-dir", str(home), str(src)], "pip wheel (the package)")
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("".join(f"{k}=={v}\n" for k, v in wheels.pins.items()))
        (own,) = home.glob("*.whl")
        run(
            [
                *pip,
                "download",
                "--quiet",
                "--only-binary=:all:",
                *(f"--platform={p}" for p in base.platforms),
                f"--python-version={base.python}",
                "--implementation=cp",
                f"--abi=cp{base.python}",
                f"--constraint={constraints}",
                f"--dest={home}",
                str(own),
                *shlex.split(wheels.onnxruntime),
            ],
            "pip download (the dependencies)",
        )
    if wheels.onnxruntime != "onnxruntime":
        for w in home.glob("onnxruntime-[0-9]*.whl"):
            w.unlink()
    names = sorted(p.name for p in home.glob("*.whl"))
    (home / "wheels.json").write_text(json.dumps({"wheels": names, "pins": wheels.pins}, indent=2))
    size = sum(p.stat().st_size for p in home.glob("*.whl"))
    seconds = time.monotonic() - started
    log.append(f"wheels {wheels.key}: {len(names)} wheels, {size / 1e6:.0f} MB in {seconds:.0f}s")
    return home

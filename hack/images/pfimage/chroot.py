"""Running a command in a root filesystem, in namespaces of its own and with no network.

The build's ``RUN`` steps run here (as root, the root filesystem writable), and so do the
images' tests (as the image's user, the root read-only, ``/tmp`` a tmpfs: as the chart
runs them). The mounts live in a mount namespace that ends with the command.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pfimage import BuildError

__all__ = ["Bind", "argv", "image_argv", "mountpoints", "numeric_user"]

# $1 root, $2 read-only (0/1), $3 user, $4 working dir, $5 binds (lines: source, target,
# source, target, ...); then NAME=VALUE words and the command. Mountpoints already exist.
_SCRIPT = r"""
set -eu
r=$1 ro=$2 user=$3 dir=$4 binds=$5
shift 5
if [ "$ro" = 1 ]; then mount --bind "$r" "$r" && mount -o remount,bind,ro "$r"; fi
mount -t proc proc "$r/proc"
mount -t tmpfs -o nosuid,mode=0755 dev "$r/dev"
for n in null zero full random urandom tty; do
    touch "$r/dev/$n" && mount --bind "/dev/$n" "$r/dev/$n"
done
mkdir "$r/dev/shm" && mount -t tmpfs -o nosuid,nodev shm "$r/dev/shm"
ln -s /proc/self/fd "$r/dev/fd"
if [ "$ro" = 1 ]; then mount -t tmpfs -o nosuid,nodev,mode=1777 tmp "$r/tmp"; fi
if [ -n "$binds" ]; then
    printf '%s\n' "$binds" | while read -r src && read -r dst; do
        mount --bind "$src" "$r$dst" && mount -o remount,bind,ro "$r$dst"
    done
fi
exec chroot --userspec="$user" "$r" /usr/bin/env -i -C "$dir" "$@"
"""

# A file or folder of this machine, seen read-only at a path inside the root.
Bind = tuple[Path, str]


def argv(
    root: Path,
    command: Sequence[str],
    env: Mapping[str, str],
    user: str = "0:0",
    workdir: str = "/",
    read_only: bool = False,
    binds: Sequence[Bind] = (),
) -> list[str]:
    """The command line that runs ``command`` in ``root``.

    Fresh mount, PID and network namespaces (only a loopback that is down), ``/proc``,
    a minimal ``/dev``; ``env`` is the whole environment. ``user`` is ``UID:GID``.
    Create the binds' mountpoints first (:func:`mountpoints`).
    """
    return [
        "unshare",
        "--mount",
        "--propagation=private",
        "--pid",
        "--fork",
        "--net",
        "--",
        "/bin/sh",
        "-c",
        _SCRIPT,
        "sh",
        str(root),
        "1" if read_only else "0",
        user,
        workdir,
        "\n".join(f"{src}\n{dst}" for src, dst in binds),
        *(f"{k}={v}" for k, v in env.items()),
        *command,
    ]


@contextlib.contextmanager
def mountpoints(root: Path, binds: Sequence[Bind]) -> Iterator[None]:
    """Creates the binds' mountpoints in ``root`` for the block; removes the ones it made."""
    made: list[Path] = []
    try:
        for src, dst in binds:
            point = root / dst.lstrip("/")
            missing = [p for p in (point, *point.parents) if not p.exists() and root in p.parents]
            point.parent.mkdir(parents=True, exist_ok=True)
            if not point.exists():
                point.mkdir() if src.is_dir() else point.touch()
            made.extend(missing)  # deepest first
        yield
    finally:
        for p in made:
            if p.is_dir():
                p.rmdir()
            else:
                p.unlink(missing_ok=True)


def numeric_user(root: Path, user: str) -> str:
    """``USER``'s value as ``UID:GID``, names looked up in the image's passwd and group."""
    name, _, group = user.partition(":")

    def lookup(file: str, value: str, field: int) -> str:
        if value.isdigit():
            return value
        for line in (root / "etc" / file).read_text().splitlines():
            fields = line.split(":")
            if fields[0] == value:
                return fields[field]
        raise BuildError(f"USER {user}: no {value} in /etc/{file}")

    uid = lookup("passwd", name, 2)
    gid = lookup("group", group, 2) if group else lookup("passwd", name, 3)
    return f"{uid}:{gid}"


def image_argv(
    root: Path,
    config: Mapping[str, Any],
    args: Sequence[str] | None = None,
    user: str | None = None,
    entrypoint: str | None = None,
    binds: Sequence[Bind] = (),
) -> list[str]:
    """The command line that runs an unpacked image as a container with a read-only root.

    ``args`` replace the image's CMD, ``entrypoint`` its ENTRYPOINT (``docker run``'s
    meaning), ``user`` its USER. ``config`` is the image config (:func:`layers.unpack`).
    """
    c = config["config"]
    env = dict(e.split("=", 1) for e in c.get("Env", []))
    first = [entrypoint] if entrypoint else list(c.get("Entrypoint") or [])
    rest = list(args) if args is not None else [] if entrypoint else list(c.get("Cmd") or [])
    uid = numeric_user(root, user or c.get("User") or "0:0")
    workdir = c.get("WorkingDir") or "/"
    return argv(root, first + rest, env, uid, workdir, read_only=True, binds=binds)

"""Which files and sockets the process touches while a test watches (a test tool).

Python's audit hooks see every ``open`` (``open()``, ``os.open``, ``Path.open``...) and
every ``socket.connect`` of the process, in any thread. A hook cannot be removed, so one
is installed once and records only while a :func:`watching` block is open.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Touched", "watching"]


@dataclass
class Touched:
    """What was touched inside a :func:`watching` block.

    Attributes:
        opened: Paths passed to ``open`` (as strings).
        connected: Addresses passed to ``socket.connect``.
    """

    opened: list[str] = field(default_factory=list)
    connected: list[Any] = field(default_factory=list)


_watchers: list[Touched] = []
_installed = False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if not _watchers:
        return
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        for w in _watchers:
            w.opened.append(path)
    elif event == "socket.connect" and len(args) >= 2:
        for w in _watchers:
            w.connected.append(args[1])


@contextmanager
def watching() -> Iterator[Touched]:
    """Records the files opened and the sockets connected while the block runs."""
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
    touched = Touched()
    _watchers.append(touched)
    try:
        yield touched
    finally:
        _watchers.remove(touched)

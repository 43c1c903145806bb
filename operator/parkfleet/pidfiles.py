"""Processes the development tools leave running, found and stopped again by their records.

Each process ``make demo DEMO_ARGS=--keep`` or ``make cluster-up`` leaves behind has a pid
file: its pid and when it started (the kernel's start time, so that a later process that
got the same pid is never taken for it). ``make demo-down`` and ``make cluster-down`` stop
exactly what the files name: SIGTERM, then SIGKILL only if it is still there after a
grace, with a line in the log saying so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PidFile", "running", "start_ticks", "terminate"]

log = logging.getLogger(__name__)


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    return text[text.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks after boot (None: no such process)."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def running(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` runs (a zombie does not), and is the process that started at ``started``."""
    fields = _stat(pid)
    if fields is None or fields[0] == "Z":
        return False
    return started is None or int(fields[19]) == started


@dataclass(frozen=True)
class PidFile:
    """A record of one background process.

    Attributes:
        path: The file.
        pid: The process id.
        started: Its start time (``start_ticks``); None in a record that has no start time.
    """

    path: Path
    pid: int
    started: int | None

    @classmethod
    def write(cls, path: Path, pid: int) -> PidFile:
        """Records ``pid`` (a process just started) in ``path``."""
        record = cls(path, pid, start_ticks(pid))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{pid} {record.started or ''}".strip() + "\n")
        return record

    @classmethod
    def read(cls, path: Path) -> PidFile | None:
        """The record in ``path``; None when there is none (or it is not one: logged)."""
        try:
            words = path.read_text().split()
        except FileNotFoundError:
            return None
        try:
            return cls(path, int(words[0]), int(words[1]) if len(words) > 1 else None)
        except (IndexError, ValueError):
            log.warning("%s is not a pid file (%r): ignored", path, " ".join(words))
            return None

    def running(self) -> bool:
        """Whether the recorded process still runs."""
        return running(self.pid, self.started)

    def remove(self) -> None:
        """Removes the file, unless it names another process by now (a restart)."""
        if PidFile.read(self.path) == self:
            self.path.unlink(missing_ok=True)


def terminate(
    name: str, pid: int, alive: Callable[[], bool], timeout: float, *, group: bool = False
) -> bool:
    """SIGTERM to ``pid``, and SIGKILL if it is still ``alive`` after ``timeout`` seconds.

    Args:
        name: What the log line calls it.
        pid: Its pid.
        alive: Whether it still runs (e.g. ``Popen.poll() is None``, or a record's).
        timeout: The grace between the two signals.
        group: SIGKILL its whole process group (it leads one), not just it.

    Returns:
        True when it took SIGKILL.
    """
    if not alive():
        return False
    with contextlib.suppress(ProcessLookupError):  # it exited since: what we wanted
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive():
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    else:
        return False
    log.warning("%s (pid %d) still ran %g s after SIGTERM: sending SIGKILL", name, pid, timeout)
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    while alive():
        time.sleep(0.05)
    return True

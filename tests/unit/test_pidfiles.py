"""Background processes found by their pid files, stopped: SIGTERM, SIGKILL as a last resort."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from parkfleet.pidfiles import PidFile, running, terminate


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def test_a_record_names_its_process_and_only_it(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    record = PidFile.write(tmp_path / "pids" / "sleeper.pid", sleeper.pid)
    assert PidFile.read(record.path) == record
    assert record.running()
    assert record.started is not None
    # The same pid, started at another time: a later process that got the pid, not ours.
    assert not running(sleeper.pid, record.started + 1)
    sleeper.kill()
    sleeper.wait()
    assert not record.running()


def test_remove_keeps_a_newer_record(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    old = PidFile(tmp_path / "x.pid", 1, 1)
    new = PidFile.write(tmp_path / "x.pid", sleeper.pid)
    old.remove()
    assert PidFile.read(tmp_path / "x.pid") == new
    new.remove()
    assert not new.path.exists()


def test_what_is_not_a_record_is_ignored_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "bad.pid").write_text("not a pid\n")
    assert PidFile.read(tmp_path / "bad.pid") is None
    assert "is not a pid file" in caplog.text
    assert PidFile.read(tmp_path / "missing.pid") is None


def test_sigterm_is_enough_for_a_process_that_listens(sleeper: subprocess.Popen[bytes]) -> None:
    assert terminate("sleeper", sleeper.pid, lambda: sleeper.poll() is None, 10) is False
    assert sleeper.returncode == -15


def test_sigkill_only_after_the_grace_and_said(caplog: pytest.LogCaptureFixture) -> None:
    deaf = subprocess.Popen(
        ["sh", "-c", "trap '' TERM; echo deaf; while :; do sleep 0.05; done"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert deaf.stdout is not None
        assert deaf.stdout.readline() == b"deaf\n"  # the trap is in place
        with caplog.at_level(logging.WARNING, logger="parkfleet.pidfiles"):
            assert terminate("deaf", deaf.pid, lambda: deaf.poll() is None, 0.3, group=True)
        assert deaf.returncode == -9
        assert (
            f"deaf (pid {deaf.pid}) still ran 0.3 s after SIGTERM: sending SIGKILL" in caplog.text
        )
    finally:
        deaf.kill()
        deaf.wait()
        if deaf.stdout is not None:
            deaf.stdout.close()

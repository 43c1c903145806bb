"""A real S3 server on loopback for the tests and the demo: versitygw over a folder.

versitygw (built from its Go module by ``make versitygw`` into ``.cache/bin/versitygw``)
serves the S3 API over a POSIX folder: each top-level folder is a bucket, each object a
file under it, so what a test wrote can be read back from disk. :func:`start` runs it on
``127.0.0.1`` with a root key pair of its own and returns once it answers; the server dies
with the process that started it; :meth:`S3Server.stop` stops it and leaves nothing
running.

Chosen over SeaweedFS (also served as a Go module) because it is one process over plain
files: no master, volume and filer servers to start and clean up, and nothing to unpack to
see what a job wrote.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from parkfleet.devcluster import die_with_parent
from parkfleet.pidfiles import PidFile

__all__ = ["S3Error", "S3Server", "default_binary", "start"]

REPO_ROOT = Path(__file__).resolve().parents[2]


class S3Error(RuntimeError):
    """The S3 server is missing, or did not start; the message says which and why."""


def default_binary() -> Path:
    """``.cache/bin/versitygw`` of this checkout (``make versitygw``)."""
    return REPO_ROOT / ".cache" / "bin" / "versitygw"


@dataclass
class S3Server:
    """A running versitygw: its endpoint, root key pair and folder of buckets."""

    endpoint: str
    access_key: str
    secret_key: str
    root: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def bucket(self, name: str) -> Path:
        """Creates bucket ``name`` (a top-level folder) if missing; returns its folder."""
        path = self.root / name
        path.mkdir(exist_ok=True)
        return path

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, SIGKILL after ``timeout``; returns once it has exited."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(
    root: Path,
    binary: Path | None = None,
    timeout: float = 30.0,
    *,
    detach: bool = False,
    pid_file: Path | None = None,
) -> S3Server:
    """Starts versitygw on a free loopback port over ``root/buckets``.

    Args:
        detach: Outlive this process (``parkfleet demo --keep``), in a session of its own.
        pid_file: Record its pid there (a stack's pid folder: ``make demo-down`` stops it).

    Raises:
        S3Error: The binary is missing (run ``make versitygw``), or the server exited or
            did not answer within ``timeout`` seconds (its log is quoted).
    """
    exe = binary or default_binary()
    if not exe.exists():
        raise S3Error(f"{exe} is missing: run `make versitygw`")
    buckets = root / "buckets"
    buckets.mkdir(parents=True, exist_ok=True)
    log = root / "versitygw.log"
    access, secret = "pf" + secrets.token_hex(8), secrets.token_urlsafe(24)
    port = _free_port()
    argv = [str(exe), "--access", access, "--secret", secret, "--port", f"127.0.0.1:{port}"]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*argv, "posix", str(buckets)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=detach,
            preexec_fn=None if detach else die_with_parent,
        )
    if pid_file is not None:
        PidFile.write(pid_file, proc.pid)
    server = S3Server(f"http://127.0.0.1:{port}", access, secret, buckets, proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise S3Error(f"versitygw exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(server.endpoint, timeout=1).close()
            return server
        except urllib.error.HTTPError:
            return server  # it answers (anonymous requests are refused)
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise S3Error(f"versitygw did not answer within {timeout:.0f} s: {log.read_text()[-2000:]}")

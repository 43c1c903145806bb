"""The owner's consent as a tiny file in the car's own settings (``--consent-file``).

The file holds ``consent: active``, ``consent: paused`` or ``consent: withdrawn`` (YAML),
or the bare word. The agent re-reads it every telemetry period, off the event loop and
only when it changed. A missing file means active; a malformed one keeps the last value
(said once, not every period): a half-written settings file never crashes the agent nor
flips its consent.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import yaml

from parkfleet.protocol.consent import CONSENTS, ConsentName

__all__ = ["ConsentFile", "parse_consent"]

log = logging.getLogger(__name__)


def parse_consent(text: str) -> ConsentName:
    """Reads a consent file's text.

    Raises:
        ValueError: Neither ``consent: WORD`` nor a bare ``WORD`` of ``CONSENTS``.
    """
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"not YAML: {e}") from None
    if isinstance(data, dict):
        if set(data) != {"consent"}:
            raise ValueError(f"expected one key, consent; got {sorted(map(str, data))}")
        data = data["consent"]
    word = str(data).strip().lower() if isinstance(data, str) else None
    for name in CONSENTS:
        if word == name:
            return name
    raise ValueError(f"consent {data!r} is not one of {', '.join(CONSENTS)}")


class ConsentFile:
    """The owner's consent file, re-read when it changes (modification time, size, inode).

    Args:
        path: The file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.consent: ConsentName = "active"
        self._seen: tuple[int, int, int] | None = None
        self._last_error = ""

    def read_now(self) -> ConsentName:
        """Re-reads the file if it changed (blocking: a stat, at most a small read)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._seen = None
            self.consent = "active"
            return self.consent
        except OSError as e:
            self._warn(str(e))
            return self.consent
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)  # ino: a file replaced by rename
        if seen == self._seen:
            return self.consent
        try:
            self.consent = parse_consent(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
            self._warn(str(e))
            return self.consent
        self._seen = seen
        self._last_error = ""
        return self.consent

    async def read(self) -> ConsentName:
        """:meth:`read_now` in a worker thread: the event loop never waits on the disk."""
        return await asyncio.to_thread(self.read_now)

    def _warn(self, error: str) -> None:
        if error != self._last_error:  # said once, not every telemetry period
            log.warning("consent file %s: %s; keeping consent %s", self.path, error, self.consent)
            self._last_error = error

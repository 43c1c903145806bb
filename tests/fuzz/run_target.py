"""Runs one fuzz target under atheris, in this process.

    python -m tests.fuzz.run_target NAME [--keep-going=DIR] [libFuzzer flags] [CORPUS | FILE ...]

libFuzzer's flags pass through (``-atheris_runs=N``, ``-max_len=N``, ``-timeout=S``); a
file instead of a corpus directory runs that one input, which is how a crash is replayed
(its traceback printed). Without ``--keep-going`` the first crash ends the run, as
libFuzzer does. With it, each distinct crash (its exception type and where it was
raised) is written to DIR as ``crash-<sha1>`` with its traceback beside it, and fuzzing
goes on, so one run counts every crash it finds (``make fuzz``).
"""

from __future__ import annotations

import hashlib
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import atheris


class KeepGoing:
    """A target that records each distinct crash instead of stopping at the first."""

    def __init__(self, one_input: Callable[[bytes], None], directory: Path) -> None:
        self._one_input = one_input
        self._directory = directory
        self._seen: set[tuple[str, str, int]] = set()
        directory.mkdir(parents=True, exist_ok=True)

    def __call__(self, data: bytes) -> None:
        try:
            self._one_input(data)
        except Exception as e:
            where = traceback.extract_tb(e.__traceback__)[-1]
            key = (type(e).__name__, where.filename, where.lineno or 0)
            if key in self._seen:
                return
            self._seen.add(key)
            path = self._directory / f"crash-{hashlib.sha1(data).hexdigest()}"
            path.write_bytes(data)
            text = "".join(traceback.format_exception(e))
            path.with_suffix(".txt").write_text(text)
            print(f"CRASH {path.name}: {text}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> None:
    """Sets atheris up with the named target and fuzzes (never returns)."""
    name, *rest = argv[1:]
    keep_going = [a for a in rest if a.startswith("--keep-going=")]
    flags = [a for a in rest if a not in keep_going]
    # Coverage feedback from the code under test and the harness, nothing else.
    with atheris.instrument_imports(include=["parkfleet", "tests.fuzz.targets"]):
        from tests.fuzz.targets import TARGETS
    one_input = TARGETS[name].one_input
    if keep_going:
        one_input = KeepGoing(one_input, Path(keep_going[-1].split("=", 1)[1]))
    atheris.Setup([argv[0], *flags], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)

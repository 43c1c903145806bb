"""A short, bounded pass of every fuzz target (``make fuzz`` runs a million inputs each).

Each target runs under atheris in a process of its own from its seed corpus, for 20,000
inputs or 5 seconds, whichever ends first; a crash fails the test with its traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz import driver
from tests.fuzz.targets import TARGETS


@pytest.mark.parametrize("target", list(TARGETS))
def test_a_short_fuzz_pass_finds_no_crash(target: str, tmp_path: Path) -> None:
    outcome = driver.run(target, runs=20_000, work=tmp_path, max_time_s=5)
    tracebacks = [
        (tmp_path / target / "crashes" / f"{name}.txt").read_text()
        for name in outcome.crash_files
        if (tmp_path / target / "crashes" / f"{name}.txt").exists()
    ]
    assert outcome.crashes == 0, "\n".join(tracebacks) or Path(outcome.log).read_text()[-4000:]
    assert outcome.inputs > 100, Path(outcome.log).read_text()[-4000:]

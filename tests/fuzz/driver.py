"""``make fuzz``: every target in its own process, then a table of inputs run and crashes.

    python -m tests.fuzz.driver [--runs N] [--max-time S] [--targets a,b] [--work DIR]

Each target's corpus lives in ``WORK/<target>/corpus`` (seeded with real encoded
messages, grown by each run), its crashes in ``WORK/<target>/crashes`` and its libFuzzer
log in ``WORK/<target>/log.txt``; the table is also written to ``WORK/summary.json``.
Exits 1 when any target crashed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.fuzz.targets import ROOT, TARGETS

_DONE = re.compile(r"^Done (\d+) (?:runs )?in", re.MULTILINE)
_STATUS = re.compile(r"^#(\d+)\s", re.MULTILINE)


@dataclass(frozen=True)
class Outcome:
    """One target's run."""

    target: str
    inputs: int
    crashes: int
    wall_s: float
    exit_code: int
    crash_files: list[str]
    log: str


def seed(target: str, corpus: Path) -> None:
    """Writes the target's seeds (real encoded messages) into its corpus."""
    corpus.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(TARGETS[target].seeds()):
        (corpus / f"seed-{i:03d}").write_bytes(data)


def run(target: str, runs: int, work: Path, max_time_s: float = 0) -> Outcome:
    """Fuzzes one target in a process of its own, for ``runs`` inputs (or ``max_time_s``)."""
    here = work / target
    corpus, crashes = here / "corpus", here / "crashes"
    seed(target, corpus)
    crashes.mkdir(parents=True, exist_ok=True)
    before = set(crashes.iterdir())
    command = [
        sys.executable,
        "-m",
        "tests.fuzz.run_target",
        target,
        f"--keep-going={crashes}",
        f"-atheris_runs={runs}",
        f"-max_len={TARGETS[target].max_len}",
        f"-artifact_prefix={crashes}/",
        "-timeout=10",  # one input this slow is a hang (e.g. a decoder expanding a bomb)
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
    ]
    if max_time_s:
        command.append(f"-max_total_time={max(1, round(max_time_s))}")
    command.append(str(corpus))
    env = dict(os.environ)
    # A PYTHONPATH already set wins (a worktree's package), as it does for the tests.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (env.get("PYTHONPATH", ""), str(ROOT), str(ROOT / "operator")) if p
    )
    log = here / "log.txt"
    start = time.monotonic()
    with log.open("wb") as out:
        code = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=out).returncode
    wall = time.monotonic() - start
    text = log.read_text(errors="replace")
    done = _DONE.findall(text) or _STATUS.findall(text)
    new = sorted(p.name for p in set(crashes.iterdir()) - before if p.suffix != ".txt")
    found = len(new) if new or code == 0 else 1  # a crash libFuzzer itself caught
    return Outcome(target, int(done[-1]) if done else 0, found, wall, code, new, str(log))


def table(outcomes: list[Outcome]) -> str:
    """The results as a text table."""
    lines = [f"{'target':<16} {'inputs':>10} {'crashes':>8} {'wall s':>8} {'inputs/s':>9}"]
    for o in outcomes:
        rate = o.inputs / o.wall_s if o.wall_s else 0.0
        lines.append(f"{o.target:<16} {o.inputs:>10} {o.crashes:>8} {o.wall_s:>8.1f} {rate:>9.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs the targets one after the other; prints the table; 1 when any crashed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs per target")
    parser.add_argument("--max-time", type=float, default=0, help="seconds per target (0: none)")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "fuzz")
    args = parser.parse_args(argv)
    outcomes = []
    for name in args.targets.split(","):
        if name not in TARGETS:
            parser.error(f"unknown target {name!r}; targets: {', '.join(TARGETS)}")
        print(f"fuzzing {name}: {args.runs} inputs ...", flush=True)
        outcomes.append(run(name, args.runs, args.work, args.max_time))
    print(table(outcomes))
    for o in outcomes:
        for f in o.crash_files:
            print(
                f"crash: {args.work / o.target / 'crashes' / f} (replay: python -m "
                f"tests.fuzz.run_target {o.target} <file>)"
            )
        if o.crashes and not o.crash_files:
            print(f"{o.target}: libFuzzer stopped (exit {o.exit_code}); see {o.log}")
    args.work.mkdir(parents=True, exist_ok=True)
    summary = [asdict(o) for o in outcomes]
    (args.work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if any(o.crashes for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())

"""The owner ledger's storage and export: real SQLite files, a settable clock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parkfleet.cli import main
from parkfleet.gateway.ledger import Ledger, format_rows, parse_since, read_ledger

T0 = 1_796_000_400.0  # a whole hour (UTC)


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


async def _ledger(path: Path, clock: Clock) -> Ledger:
    ledger = Ledger(path, flush_interval_s=3600.0, clock=clock)
    await ledger.open()
    return ledger


async def test_figures_survive_a_restart_and_add_up_per_hour(tmp_path: Path) -> None:
    path = tmp_path / "v" / "ledger.shard-0.sqlite3"
    clock = Clock()
    ledger = await _ledger(path, clock)
    ledger.record("car-1", "alice", "p", offered_s=1800.0, task_s=900.0, items=10, energy_wh=80.0)
    ledger.record("car-2", "alice", "p", task_s=360.0, items=5, credit=10.0)
    clock.t += 3600.0
    ledger.record("car-1", "alice", "p", task_s=900.0, items=10, energy_wh=80.0, violations=1)
    ledger.record("car-3", "bob", "q", items=7)
    assert ledger.add_day_energy("car-1", 20_000, 50.0) == 50.0
    ledger.record_consent("car-2", "p", "alice", "withdrawn", 1)
    await ledger.close()

    ledger = await _ledger(path, clock)  # a new gateway process on the same volume
    try:
        assert ledger.day_energy("car-1", 20_000) == 50.0
        assert ledger.add_day_energy("car-1", 20_000, 1.0) == 51.0
        assert ledger.day_energy("car-1", 20_001) == 0.0
        assert ledger.is_withdrawn("car-2")
        assert not ledger.is_withdrawn("car-1")
        ledger.record("car-1", "alice", "p", items=1)
    finally:
        await ledger.close()

    rows = {r.car_id: r for r in read_ledger([path], pool="p")}
    assert set(rows) == {"car-1", "car-2"}
    one = rows["car-1"]
    assert (one.items, one.violations, one.consent) == (21, 1, "active")
    assert one.offered_hours == pytest.approx(0.5)
    assert one.task_hours == pytest.approx(0.5)
    assert one.energy_wh == pytest.approx(160.0)
    assert rows["car-2"].consent == "withdrawn"
    # --since counts the hour it falls in, and not the hours before it.
    late = {r.car_id: r for r in read_ledger([path], since=T0 + 3600.0 + 60.0)}
    assert set(late) == {"car-1", "car-3"}
    assert late["car-1"].items == 11
    by_owner = {r.owner: r for r in read_ledger([path], by="owner")}
    assert by_owner["alice"].items == 26
    assert by_owner["bob"].items == 7


async def test_a_clock_that_went_back_does_not_reopen_a_day(tmp_path: Path) -> None:
    ledger = await _ledger(tmp_path / "l.sqlite3", Clock())
    try:
        ledger.add_day_energy("car-1", 10, 5.0)
        assert ledger.add_day_energy("car-1", 9, 5.0) == 0.0
        assert ledger.day_energy("car-1", 10) == 5.0
    finally:
        await ledger.close()


def test_since_takes_durations_and_dates_and_says_both_when_wrong() -> None:
    assert parse_since("24h", now=T0) == T0 - 86400.0
    assert parse_since("90m", now=T0) == T0 - 5400.0
    assert parse_since("2026-12-01") == 1_796_083_200.0
    assert parse_since("2026-12-01T08:00:00Z") == 1_796_083_200.0 + 8 * 3600
    with pytest.raises(ValueError, match=r"duration .* or an ISO 8601"):
        parse_since("yesterday")


async def test_parkfleet_ledger_prints_csv_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = await _ledger(tmp_path / "ledger.shard-0.sqlite3", Clock())
    ledger.record("car-1", "alice", "p", items=3, energy_wh=1.5)
    await ledger.close()
    assert main(["ledger", "--data-dir", str(tmp_path), "--pool", "p", "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["car_id"], row["items"], row["energy_wh"]) == ("car-1", 3, 1.5)
    assert main(["ledger", "--data-dir", str(tmp_path)]) == 0
    header, line = capsys.readouterr().out.splitlines()
    assert header.startswith("car_id,owner,pool,offered_hours")
    assert line.startswith("car-1,alice,p,")
    assert format_rows([], "csv").startswith("car_id,")
    with pytest.raises(SystemExit, match=r"no ledger\.shard"):
        main(["ledger", "--data-dir", str(tmp_path / "empty")])

"""The owner ledger: what each car offered, ran, used and earned, kept by its gateway shard.

The gateway shard that serves a car's cell is the authority on it: the figures here are
its own observations (the time a task ran by the gateway's clock, the energy of that time
from the car's declared power model, the items whose results reached the sink), never the
car's say-so. The car's own energy figure is kept beside them, as a cross-check.

Per car, owner, pool and hour (UTC, by the gateway's clock) it keeps:

- ``offered_s``: seconds the car was connected and its owner's policy allowed work;
- ``task_s``: seconds a task of the car was running;
- ``items``: items whose results the car delivered;
- ``energy_wh``: energy of those seconds at the socket (``parkfleet.energymodel``);
- ``car_energy_wh``: the energy the car itself reported (cross-check);
- ``credit``: credit for verified work (``CREDIT_PER_TASK_HOUR`` per hour of a task's run
  on the car, granted when the task succeeds, and with redundancy only when its copies
  agree; an attempt that delivered no result earns none);
- ``violations``: times the car reported computing (progress, checkpoints) more than a
  grace period after its owner's policy said stop (must stay 0).

It also keeps each car's energy per local day, the owner's day by the gateway's clock
(the daily budget counts it, so it survives
agent and gateway restarts) and the owner's consent changes (a withdrawal is for good).

Storage: SQLite in the gateway's data volume (``--ledger``), written by one thread of its
own so the event loop never waits on the disk. Figures are buffered and written every
``flush_interval_s`` and on a graceful stop: a gateway killed outright loses at most the
last interval's figures (the work itself is not lost: tasks and results do not live here).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import csv
import datetime as dt
import io
import json
import logging
import math
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "CONSENT_ACTIVE",
    "CONSENT_PAUSED",
    "CONSENT_WITHDRAWN",
    "CREDIT_PER_TASK_HOUR",
    "Ledger",
    "LedgerRow",
    "Usage",
    "format_rows",
    "ledger_file_name",
    "parse_since",
    "read_ledger",
]

log = logging.getLogger(__name__)

# Credit, BOINC-like: granted only for verified work, in a unit tied to compute time (BOINC's
# cobblestone is 1/200 of a day of a reference computer; here 100 is one hour of a car's
# task whose results were accepted).
CREDIT_PER_TASK_HOUR = 100.0

CONSENT_ACTIVE = "active"
CONSENT_PAUSED = "paused"
CONSENT_WITHDRAWN = "withdrawn"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    car_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    pool TEXT NOT NULL,
    hour INTEGER NOT NULL,
    offered_s REAL NOT NULL DEFAULT 0,
    task_s REAL NOT NULL DEFAULT 0,
    items INTEGER NOT NULL DEFAULT 0,
    energy_wh REAL NOT NULL DEFAULT 0,
    car_energy_wh REAL NOT NULL DEFAULT 0,
    credit REAL NOT NULL DEFAULT 0,
    violations INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (car_id, owner, pool, hour)
);
CREATE TABLE IF NOT EXISTS daily_energy (
    car_id TEXT NOT NULL,
    day INTEGER NOT NULL,
    energy_wh REAL NOT NULL,
    PRIMARY KEY (car_id, day)
);
CREATE TABLE IF NOT EXISTS consent (
    car_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    pool TEXT NOT NULL,
    unix_ms INTEGER NOT NULL,
    consent TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS consent_by_car ON consent (car_id, unix_ms);
"""


def ledger_file_name(shard: int) -> str:
    """A shard's ledger file in the gateway's data volume."""
    return f"ledger.shard-{shard}.sqlite3"


@dataclass(slots=True)
class Usage:
    """Amounts for one car, owner, pool and hour (see the module's docstring)."""

    offered_s: float = 0.0
    task_s: float = 0.0
    items: int = 0
    energy_wh: float = 0.0
    car_energy_wh: float = 0.0
    credit: float = 0.0
    violations: int = 0


# The amounts, in the order of the usage table's columns, and those that are counts.
_AMOUNTS = tuple(f.name for f in fields(Usage))
_INTS = frozenset(f.name for f in fields(Usage) if isinstance(f.default, int))

# Each car's latest consent (the row written last).
_LATEST_CONSENT = (
    "SELECT car_id, unix_ms, consent FROM consent c WHERE rowid = "
    "(SELECT MAX(rowid) FROM consent d WHERE d.car_id = c.car_id)"
)


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One car's (or owner's) totals over a period, as ``parkfleet ledger`` prints them."""

    car_id: str
    owner: str
    pool: str
    offered_hours: float
    task_hours: float
    items: int
    energy_wh: float
    car_energy_wh: float
    credit: float
    violations: int
    consent: str


_Key = tuple[str, str, str, int]  # car, owner, pool, hour


class Ledger:
    """The ledger of one gateway shard.

    Args:
        path: The SQLite file (created with its folder); None keeps it in memory only
            (a gateway without a data volume, tests).
        flush_interval_s: How often buffered figures are written.
        clock: Wall-clock seconds (hour buckets).
    """

    def __init__(
        self,
        path: Path | None,
        flush_interval_s: float = 5.0,
        clock: Any = time.time,
    ) -> None:
        self.path = path
        self.flush_interval_s = flush_interval_s
        self._clock = clock
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._pending: dict[_Key, Usage] = {}
        self._pending_days: dict[tuple[str, int], float] = {}
        # The last change per car since the last write (a car flapping its consent adds
        # at most one row a flush).
        self._pending_consent: dict[str, tuple[str, str, str, int, str]] = {}
        self._flushes: set[asyncio.Task[None]] = set()
        # Each car's energy on its latest local day: (day, Wh), loaded at open.
        self._days: dict[str, tuple[int, float]] = {}
        self._withdrawn: set[str] = set()
        self._consent: dict[str, str] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    # ---- lifecycle -----------------------------------------------------------------

    async def open(self) -> None:
        """Opens (or creates) the file and loads what the gateway needs in memory: the
        cars' latest day of energy, their consent, the withdrawn cars."""
        loop = asyncio.get_running_loop()
        if self._executor is None:
            # One thread: the SQLite connection is used by the thread that opened it.
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ledger")
        days, consent = await loop.run_in_executor(self._executor, self._open)
        self._days = days
        self._consent = consent
        self._withdrawn = {c for c, s in consent.items() if s == CONSENT_WITHDRAWN}
        self._flusher = loop.create_task(self._flush_loop(), name="ledger-flush")

    def _open(self) -> tuple[dict[str, tuple[int, float]], dict[str, str]]:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(self.path) if self.path is not None else ":memory:")
        if self.path is not None:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        self._db = db
        days: dict[str, tuple[int, float]] = {}
        for car, day, wh in db.execute(
            "SELECT car_id, day, energy_wh FROM daily_energy d WHERE day = "
            "(SELECT MAX(day) FROM daily_energy e WHERE e.car_id = d.car_id)"
        ):
            days[car] = (int(day), float(wh))
        consent = {car: state for car, _, state in db.execute(_LATEST_CONSENT)}
        return days, consent

    async def close(self) -> None:
        """Writes what is buffered and closes the file."""
        if self._flusher is not None:
            # Not while it writes: a write cancelled mid-way would be merged back and
            # written twice.
            async with self._lock:
                self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        if self._executor is None:
            return
        try:
            await self.flush()
        except (sqlite3.Error, OSError) as e:
            log.error("the ledger's last figures were not written: %r", e)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)
        self._executor = None

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            try:
                await self.flush()
            except (sqlite3.Error, OSError) as e:  # a full disk: keep the figures, retry
                log.warning("writing the ledger failed (retrying): %r", e)

    async def flush(self) -> None:
        """Writes the buffered figures in one transaction (on the ledger's thread)."""
        async with self._lock:
            if not (self._pending or self._pending_days or self._pending_consent):
                return
            if self._executor is None:
                raise sqlite3.ProgrammingError("the ledger is not open")
            pending, self._pending = self._pending, {}
            days, self._pending_days = self._pending_days, {}
            consent, self._pending_consent = list(self._pending_consent.values()), {}
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(self._executor, self._write, pending, days, consent)
            except BaseException:
                self._merge_back(pending, days, consent)
                raise

    def _merge_back(
        self,
        pending: dict[_Key, Usage],
        days: dict[tuple[str, int], float],
        consent: list[tuple[str, str, str, int, str]],
    ) -> None:
        for (car_id, owner, pool, hour), u in pending.items():
            self._add(car_id, owner, pool, hour, asdict(u))
        for dkey, wh in days.items():
            self._pending_days[dkey] = max(self._pending_days.get(dkey, 0.0), wh)
        for row in consent:
            self._pending_consent.setdefault(row[0], row)

    def _write(
        self,
        pending: dict[_Key, Usage],
        days: dict[tuple[str, int], float],
        consent: list[tuple[str, str, str, int, str]],
    ) -> None:
        db = self._db
        if db is None:
            raise sqlite3.ProgrammingError("the ledger is closed")
        with db:
            db.executemany(
                "INSERT INTO usage (car_id, owner, pool, hour, "
                + ", ".join(_AMOUNTS)
                + ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (car_id, owner, pool, hour) DO UPDATE SET "
                + ", ".join(f"{a} = {a} + excluded.{a}" for a in _AMOUNTS),
                [(*key, *(getattr(u, a) for a in _AMOUNTS)) for key, u in pending.items()],
            )
            # The day's figure is a running total kept in memory: the larger one wins.
            db.executemany(
                "INSERT INTO daily_energy (car_id, day, energy_wh) VALUES (?, ?, ?) "
                "ON CONFLICT (car_id, day) DO UPDATE SET "
                "energy_wh = MAX(energy_wh, excluded.energy_wh)",
                [(car, day, wh) for (car, day), wh in days.items()],
            )
            db.executemany(
                "INSERT INTO consent (car_id, owner, pool, unix_ms, consent) "
                "VALUES (?, ?, ?, ?, ?)",
                consent,
            )

    # ---- recording (cheap, synchronous: called from the event loop) ------------------

    def _add(
        self, car_id: str, owner: str, pool: str, hour: int, amounts: Mapping[str, float]
    ) -> None:
        key = (car_id, owner, pool, hour)
        got = self._pending.get(key)
        if got is None:
            got = self._pending[key] = Usage()
        for name, value in amounts.items():
            if not math.isfinite(value) or value <= 0:
                continue
            setattr(got, name, getattr(got, name) + (int(value) if name in _INTS else value))

    def record(self, car_id: str, owner: str, pool: str, **amounts: float) -> None:
        """Adds amounts (``Usage`` field names) to the car's current hour."""
        self._add(car_id, owner, pool, int(self._clock() // 3600) * 3600, amounts)

    def add_day_energy(self, car_id: str, day: int, wh: float) -> float:
        """Adds energy to the car's local ``day`` (the daily budget); returns the day's
        total. A day before the car's latest is not counted (a clock that went back)."""
        latest = self._days.get(car_id)
        if latest is not None and day < latest[0]:
            return 0.0
        total = (latest[1] if latest is not None and latest[0] == day else 0.0) + max(0.0, wh)
        self._days[car_id] = (day, total)
        self._pending_days[car_id, day] = total
        return total

    def day_energy(self, car_id: str, day: int) -> float:
        """The energy the ledger counts for the car on its local ``day``."""
        latest = self._days.get(car_id)
        return latest[1] if latest is not None and latest[0] == day else 0.0

    def record_consent(
        self, car_id: str, pool: str, owner: str, consent: str, unix_ms: int
    ) -> None:
        """Records a change of the owner's consent (``active``, ``paused``, ``withdrawn``)."""
        if self._consent.get(car_id, CONSENT_ACTIVE) == consent:
            return
        self._consent[car_id] = consent
        self._pending_consent[car_id] = (car_id, owner, pool, unix_ms, consent)
        if consent == CONSENT_WITHDRAWN:
            self._withdrawn.add(car_id)
            # For good, also if the gateway is killed in the next seconds: written now.
            if self._executor is not None:
                t = asyncio.get_running_loop().create_task(self._flush_quietly())
                self._flushes.add(t)
                t.add_done_callback(self._flushes.discard)

    async def _flush_quietly(self) -> None:
        try:
            await self.flush()
        except (sqlite3.Error, OSError) as e:  # the periodic flush retries
            log.warning("writing the ledger failed (retrying): %r", e)

    def is_paused(self, car_id: str) -> bool:
        """Whether the car's last recorded consent is ``paused``."""
        return self._consent.get(car_id) == CONSENT_PAUSED

    def is_withdrawn(self, car_id: str) -> bool:
        """Whether the car's owner withdrew it (for good)."""
        return car_id in self._withdrawn

    def consent(self, car_id: str) -> str:
        """The car's last recorded consent."""
        return self._consent.get(car_id, CONSENT_ACTIVE)


# ---- reading it back (``parkfleet ledger``) --------------------------------------------


def parse_since(value: str, now: float | None = None) -> float:
    """``--since``: a duration back from now (``90m``, ``24h``, ``7d``) or an ISO 8601
    date or time (``2026-12-01``, ``2026-12-01T08:00:00Z``; without a zone: UTC).

    Returns:
        Unix seconds.

    Raises:
        ValueError: Neither form; the message says both.
    """
    text = value.strip()
    now = time.time() if now is None else now
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    if text and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - float(text[:-1]) * units[text[-1]]
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since {value!r}: give a duration back from now (90m, 24h, 7d) or an ISO "
            "8601 date or time (2026-12-01, 2026-12-01T08:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def read_ledger(
    paths: Sequence[Path],
    pool: str | None = None,
    since: float | None = None,
    by: Literal["car", "owner"] = "car",
) -> list[LedgerRow]:
    """Totals per car (or owner) from one or more shards' ledger files, read only.

    Args:
        paths: Ledger files (one per gateway shard).
        pool: Only this pool.
        since: Only hours that end after this (unix seconds): the hour it falls in counts.
        by: ``car`` or ``owner``.

    Raises:
        FileNotFoundError: A file does not exist.
        sqlite3.Error: A file is not a ledger.
    """
    totals: dict[tuple[str, str, str], list[Any]] = {}
    consent: dict[str, tuple[int, str]] = {}
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"no ledger at {path}")
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            where: list[str] = ["1 = 1"]
            args: list[str | float] = []
            if pool is not None:
                where.append("pool = ?")
                args.append(pool)
            if since is not None:
                where.append("hour + 3600 > ?")
                args.append(since)
            query = (
                "SELECT car_id, owner, pool, "
                + ", ".join(f"SUM({a})" for a in _AMOUNTS)
                + " FROM usage WHERE "
                + " AND ".join(where)
                + " GROUP BY car_id, owner, pool"
            )
            for car, owner, p, *amounts in db.execute(query, args):
                key = (car if by == "car" else "", owner, p)
                got = totals.setdefault(key, [0.0] * len(_AMOUNTS))
                for i, v in enumerate(amounts):
                    got[i] += v or 0
            for car, at, state in db.execute(_LATEST_CONSENT):
                if car not in consent or consent[car][0] <= at:
                    consent[car] = (int(at), str(state))
        finally:
            db.close()
    rows = []
    for (car, owner, p), a in sorted(totals.items()):
        u = Usage(*a)
        rows.append(
            LedgerRow(
                car_id=car,
                owner=owner,
                pool=p,
                offered_hours=u.offered_s / 3600.0,
                task_hours=u.task_s / 3600.0,
                items=int(u.items),
                energy_wh=u.energy_wh,
                car_energy_wh=u.car_energy_wh,
                credit=u.credit,
                violations=int(u.violations),
                consent=consent.get(car, (0, CONSENT_ACTIVE))[1] if by == "car" else "",
            )
        )
    return rows


def format_rows(rows: Iterable[LedgerRow], fmt: Literal["csv", "json"]) -> str:
    """The rows as CSV (a header line first) or as a JSON array of objects."""
    rows = list(rows)
    if fmt == "json":
        return json.dumps([asdict(r) for r in rows], indent=2) + "\n"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([f.name for f in fields(LedgerRow)])
    for r in rows:
        writer.writerow(
            [
                f"{v:.6g}" if isinstance(v, float) else v
                for v in (getattr(r, f.name) for f in fields(LedgerRow))
            ]
        )
    return out.getvalue()

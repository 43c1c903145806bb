"""``parkfleet ledger``: what each car (or owner) offered, ran, used and earned.

Reads the owner ledgers the gateway shards keep in their data volume (one SQLite file per
shard, ``ledger.shard-N.sqlite3``; see ``parkfleet.gateway.ledger``), read only, while the
gateways run. In a cluster, run it in a gateway pod::

    kubectl exec -n parkfleet-system pf-gateway-0 -- \\
        parkfleet ledger --data-dir /var/lib/parkfleet/data --pool demo --since 24h

Columns: car_id, owner, pool, offered_hours (connected, policy allowing work), task_hours,
items, energy_wh (the gateway's account), car_energy_wh (the car's own figure, a
cross-check), credit (100 per task-hour of accepted work), violations (must be 0) and the
owner's last consent. Figures are by the gateways' clock, in whole hours: ``--since``
counts the hour it falls in.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import Any

from parkfleet.gateway.ledger import format_rows, parse_since, read_ledger

__all__ = ["register"]


def _files(args: argparse.Namespace) -> list[Path]:
    if args.ledger:
        return [Path(p) for p in args.ledger]
    found = sorted(Path(args.data_dir).glob("ledger.shard-*.sqlite3"))
    if not found:
        raise SystemExit(
            f"parkfleet ledger: no ledger.shard-*.sqlite3 in {args.data_dir} "
            "(give the gateways' --data-dir, or --ledger FILE)"
        )
    return found


def _run(args: argparse.Namespace) -> int:
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as e:
        raise SystemExit(f"parkfleet ledger: {e}") from None
    try:
        rows = read_ledger(_files(args), pool=args.pool or None, since=since, by=args.by)
    except (FileNotFoundError, sqlite3.Error) as e:
        raise SystemExit(f"parkfleet ledger: {e}") from None
    sys.stdout.write(format_rows(rows, args.format))
    return 0


def register(subparsers: Any) -> None:
    """Adds ``parkfleet ledger``."""
    p = subparsers.add_parser(
        "ledger",
        help="the owner ledger: per car or owner, hours offered and worked, items, energy, "
        "credit, violations",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--pool", default="", help="only this pool")
    p.add_argument("--since", default="", help="90m, 24h, 7d, or an ISO 8601 date or time")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--by", choices=("car", "owner"), default="car")
    p.add_argument("--data-dir", default=".", help="the gateways' data volume")
    p.add_argument(
        "--ledger", action="append", default=[], metavar="FILE", help="a ledger file (repeatable)"
    )
    p.set_defaults(func=_run)

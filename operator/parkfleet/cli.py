"""The ``parkfleet`` command: one entry point, one subcommand per moving part.

Each subcommand lives in the module of the part it runs; that module exposes
``register(subparsers)`` which adds its parser and sets ``func`` to a callable
taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

# Modules that add a subcommand, in the order `parkfleet --help` lists them.
SUBCOMMAND_MODULES = (
    "parkfleet.devcluster",
    "parkfleet.certs",
    "parkfleet.gateway.command",
    "parkfleet.vehicle.command",
    "parkfleet.sim.command",
    "parkfleet.models.command",
    "parkfleet.controller.run",
    "parkfleet.demo",
    "parkfleet.results",
    "parkfleet.gateway.ledgercommand",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parkfleet", description="Parked cars as Kubernetes GPU capacity."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

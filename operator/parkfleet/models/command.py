"""``parkfleet model ACTION``: build the models parkfleet ships, push one to object storage."""

from __future__ import annotations

from typing import Any

from parkfleet.models import digits, push

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Adds ``parkfleet model {build,push}``."""
    parser = subparsers.add_parser(
        "model", help="build the models parkfleet ships, or push one to object storage"
    )
    sub = parser.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    digits.add_parser(sub)
    push.add_parser(sub)

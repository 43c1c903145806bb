"""``parkfleet model ACTION``: build the models parkfleet ships, append pooling to an
encoder, push a model to object storage."""

from __future__ import annotations

from typing import Any

from parkfleet.models import digits, pooling, push

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Adds ``parkfleet model {build,pool,push}``."""
    parser = subparsers.add_parser(
        "model", help="build the models parkfleet ships, pool an encoder, push to object storage"
    )
    sub = parser.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    digits.add_parser(sub)
    pooling.register(sub)
    push.add_parser(sub)

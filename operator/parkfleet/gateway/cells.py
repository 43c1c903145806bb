"""Which cell a car belongs to: its pool plus a cell index, both from its certificate.

A cell is up to ``cellSize`` cars of one pool and becomes one virtual Node (decision 1).
The mapping is deterministic so that a reconnecting car lands in the same cell.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

__all__ = ["DEFAULT_POOL", "cell_id", "cell_of"]

DEFAULT_POOL = "default"


def cell_id(pool: str, index: str | int) -> str:
    """The id of cell ``index`` of ``pool``, e.g. ``"eu-west-3"``."""
    return f"{pool}-{index}"


def cell_of(car_id: str, attributes: Mapping[str, str], cells_per_pool: int = 1) -> str:
    """The cell of a car.

    Args:
        car_id: The car id from its certificate.
        attributes: The certificate's attributes; ``pool`` names the pool (default
            ``"default"``) and ``cell``, when present, pins the cell index.
        cells_per_pool: Without a ``cell`` attribute, cars are spread over this many
            cells by a stable hash of the car id (CRC-32, not Python's salted hash).

    Returns:
        The cell id.
    """
    pool = attributes.get("pool") or DEFAULT_POOL
    pinned = attributes.get("cell")
    if pinned:
        return cell_id(pool, pinned)
    if cells_per_pool <= 1:
        return cell_id(pool, 0)
    return cell_id(pool, zlib.crc32(car_id.encode()) % cells_per_pool)

"""Which cell a car belongs to: its pool plus a cell index, both from its certificate.

A cell is up to ``cellSize`` cars of one pool and becomes one virtual Node (decision 1).
The mapping is deterministic so that a reconnecting car lands in the same cell.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from parkfleet.api.fleetpool import FleetPoolSpec
from parkfleet.api.poolmatch import choose_pool
from parkfleet.contract import cell_id
from parkfleet.policy import Policy

__all__ = ["DEFAULT_POOL", "UNPOOLED", "PoolCell", "cell_of", "pool_cell_of"]

DEFAULT_POOL = "default"
# Cars no FleetPool selects wait here: no Node serves this cell, so no work reaches them.
UNPOOLED = "unpooled"


def cell_of(car_id: str, attributes: Mapping[str, str], cells_per_pool: int = 1) -> str:
    """The cell of a car.

    Args:
        car_id: The car id from its certificate.
        attributes: The certificate's attributes; ``pool`` names the pool (default
            ``"default"``) and ``cell``, when it is a number, pins the cell index.
        cells_per_pool: Without a ``cell`` attribute, cars are spread over this many
            cells by a stable hash of the car id (CRC-32, not Python's salted hash).

    Returns:
        The cell id.
    """
    pool = attributes.get("pool") or DEFAULT_POOL
    pinned = attributes.get("cell", "")
    if pinned.isdigit():
        return cell_id(pool, int(pinned))
    if cells_per_pool <= 1:
        return cell_id(pool, 0)
    return cell_id(pool, zlib.crc32(car_id.encode()) % cells_per_pool)


@dataclass(frozen=True)
class PoolCell:
    """Where a car belongs when FleetPools decide: its pool, its cell, the pool's floor.

    ``contenders`` names the pools that tie for a car refused by the most-specific rule
    (``parkfleet.api.poolmatch``); it is empty for every other car.
    """

    pool: str
    cell: str
    floor: Policy | None
    contenders: tuple[str, ...] = ()

    @property
    def refused(self) -> bool:
        """Whether several pools match the car and none is the most specific."""
        return bool(self.contenders)


def pool_cell_of(
    car_id: str,
    attributes: Mapping[str, str],
    pools: Sequence[FleetPoolSpec],
    cars_in: Callable[[str], int] = lambda cell: 0,
) -> PoolCell:
    """The pool and cell of a car from the FleetPools' selectors.

    The car joins the pool of the most specific matching selector
    (:func:`parkfleet.api.poolmatch.choose_pool`); when several match and none is the most
    specific, it is refused and waits unpooled. Its cell is the certificate's ``cell``
    attribute when that is a valid index of the pool, else a stable hash of the car id over
    the pool's cells. A cell holds at most ``cellSize`` cars: a car whose cell is full takes
    the next cell with room, and waits unpooled when every cell of its pool is full (it
    never falls through to a less specific pool).

    Args:
        car_id: The car id from its certificate.
        attributes: The certificate's attributes.
        pools: The FleetPools.
        cars_in: How many other cars a cell holds now.

    Returns:
        The car's place; pool and cell are ``UNPOOLED`` when no pool selects it, it is
        refused (then ``contenders`` says by which pools) or its pool is full.
    """
    choice = choose_pool(attributes, pools)
    pool = choice.pool
    if pool is None:
        return PoolCell(UNPOOLED, UNPOOLED, None, choice.contenders)
    pinned = attributes.get("cell", "")
    if pinned.isdigit() and int(pinned) < pool.cells:
        index = int(pinned)
    else:
        index = zlib.crc32(car_id.encode()) % pool.cells
    for step in range(pool.cells):
        cell = cell_id(pool.name, (index + step) % pool.cells)
        if cars_in(cell) < pool.cell_size:
            return PoolCell(pool.name, cell, pool.floor)
    return PoolCell(UNPOOLED, UNPOOLED, None)

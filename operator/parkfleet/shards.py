"""Which gateway shard owns a cell: rendezvous (highest-random-weight) hashing.

Consistent: changing the shard count moves only the cells whose winner changed
(about 1/N of them), and every process computes the same answer with no shared state.
"""

from __future__ import annotations

import hashlib

__all__ = ["shard_of"]


def _weight(cell: str, shard: int) -> int:
    digest = hashlib.blake2b(f"{cell}/{shard}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def shard_of(cell: str, shards: int) -> int:
    """The shard (0..shards-1) that owns ``cell``.

    Args:
        cell: The cell id, e.g. ``"eu-west-3"``.
        shards: Number of gateway shards (at least 1).

    Returns:
        The owning shard.
    """
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    return max(range(shards), key=lambda s: _weight(cell, s))

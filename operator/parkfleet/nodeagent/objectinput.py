"""An input in object storage: one ``s3://bucket/key`` object, or every ``.npy``/``.jsonl``
object under a prefix, in key order, read by range (:mod:`parkfleet.nodeagent.ranged`).
"""

from __future__ import annotations

from collections.abc import Callable

import obstore
from obstore.store import S3Store

from parkfleet.nodeagent.ranged import ObjectReader
from parkfleet.objectstore import S3Location

__all__ = ["MAX_PARTS", "list_objects"]

MAX_PARTS = 100_000  # objects of one input prefix
_SUFFIXES = (".npy", ".jsonl")


async def list_objects(
    store: S3Store, where: S3Location, on_read: Callable[[int], None] | None = None
) -> list[ObjectReader]:
    """The object ``where`` names, or else the ``.npy``/``.jsonl`` objects under it as a
    prefix (``where.key`` + ``/``), in key order.

    Raises:
        ValueError: Nothing there, or more than :data:`MAX_PARTS` objects.
        Exception: obstore's errors (denied, unreachable), for the caller to word.
    """
    key = where.key
    if key and not key.endswith("/"):
        try:
            meta = await obstore.head_async(store, key)
        except FileNotFoundError:
            pass
        else:
            etag = str(meta.get("e_tag") or "")
            return [ObjectReader(store, key, int(meta["size"]), etag, on_read)]
    prefix = key.rstrip("/") + "/" if key else ""
    found: list[ObjectReader] = []
    stream = obstore.list(store, prefix=prefix or None, chunk_size=1000)
    async for batch in stream:
        for meta in batch:
            path = str(meta["path"])
            if not path.endswith(_SUFFIXES) or path.rsplit("/", 1)[-1].startswith("."):
                continue
            etag = str(meta.get("e_tag") or "")
            found.append(ObjectReader(store, path, int(meta["size"]), etag, on_read))
            if len(found) > MAX_PARTS:
                raise ValueError(f"{where.uri}: more than {MAX_PARTS} objects")
    if not found:
        raise ValueError(f"{where.uri}: no such object, and no .npy or .jsonl objects under it")
    found.sort(key=lambda r: r.key)
    return found

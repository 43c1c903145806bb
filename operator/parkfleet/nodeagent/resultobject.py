"""A unit's result as one object in object storage: ``<prefix>/<job uid>/unit-NNNNNN.npz``.

Exactly once by construction: the key holds the job's uid and the unit's number, and an
object appears whole or not at all (a PUT, or a multipart upload completed at its end),
only once the unit's last item is in it. The object carries the job's uid and its item
count as metadata, so that a restarted gateway tells a unit done from one request and
no read of the object; one that names another job (or none) is not the unit done.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import obstore

from parkfleet.nodeagent.taskio import read_output
from parkfleet.objectstore import S3Credentials, S3Location, s3_store

__all__ = [
    "META_FIRST_ITEM",
    "META_ITEMS",
    "META_JOB_UID",
    "ResultObject",
    "unit_prefix",
]

META_JOB_UID = "parkfleet-job-uid"
META_ITEMS = "parkfleet-items"
META_FIRST_ITEM = "parkfleet-first-item"
_MAX_META = 128


def unit_prefix(output: S3Location, job_uid: str) -> S3Location:
    """Where a job's unit objects are: ``<output prefix>/<job uid>/``."""
    return output.child(job_uid + "/")


@dataclass(frozen=True, slots=True)
class ResultObject:
    """A result object and the InferenceJob it belongs to.

    Attributes:
        location: The object.
        credentials: The job's object store.
        job_uid: The uid of the job whose unit it holds (written as metadata); "" for a
            plain pod's result.
    """

    location: S3Location
    credentials: S3Credentials
    job_uid: str = ""
    on_upload: Callable[[int, bool], None] | None = field(default=None, compare=False, repr=False)

    @property
    def name(self) -> str:
        """The object's last path part (``unit-000042.npz``)."""
        return self.location.key.rsplit("/", 1)[-1]

    async def upload(self, file: Path, items: int, first_item: int) -> None:
        """Puts ``file`` as the object, whole (multipart when large), with its metadata."""
        store = s3_store(self.credentials, self.location.bucket)
        attributes = {
            "Content-Type": "application/octet-stream",
            META_ITEMS: str(items),
            META_FIRST_ITEM: str(first_item),
        }
        if self.job_uid:
            attributes[META_JOB_UID] = self.job_uid
        try:
            await obstore.put_async(store, self.location.key, file, attributes=attributes)
        except Exception:
            if self.on_upload is not None:
                self.on_upload(0, False)
            raise
        if self.on_upload is not None:
            self.on_upload((await asyncio.to_thread(file.stat)).st_size, True)

    async def finished_items(self) -> int | None:
        """How many items the object holds; None when there is none, or it is not this
        job's (another uid, or none). Errors reaching the store propagate (retry)."""
        if not self.job_uid:
            return None
        store = s3_store(self.credentials, self.location.bucket)
        try:
            got = await obstore.get_async(store, self.location.key, options={"head": True})
        except FileNotFoundError:
            return None
        meta = got.attributes
        if str(meta.get(META_JOB_UID, ""))[:_MAX_META] != self.job_uid:
            return None
        items = str(meta.get(META_ITEMS, ""))
        return int(items) if items.isdigit() and len(items) <= 12 else None

    async def read_output(self, name: str) -> npt.NDArray[np.generic] | None:
        """One output of the object (None when the object or the output is missing)."""
        store = s3_store(self.credentials, self.location.bucket)
        try:
            got = await obstore.get_async(store, self.location.key)
            data = await got.bytes_async()
        except FileNotFoundError:
            return None
        return await asyncio.to_thread(read_output, io.BytesIO(bytes(data)), name)

"""``parkfleet results NAMESPACE/JOB --out FILE``: a job's unit results as one file.

The job's ``status.results`` says where its units are (``volume:<namespace>/<path>/``
or ``s3://bucket/prefix/<uid>/``). Every unit ``unit-NNNNNN.npz`` is read, checked
(it names this job's uid, starts at its unit's first item and holds its unit's items),
and appended in item order to ``FILE``: ``.npy`` (one output), ``.parquet`` (a column
per output, plus ``item``) or ``.jsonl`` (one object per item). A missing or foreign unit
is an error naming it, and nothing is left at ``FILE``.

Object storage is read with the job's own Secret (``spec.objectStore.secretName``,
which needs ``get`` on it), or with the ``AWS_*`` environment variables when
``--credentials env`` is given. The data volume is read where this command can see it
(``--data-root``: the demo's, or a volume mounted here).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import obstore

from parkfleet.api import GROUP, VERSION, InferenceJobSpec
from parkfleet.contract import parse_results_location
from parkfleet.kubeclient import connect
from parkfleet.objectstore import (
    BadSecret,
    S3Credentials,
    credentials_from_env,
    credentials_from_secret,
    parse_s3_uri,
    s3_store,
)

__all__ = ["FORMATS", "MissingUnits", "UnitSource", "assemble", "register"]

FORMATS = (".npy", ".parquet", ".jsonl")
_CONCURRENCY = 8  # units fetched at once
_RESERVED = ("first_item", "job_uid")


class MissingUnits(Exception):
    """Some units have no result (or a result that is not this job's)."""


@dataclass(frozen=True)
class UnitSource:
    """Where a job's unit files are.

    Attributes:
        job_uid: The job's uid (every unit file must name it).
        units: ``(first item, items)`` of each unit, in order.
        folder: Unit files on a volume seen here, or None.
        prefix: ``s3://bucket/prefix/`` of the unit objects, or "".
        credentials: For ``prefix``.
    """

    job_uid: str
    units: tuple[tuple[int, int], ...]
    folder: Path | None = None
    prefix: str = ""
    credentials: S3Credentials | None = None

    async def fetch(self, index: int) -> bytes | None:
        """Unit ``index``'s file, or None when there is none."""
        name = f"unit-{index:06d}.npz"
        if self.folder is not None:
            path = self.folder / name
            try:
                return await asyncio.to_thread(path.read_bytes)
            except FileNotFoundError:
                return None
        assert self.credentials is not None
        loc = parse_s3_uri(self.prefix).child(name)
        store = s3_store(self.credentials, loc.bucket)
        try:
            got = await obstore.get_async(store, loc.key)
            return bytes(await got.bytes_async())
        except FileNotFoundError:
            return None


def _check_unit(data: bytes, index: int, first: int, items: int, uid: str) -> dict[str, Any]:
    """A unit file's outputs, or ValueError saying why it is not this job's unit."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        if "job_uid" not in z.files or str(z["job_uid"]) != uid:
            raise ValueError(f"unit {index}: its file names another job (or none)")
        if int(np.asarray(z["first_item"]).reshape(-1)[0]) != first:
            raise ValueError(f"unit {index}: starts at another item than {first}")
        outputs = {k: np.asarray(z[k]) for k in z.files if k not in _RESERVED}
    for name, arr in outputs.items():
        if arr.shape[:1] != (items,):
            raise ValueError(
                f"unit {index}: output {name!r} holds {arr.shape[0]} items, not {items}"
            )
    if not outputs:
        raise ValueError(f"unit {index}: holds no outputs")
    return outputs


async def _units(source: UnitSource) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """Every unit's outputs, in order, fetched a few at a time ahead.

    Raises:
        MissingUnits: Units with no file (all of them are named, up to 20), or a file that
            is not this job's unit.
    """
    missing = []
    queue: list[asyncio.Task[bytes | None]] = []
    count = len(source.units)
    next_fetch = 0
    for index in range(count):
        while next_fetch < count and len(queue) < _CONCURRENCY:
            queue.append(asyncio.ensure_future(source.fetch(next_fetch)))
            next_fetch += 1
        data = await queue.pop(0)
        first, items = source.units[index]
        if data is None:
            missing.append(index)
            continue
        if missing:
            continue  # already failing: only find the rest of the missing ones
        try:
            outputs = await asyncio.to_thread(
                _check_unit, data, index, first, items, source.job_uid
            )
        except ValueError as exc:
            for t in queue:
                t.cancel()
            raise MissingUnits(str(exc)) from None
        yield first, outputs
    if missing:
        shown = ", ".join(str(i) for i in missing[:20]) + (" ..." if len(missing) > 20 else "")
        raise MissingUnits(f"{len(missing)} of {count} units have no result: {shown}")


class _Writer:
    def __init__(self, path: Path, f: IO[bytes], total: int, only: str) -> None:
        self.path = path
        self.f = f
        self.total = total
        self.only = only
        self.started = False
        self.parquet: Any = None

    def write(self, first: int, outputs: Mapping[str, npt.NDArray[Any]]) -> None:
        names = sorted(outputs)
        if self.only:
            if self.only not in outputs:
                raise ValueError(f"--output {self.only}: the results hold {', '.join(names)}")
            outputs = {self.only: outputs[self.only]}
            names = [self.only]
        suffix = self.path.suffix
        if suffix == ".npy":
            if len(names) != 1:
                raise ValueError(
                    f"a .npy holds one output and the results hold {', '.join(names)}: "
                    "choose one with --output, or write .parquet or .jsonl"
                )
            arr = np.ascontiguousarray(outputs[names[0]])
            if not self.started:
                header = {
                    "descr": np.lib.format.dtype_to_descr(arr.dtype),
                    "fortran_order": False,
                    "shape": (self.total, *arr.shape[1:]),
                }
                np.lib.format.write_array_header_2_0(self.f, header)
            self.f.write(arr.data)
        elif suffix == ".jsonl":
            n = len(next(iter(outputs.values())))
            for i in range(n):
                doc = {"item": first + i, **{k: outputs[k][i].tolist() for k in names}}
                self.f.write((json.dumps(doc, allow_nan=True) + "\n").encode())
        else:
            self._parquet(first, outputs, names)
        self.started = True

    def _parquet(
        self, first: int, outputs: Mapping[str, npt.NDArray[Any]], names: list[str]
    ) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        n = len(next(iter(outputs.values())))
        columns = {"item": pa.array(np.arange(first, first + n, dtype=np.int64))}
        for k in names:
            arr = np.ascontiguousarray(outputs[k])
            if arr.ndim == 1:
                columns[k] = pa.array(arr)
            else:
                width = math.prod(arr.shape[1:])
                flat = pa.array(arr.reshape(-1))
                columns[k] = pa.FixedSizeListArray.from_arrays(flat, width)
        table = pa.table(columns)
        if self.parquet is None:
            self.parquet = pq.ParquetWriter(self.f, table.schema)
        self.parquet.write_table(table)

    def close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()


async def assemble(source: UnitSource, out: Path, output: str = "") -> int:
    """Writes every unit of ``source`` to ``out`` in item order; returns the item count.

    Raises:
        MissingUnits: A unit is missing or not this job's (``out`` is not written).
        ValueError: The format cannot hold the outputs (e.g. ``.npy`` of several).
    """
    if out.suffix not in FORMATS:
        raise ValueError(
            f"{out.name}: the format is chosen by its suffix, one of {', '.join(FORMATS)}"
        )
    total = sum(items for _, items in source.units)
    await asyncio.to_thread(out.parent.mkdir, parents=True, exist_ok=True)
    fd, tmp = await asyncio.to_thread(tempfile.mkstemp, dir=out.parent, prefix=f".{out.name}.")
    try:
        f = await asyncio.to_thread(os.fdopen, fd, "wb")
        try:
            writer = _Writer(out, f, total, output)
            async for first, outputs in _units(source):
                await asyncio.to_thread(writer.write, first, outputs)
            await asyncio.to_thread(writer.close)
        finally:
            await asyncio.to_thread(f.close)
        await asyncio.to_thread(os.replace, tmp, out)
    except BaseException:
        await asyncio.to_thread(Path(tmp).unlink, missing_ok=True)
        raise
    return total


async def source_of(
    namespace: str,
    name: str,
    kubeconfig: str | None,
    data_root: Path | None,
    env_credentials: bool,
) -> UnitSource:
    """Where job ``namespace/name``'s units are, from its status (read from the API).

    Raises:
        ValueError: No such job, it names no results yet, or they cannot be reached here.
    """
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

    api = await connect("parkfleet-results", kubeconfig)
    try:
        custom = client.CustomObjectsApi(api)
        try:
            obj = await custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "inferencejobs", name
            )
        except ApiException as exc:
            if exc.status == 404:
                raise ValueError(f"no InferenceJob {name} in namespace {namespace}") from None
            raise
        where = str((obj.get("status") or {}).get("results") or "")
        if not where:
            raise ValueError(
                f"InferenceJob {namespace}/{name} names no results yet (status.results)"
            )
        spec = InferenceJobSpec.from_k8s(obj)
        units = tuple((u.start, u.items) for u in map(spec.unit, range(spec.unit_count)))
        uid = str(obj["metadata"]["uid"])
        kind, location = parse_results_location(where)
        if kind == "volume":
            if data_root is None:
                raise ValueError(
                    f"the results are on the gateways' data volume ({where}): give --data-root, "
                    "where that volume is seen from here"
                )
            return UnitSource(uid, units, folder=data_root / location)
        if env_credentials:
            try:
                creds = credentials_from_env(os.environ)
            except BadSecret as exc:
                raise ValueError(f"--credentials env: {exc}") from None
        else:
            secret_name = spec.object_store_secret
            try:
                secret = await client.CoreV1Api(api).read_namespaced_secret(secret_name, namespace)
            except ApiException as exc:
                raise ValueError(
                    f"cannot read Secret {namespace}/{secret_name} ({exc.status} {exc.reason}): "
                    "or give --credentials env with AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
                    "AWS_SECRET_ACCESS_KEY"
                ) from None
            creds = credentials_from_secret({"type": secret.type, "data": secret.data})
        return UnitSource(uid, units, prefix=location, credentials=creds)
    finally:
        await api.close()


def _run(args: argparse.Namespace) -> int:
    namespace, sep, name = str(args.job).partition("/")
    if not sep or not namespace or not name:
        print(f"parkfleet results: {args.job!r} is not NAMESPACE/JOB")
        return 2
    out = Path(args.out)
    if out.suffix not in FORMATS:
        print(f"parkfleet results: --out {out}: one of {', '.join(FORMATS)}")
        return 2

    async def go() -> int:
        source = await source_of(
            namespace,
            name,
            args.kubeconfig,
            Path(args.data_root) if args.data_root else None,
            args.credentials == "env",
        )
        return await assemble(source, out, args.output)

    try:
        items = asyncio.run(go())
    except (ValueError, MissingUnits) as exc:
        print(f"parkfleet results: {exc}")
        return 1
    print(f"{items} items of {namespace}/{name} in item order -> {out}")
    return 0


def register(subparsers: Any) -> None:
    """Adds ``parkfleet results``."""
    p = subparsers.add_parser(
        "results",
        help="write an InferenceJob's results, every unit in item order, to one file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("job", metavar="NAMESPACE/JOB")
    p.add_argument("--out", required=True, help="FILE.npy, FILE.parquet or FILE.jsonl")
    p.add_argument("--output", default="", help="only this model output (a .npy holds one)")
    p.add_argument("--data-root", default="", help="the gateways' data volume as seen here")
    p.add_argument(
        "--credentials",
        choices=("secret", "env"),
        default="secret",
        help="object storage: the job's Secret (default) or the AWS_* environment",
    )
    p.add_argument("--kubeconfig", default=None)
    p.set_defaults(func=_run)

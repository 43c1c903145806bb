"""Object-storage input benchmark: the gateway's input streaming from S3 against the S3
client's own raw throughput from the same server, in the same run.

Not a test (pytest does not collect ``bench_*.py``). Run ``make bench-s3`` or
``.venv/bin/python tests/bench/bench_s3.py [--mib 256 --tasks 8]``.

What runs: the real S3 server of the tests (versitygw from its Go module,
``parkfleet.devs3``) on loopback over a temporary folder, holding one ``.npy`` of
``--mib`` MiB (float32 items of 384 values, an embedding's size) and one ``.jsonl`` of
short texts.

What it measures, MB/s of item bytes delivered:
- ``raw``: obstore's ranged GETs of ``BLOCK_BYTES`` over the whole object, back to back
  (one reader), then ``--tasks`` readers at once, each over its share of the object:
  what the client and the server can do, with nothing of parkfleet;
- ``gateway``: the gateway's input source for an ``s3://`` input
  (``nodeagent.objectinput`` + ``nodeagent.ranged``: listing, header, block reads and
  its cache) read the way ``gateway/offers.stream_inputs`` reads a task's items, in
  chunks of at most the car link's tensor bound, by one task and by ``--tasks`` tasks
  at once (each its own range of items, as units are);
- the same for the ``.jsonl`` (``lines``: the byte ranges of whole lines).

Writes ``.cache/bench/s3.json`` (``gateway_vs_raw_ratio``, per case) and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import obstore

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "operator"))

from parkfleet import devs3  # noqa: E402
from parkfleet.nodeagent.objectinput import list_objects  # noqa: E402
from parkfleet.nodeagent.ranged import BLOCK_BYTES, JsonlPart, NpyPart, open_part  # noqa: E402
from parkfleet.objectstore import S3Credentials, parse_s3_uri, s3_store  # noqa: E402
from parkfleet.protocol.limits import MAX_TENSOR_BYTES  # noqa: E402

OUT = ROOT / ".cache" / "bench" / "s3.json"
BUCKET = "bench"
WIDTH = 384
BATCH = 32


async def raw(store: Any, key: str, size: int, readers: int) -> float:
    """Seconds for ``readers`` concurrent readers to GET the object by ranges, each its share."""
    share = -(-size // readers)

    async def one(lo: int, hi: int) -> None:
        pos = lo
        while pos < hi:
            end = min(pos + BLOCK_BYTES, hi)
            data = await obstore.get_range_async(store, key, start=pos, end=end)
            assert len(memoryview(data)) == end - pos
            pos = end

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i * share, min(size, (i + 1) * share)) for i in range(readers)))
    return time.perf_counter() - t0


async def in_tasks(
    items: int, tasks: int, step: int, read: Callable[[int, int], Awaitable[int]]
) -> tuple[float, int]:
    """Seconds for ``tasks`` tasks, each its share of ``items`` in order, ``step`` at a time,
    to ``read`` them (which returns the bytes it delivered); and the bytes delivered."""
    share = -(-items // tasks)
    delivered = 0

    async def one(lo: int, hi: int) -> None:
        nonlocal delivered
        for pos in range(lo, hi, step):
            got = await read(pos, min(pos + step, hi))
            delivered += got

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i * share, min(items, (i + 1) * share)) for i in range(tasks)))
    return time.perf_counter() - t0, delivered


async def gateway_npy(store: Any, uri: str, tasks: int) -> tuple[float, int]:
    """Seconds and item bytes for ``tasks`` tasks to read their items as stream_inputs does."""
    readers = await list_objects(store, parse_s3_uri(uri))
    part = await open_part(readers[0])
    assert isinstance(part, NpyPart)
    step = max(BATCH, MAX_TENSOR_BYTES // part.item_bytes // BATCH * BATCH)

    async def read(first: int, end: int) -> int:
        return int((await part.read(first, end)).nbytes)

    return await in_tasks(part.items, tasks, step, read)


async def gateway_lines(store: Any, uri: str, tasks: int) -> tuple[float, int, float]:
    """Seconds and line bytes for ``tasks`` tasks reading batches of lines, and the
    seconds of the scan for line offsets."""
    readers = await list_objects(store, parse_s3_uri(uri))
    t0 = time.perf_counter()
    part = await open_part(readers[0])
    scan = time.perf_counter() - t0
    assert isinstance(part, JsonlPart)

    async def read(first: int, end: int) -> int:
        return sum(len(x) for x in await part.lines(first, end))

    seconds, delivered = await in_tasks(part.items, tasks, BATCH, read)
    return seconds, delivered, scan


def make_inputs(folder: Path, mib: int) -> tuple[int, int]:
    rows = mib * 1024 * 1024 // (WIDTH * 4)
    rng = np.random.default_rng(0)
    arr = np.lib.format.open_memmap(folder / "vectors.npy", "w+", np.float32, (rows, WIDTH))
    for lo in range(0, rows, 65536):
        hi = min(rows, lo + 65536)
        arr[lo:hi] = rng.random((hi - lo, WIDTH), dtype=np.float32)
    arr.flush()
    del arr
    words = ["parked", "car", "battery", "fleet", "gateway", "model", "night", "charge"]
    with (folder / "texts.jsonl").open("w") as f:
        for i in range(rows):
            text = " ".join(words[(i * 7 + j) % len(words)] for j in range(8 + i % 9))
            f.write(json.dumps({"id": i, "text": text}) + "\n")
    return (folder / "vectors.npy").stat().st_size, (folder / "texts.jsonl").stat().st_size


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="parkfleet-bench-s3-") as tmp:
        server = devs3.start(Path(tmp))
        try:
            folder = server.bucket(BUCKET)
            npy_size, jsonl_size = make_inputs(folder, args.mib)
            store = s3_store(
                S3Credentials(server.endpoint, server.access_key, server.secret_key), BUCKET
            )
            cases: dict[str, Any] = {}
            for tasks in (1, args.tasks):
                raw_s = await raw(store, "vectors.npy", npy_size, tasks)
                gw_s, gw_bytes = await gateway_npy(store, f"s3://{BUCKET}/vectors.npy", tasks)
                raw_mbs = npy_size / raw_s / 1e6
                gw_mbs = gw_bytes / gw_s / 1e6
                cases[f"npy_tasks_{tasks}"] = {
                    "raw_mb_s": round(raw_mbs, 1),
                    "gateway_mb_s": round(gw_mbs, 1),
                    "gateway_vs_raw_ratio": round(gw_mbs / raw_mbs, 3),
                }
                raw_s = await raw(store, "texts.jsonl", jsonl_size, tasks)
                ln_s, ln_bytes, scan_s = await gateway_lines(
                    store, f"s3://{BUCKET}/texts.jsonl", tasks
                )
                raw_mbs = jsonl_size / raw_s / 1e6
                ln_mbs = ln_bytes / ln_s / 1e6
                cases[f"jsonl_tasks_{tasks}"] = {
                    "raw_mb_s": round(raw_mbs, 1),
                    "gateway_mb_s": round(ln_mbs, 1),
                    "gateway_vs_raw_ratio": round(ln_mbs / raw_mbs, 3),
                    "line_scan_mb_s": round(jsonl_size / scan_s / 1e6, 1),
                }
        finally:
            server.stop()
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "npy_bytes": npy_size,
        "jsonl_bytes": jsonl_size,
        "block_bytes": BLOCK_BYTES,
        "cases": cases,
        "gateway_vs_raw_ratio": min(c["gateway_vs_raw_ratio"] for c in cases.values()),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=256, help="size of the .npy object")
    p.add_argument("--tasks", type=int, default=8, help="tasks reading at once")
    args = p.parse_args()
    result = asyncio.run(run(args))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"object-storage input, {result['npy_bytes'] / 1e6:.0f} MB .npy, "
        f"{result['jsonl_bytes'] / 1e6:.0f} MB .jsonl, loopback versitygw"
    )
    print(f"{'case':<16} {'raw MB/s':>10} {'gateway MB/s':>13} {'ratio':>7}")
    for name, c in result["cases"].items():
        print(
            f"{name:<16} {c['raw_mb_s']:>10} {c['gateway_mb_s']:>13} {c['gateway_vs_raw_ratio']:>7}"
        )
    for name, c in result["cases"].items():
        if "line_scan_mb_s" in c:
            print(f"{name}: the one scan for line offsets ran at {c['line_scan_mb_s']} MB/s")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

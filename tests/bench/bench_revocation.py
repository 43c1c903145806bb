"""Revocation benchmark: revocation written -> the revoked car's stream closed.

Not a test (pytest does not collect ``bench_*.py``). Run ``make bench-revocation`` or
``.venv/bin/python tests/bench/bench_revocation.py [--revocations 25 --idle-cars 200]``.

What runs: a fresh local control plane (``parkfleet.devcluster``), the real gateway
process with its node agent (``DevStack.start_gateway``: it watches the revocation
ConfigMap), one FleetPool, and lightweight protocol cars (``tests/carlink_probe.py``: each
its own certificate from the stack's fleet CA, its own mTLS stream, telemetry every
second) in this process: ``--idle-cars`` that stay connected throughout, plus one per
revocation.

What it measures, for each of ``--revocations`` cars in turn (one at a time):
- ``latency_s``: from just before ``parkfleet certs revoke``'s write (the same library
  call, ``parkfleet.revoke.revoke``: a patch of the ConfigMap through the API server) to
  the car seeing its stream closed with PERMISSION_DENIED;
- ``write_s``: how long that write itself took (the API server's answer).

Baseline, measured in the same run: a plain watch of the same ConfigMap in this process
(``watch_s``: write -> this watch sees the change). It is what the API server's watch
costs; parkfleet's part is ``latency_s`` less it (the node agent's handling, the
gateway closing the stream, the close reaching the car).

Goal: p99 of ``latency_s`` at most 10 s. Writes ``.cache/bench/revocation.json`` (with
``p50_s`` and ``p99_s`` of ``latency_s``) and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from kubernetes_asyncio import client, config, watch
from manifests import pool_doc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the probe cars (tests/carlink_probe.py)

from parkfleet import devcluster  # noqa: E402
from parkfleet.certs import FleetCA  # noqa: E402
from parkfleet.devstack import REVOCATIONS, DevStack  # noqa: E402
from parkfleet.revoke import revoke  # noqa: E402
from tests.carlink_probe import ProbeCar  # noqa: E402

OUT = ROOT / ".cache" / "bench" / "revocation.json"
POOL = "revocation"
GOAL_P99_S = 10.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def quantile(values: list[float], q: float) -> float:
    return round(float(np.quantile(np.asarray(values), q)), 4) if values else float("nan")


class Car:
    """One probe car: connected, sending telemetry each second until its stream ends."""

    def __init__(self, stack: DevStack, ca: FleetCA, car_id: str) -> None:
        pair = ca.issue_car(car_id, {"pool": POOL})
        self.car_id = car_id
        self.probe = ProbeCar(stack.gateway_address, ca.cert_pem, pair)
        self.closed: asyncio.Future[tuple[float, grpc.StatusCode]] = (
            asyncio.get_running_loop().create_future()
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.probe.connect()
        await self.probe.telemetry()
        self._tasks = [
            asyncio.create_task(self._read()),
            asyncio.create_task(self._beat()),
        ]

    async def _read(self) -> None:
        try:
            while await self.probe.recv() is not None:
                pass
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as e:
            code = e.code()
        if not self.closed.done():
            self.closed.set_result((time.time(), code))

    async def _beat(self) -> None:
        while not self.closed.done():
            await asyncio.sleep(1.0)
            try:
                await self.probe.telemetry()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                return

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await self.probe.close()


class WatchBaseline:
    """A plain watch of the revocation ConfigMap: when each car's key first appears."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace, self.name = namespace, name
        self.seen: dict[str, float] = {}
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                w = watch.Watch()
                async with w.stream(
                    self.core.list_namespaced_config_map,
                    self.namespace,
                    field_selector=f"metadata.name={self.name}",
                    timeout_seconds=300,
                ) as stream:
                    async for event in stream:
                        now = time.time()
                        for key in event["object"].data or {}:
                            self.seen.setdefault(key, now)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the baseline retries; the run goes on
                log(f"baseline watch: {exc!r}; again")
                await asyncio.sleep(0.5)


async def run(args: argparse.Namespace, cluster: devcluster.LocalCluster, work: Path) -> None:
    stack = DevStack(work / "stack", cluster.kubeconfig, telemetry_interval_s=1.0)
    kubeconfig = str(cluster.kubeconfig)
    cfg = client.Configuration()
    await config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    namespace, name = REVOCATIONS.split("/")
    cars: list[Car] = []
    try:
        devcluster.kubectl(cluster.kubeconfig, "apply", "-f", str(ROOT / "crds"))
        devcluster.kubectl(
            cluster.kubeconfig,
            "wait",
            "--for=condition=Established",
            "crd/fleetpools.parkfleet.io",
            "--timeout=60s",
        )
        size = args.idle_cars + args.revocations
        devcluster.kubectl(cluster.kubeconfig, "apply", "-f", "-", stdin=pool_doc(POOL, size, 1))
        stack.prepare()
        stack.start_gateway()
        ca = FleetCA.load(stack.certs)
        log(f"connecting {args.idle_cars} idle cars and {args.revocations} to revoke")
        cars = [Car(stack, ca, f"idle-{i:05d}") for i in range(args.idle_cars)]
        victims = [Car(stack, ca, f"victim-{i:05d}") for i in range(args.revocations)]
        for c in [*cars, *victims]:
            await c.start()
        cars += victims
        async with client.ApiClient(configuration=cfg) as api:
            baseline = WatchBaseline(api, namespace, name)
            await asyncio.sleep(1.0)
            rows: list[dict[str, Any]] = []
            for v in victims:
                t0 = time.time()
                await revoke(v.car_id, REVOCATIONS, kubeconfig=kubeconfig, at=t0)
                written = time.time()
                closed_at, code = await asyncio.wait_for(v.closed, args.timeout_s)
                await asyncio.sleep(0.2)  # the baseline watch has seen it by now, or never
                seen = baseline.seen.get(v.car_id)
                rows.append(
                    {
                        "car": v.car_id,
                        "latency_s": round(closed_at - t0, 4),
                        "write_s": round(written - t0, 4),
                        "watch_s": round(seen - t0, 4) if seen is not None else None,
                        "code": code.name,
                    }
                )
                log(f"{v.car_id}: closed {code.name} after {closed_at - t0:.3f} s")
                await asyncio.sleep(args.gap_s)
            baseline.task.cancel()
        still = sum(1 for c in cars[: args.idle_cars] if not c.closed.done())
        report(args, rows, still)
    finally:
        for c in cars:
            await c.stop()
        stack.stop()


def report(args: argparse.Namespace, rows: list[dict[str, Any]], idle_still: int) -> None:
    latency = [r["latency_s"] for r in rows]
    write = [r["write_s"] for r in rows]
    watched = [r["watch_s"] for r in rows if r["watch_s"] is not None]
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.node()}",
        "revocations": len(rows),
        "idle_cars": args.idle_cars,
        "idle_cars_still_connected": idle_still,
        "all_permission_denied": all(r["code"] == "PERMISSION_DENIED" for r in rows),
        "p50_s": quantile(latency, 0.5),
        "p99_s": quantile(latency, 0.99),
        "max_s": round(max(latency), 4) if latency else None,
        "write_p50_s": quantile(write, 0.5),
        "write_p99_s": quantile(write, 0.99),
        "baseline_watch_p50_s": quantile(watched, 0.5),
        "baseline_watch_p99_s": quantile(watched, 0.99),
        "goal_p99_s": GOAL_P99_S,
        "rows": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=2) + "\n")
    print()
    print(f"{'':38}{'p50 s':>10}{'p99 s':>10}")
    print(f"{'revocation written -> stream closed':38}{out['p50_s']:>10.3f}{out['p99_s']:>10.3f}")
    print(f"{'  of which the write':38}{out['write_p50_s']:>10.3f}{out['write_p99_s']:>10.3f}")
    print(
        f"{'baseline: a plain watch sees it':38}"
        f"{out['baseline_watch_p50_s']:>10.3f}{out['baseline_watch_p99_s']:>10.3f}"
    )
    print(
        f"{len(rows)} revocations, all PERMISSION_DENIED: {out['all_permission_denied']}; "
        f"idle cars still connected: {idle_still}/{args.idle_cars}; goal p99 <= {GOAL_P99_S:g} s"
    )
    print(f"wrote {OUT}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--revocations", type=int, default=25)
    p.add_argument("--idle-cars", type=int, default=200)
    p.add_argument("--gap-s", type=float, default=0.3, help="pause between revocations")
    p.add_argument("--timeout-s", type=float, default=30.0, help="one revocation at most")
    args = p.parse_args()
    if not devcluster.default_binary().exists():
        print("the local control plane is not built: run `make controlplane`", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="parkfleet-bench-revocation-"))
    log(f"starting a local control plane in {work}")
    cluster = devcluster.start(work / "cluster", remove_dir_on_exit=True)
    try:
        asyncio.run(run(args, cluster, work))
    finally:
        devcluster.stop(cluster)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

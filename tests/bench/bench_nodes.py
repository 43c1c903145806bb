"""Virtual-node benchmark: pod start latency, API write load per 1,000 cars, task moves.

Not a test (pytest does not collect ``bench_*.py``). Run
``.venv/bin/python tests/bench/bench_nodes.py`` (``--phases moves`` etc. for one part).

What runs: a fresh local control plane (``parkfleet.devcluster.start`` in a temporary
folder, stopped at the end whatever happens), the operator and a gateway with its node
agent as separate processes (``parkfleet.devstack.DevStack``), and 1,000 simulated cars
(the real agent code, one mTLS stream each, modelled compute) of a FleetPool of 10 cells
of 100 cars, i.e. 10 virtual Nodes.

What it measures:
- ``pod_start_p50_s`` / ``pod_start_p99_s``: pod created -> Running, over ``--pods`` tiny
  pods (5 items) created at a steady ``--rate``. "Created" is the client clock just
  before the create request is sent; "Running" is when this script's watch
  (kubernetes_asyncio) delivers the pod with phase Running. (``creationTimestamp`` and
  ``startedAt`` have one-second resolution, too coarse for this.) Both ends include the
  apiserver's latency, so this is what a user watching the pod sees.
- ``api_writes_per_s_per_1000_cars``: parkfleet's writes (create, update, patch, delete)
  as the kube-apiserver logged them in its audit log (``pf-controlplane --audit-writes``),
  over ``--window`` seconds at steady state (1,000 cars connected, no pods being created),
  per 1,000 connected cars. The audit log names each request's writer (user agent:
  ``parkfleet-gateway``, ``parkfleet-operator``, ``kopf``), so the control plane's own
  background writes (the API server's own Lease and endpoints, there with no car at all)
  are counted apart, and printed beside it with every writer's share and the resources written
  (Lease renewals vs Node status ...). ``apiserver_request_total`` over the same window
  cross-checks that the audit log saw every write, and the same counter with the bare
  control plane (before parkfleet starts) is the baseline.
- ``move_p50_s`` / ``move_p99_s``: a car's loss detected -> its task running on another
  car. For this phase the gateway and its node agent run in this process (the same
  objects ``parkfleet gateway`` runs) so the script can follow ``Gateway.events()``: from
  the ``lost`` event to the next ``accepted`` event of the same task (the new car took the
  offer; this is when the node agent would mark a new pod Running). A car accepts before
  it has the model, so "lost -> computing" (to the new car's first log line, sent once the
  model is fetched, verified and loaded) is printed beside it, and "kill -> lost" shows
  how fast a SIGKILLed car's loss is detected. Cars are separate ``parkfleet simulate
  --cars 1`` processes in one cell with slow modelled compute; the car running the pod's
  task is SIGKILLed, a replacement car is started, and so on.

Writes ``.cache/bench/nodes.json`` and prints a table.
"""

from __future__ import annotations

import os

# This process forks car processes while its in-process gateway runs gRPC threads;
# gRPC's fork handlers are not needed here (the children exec at once).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import contextlib
import json
import platform
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from kubernetes_asyncio import client, config, watch
from manifests import pool_doc
from prometheus_client.parser import text_string_to_metric_families

from parkfleet import devcluster
from parkfleet.contract import parse_cars_condition
from parkfleet.devstack import DevStack, Proc, free_port
from parkfleet.gateway.api import Gateway, GatewayConfig
from parkfleet.nodeagent.agent import NodeAgent, NodeAgentConfig
from parkfleet.nodeagent.kubeletapi import KubeletServer
from parkfleet.nodeagent.logs import LogStore
from parkfleet.taskport import TaskEvent

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / ".cache" / "bench" / "nodes.json"
NS = "bench"
WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"}
# User agents of parkfleet's API clients (the operator's Kopf machinery says "kopf").
PARKFLEET_WRITERS = ("parkfleet-gateway", "parkfleet-operator", "kopf")

# Baselines printed beside the results (see ../shared/DESIGN.md, "Figures").
K8S_SLO_POD_START_P99_S = 5.0
KUBEEDGE_100K_P50_S, KUBEEDGE_100K_P99_S = 1.7, 4.1
NODE_PER_CAR_WRITES_PER_S_PER_1000 = 45.0
GOALS = {"pod_start_p99_s": 2.0, "api_writes_per_s_per_1000_cars": 1.0, "move_p99_s": 2.0}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def quantile(values: list[float], q: float) -> float:
    return float(np.quantile(np.asarray(values), q)) if values else float("nan")


class Budget:
    """The whole run is bounded; each phase asks how long it may still take."""

    def __init__(self, total_s: float) -> None:
        self.deadline = time.monotonic() + total_s

    def left(self) -> float:
        return self.deadline - time.monotonic()


def pod_body(name: str, pool: str, items: str, batch: int) -> dict[str, Any]:
    env = {
        "PARKFLEET_MODEL": "digits",
        "PARKFLEET_INPUT": "digits/inputs.npy",
        "PARKFLEET_ITEMS": items,
        "PARKFLEET_BATCH_SIZE": str(batch),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {"parkfleet.io/pool": pool},
            "tolerations": [
                {"key": "parkfleet.io/fleet", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "containers": [
                {
                    "name": "infer",
                    "image": "parkfleet.io/runtime/onnxruntime:1",
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                }
            ],
        },
    }


class Kube:
    """kubectl for what a user would type, an async client for the rest."""

    def __init__(self, cluster: devcluster.LocalCluster, api: client.ApiClient) -> None:
        self.kubeconfig = cluster.kubeconfig
        self.audit_log = cluster.directory / "logs" / "audit.log"
        self.api = api
        self.core = client.CoreV1Api(api)

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return devcluster.kubectl(self.kubeconfig, *args, stdin=stdin).stdout

    async def apiserver_writes(self) -> dict[tuple[str, str, str], float]:
        """``apiserver_request_total`` summed by (verb, resource, subresource), writes only."""
        text = await asyncio.to_thread(self.kubectl, "get", "--raw", "/metrics")
        out: dict[tuple[str, str, str], float] = defaultdict(float)
        for family in text_string_to_metric_families(text):
            if family.name != "apiserver_request":
                continue
            for s in family.samples:
                verb = s.labels.get("verb", "")
                if s.name == "apiserver_request_total" and verb in WRITE_VERBS:
                    key = (verb, s.labels.get("resource", ""), s.labels.get("subresource", ""))
                    out[key] += s.value
        return out

    async def cars(self, pool: str) -> tuple[int, int, int]:
        """(cars connected, cars eligible, GPUs allocatable) over the pool's Nodes."""
        nodes = await self.core.list_node(label_selector=f"parkfleet.io/pool={pool}")
        connected = eligible = gpus = 0
        for n in nodes.items:
            state = parse_cars_condition(
                [{"type": c.type, "message": c.message} for c in n.status.conditions or []]
            )
            if state is not None:
                connected += state.cars_connected
                eligible += state.cars_eligible
            gpus += int((n.status.allocatable or {}).get("nvidia.com/gpu", 0))
        return connected, eligible, gpus


def delta(
    before: dict[tuple[str, str, str], float], after: dict[tuple[str, str, str], float]
) -> dict[tuple[str, str, str], float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def by_resource(d: dict[tuple[str, str, str], float]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for (_verb, resource, sub), n in d.items():
        out[f"{resource}/{sub}" if sub else resource] += n
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def gateway_counters(port: int) -> dict[str, float]:
    """The node agent's own counters (when the gateway exports them)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in (
                "parkfleet_node_lease_renewals_total",
                "parkfleet_node_status_writes_total",
            ):
                out[s.name] += s.value
    return dict(out)


async def wait_for(what: str, check: Any, within: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(every)
    raise TimeoutError(f"no {what} after {within:.0f}s (last: {last!r})")


# ---- phase 1: pod start latency ---------------------------------------------------------


async def measure_pod_start(
    kube: Kube, pool: str, pods: int, rate: float, budget: Budget
) -> dict[str, Any]:
    running: dict[str, tuple[float, str]] = {}
    sent: dict[str, float] = {}
    ready = asyncio.Event()

    async def follow() -> None:
        w = watch.Watch()
        listed = await kube.core.list_namespaced_pod(NS)
        ready.set()
        async with w.stream(
            kube.core.list_namespaced_pod,
            NS,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=600,
        ) as stream:
            async for event in stream:
                pod = event["object"]
                phase = pod.status.phase if pod.status else ""
                name = pod.metadata.name
                if phase in ("Running", "Succeeded", "Failed") and name not in running:
                    running[name] = (time.time(), phase)

    watcher = asyncio.create_task(follow())
    await asyncio.wait_for(ready.wait(), 30)
    await asyncio.sleep(0.5)
    log(f"creating {pods} pods at {rate:g}/s")
    start = time.monotonic()
    for i in range(pods):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        name = f"start-{i:04d}"
        sent[name] = time.time()
        await kube.core.create_namespaced_pod(NS, pod_body(name, pool, "0-5", 5))
    created_s = time.monotonic() - start
    with contextlib.suppress(TimeoutError):
        await wait_for(
            "every pod Running",
            _async(lambda: len(running) >= pods),
            min(90.0, max(10.0, budget.left() - 240)),
            every=0.2,
        )
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await watcher
    lat = [running[n][0] - t for n, t in sent.items() if n in running]
    phases = defaultdict(int)
    for _, phase in running.values():
        phases[phase] += 1
    return {
        "pods": pods,
        "rate_per_s": rate,
        "create_duration_s": round(created_s, 2),
        "observed": len(lat),
        "first_phase_seen": dict(phases),
        "p50_s": quantile(lat, 0.5),
        "p90_s": quantile(lat, 0.9),
        "p99_s": quantile(lat, 0.99),
        "max_s": max(lat) if lat else float("nan"),
    }


def _async(fn: Any) -> Any:
    async def run() -> Any:
        return fn()

    return run


# ---- phase 2: API writes at steady state ----------------------------------------------------


def audit_writes(log: Path, start: float, end: float) -> dict[tuple[str, str], int]:
    """Writes in the API server's audit log received in ``[start, end)`` (epoch seconds).

    Returns:
        Counts by (writer, "verb resource[/subresource]"); the writer is the user agent's
        program for parkfleet (``parkfleet-gateway`` ...), else the user
        (``system:kube-controller-manager`` ...).
    """
    out: dict[tuple[str, str], int] = defaultdict(int)
    for line in log.read_text().splitlines():
        event = json.loads(line)
        received = datetime.fromisoformat(event["requestReceivedTimestamp"]).timestamp()
        if not start <= received < end:
            continue
        ref = event.get("objectRef", {})
        resource = "/".join(filter(None, (ref.get("resource"), ref.get("subresource"))))
        # parkfleet's clients by program; the control plane's (one binary here) by user.
        program = event.get("userAgent", "").split("/", 1)[0]
        writer = program if program in PARKFLEET_WRITERS else event["user"]["username"]
        out[(writer, f"{event['verb']} {resource}")] += 1
    return out


async def measure_writes(
    kube: Kube, pool: str, window_s: float, metrics_port: int | None
) -> dict[str, Any]:
    cars0 = await kube.cars(pool)
    w0 = await kube.apiserver_writes()
    # The node agent's counters (a local HTTP GET) bracket the audit window closely.
    gw0 = gateway_counters(metrics_port) if metrics_port else {}
    start = time.time()
    await asyncio.sleep(window_s)
    gw1 = gateway_counters(metrics_port) if metrics_port else {}
    w1 = await kube.apiserver_writes()
    cars1 = await kube.cars(pool)
    await asyncio.sleep(2.0)  # requests received before the end have been logged
    audit = audit_writes(kube.audit_log, start, start + window_s)
    d = delta(w0, w1)
    connected = min(cars0[0], cars1[0])
    by_writer: dict[str, int] = defaultdict(int)
    parkfleet_by_request: dict[str, int] = defaultdict(int)
    for (writer, request), n in audit.items():
        by_writer[writer] += n
        if writer in PARKFLEET_WRITERS:
            parkfleet_by_request[request] += n
    ours = sum(by_writer[w] for w in PARKFLEET_WRITERS)
    total = sum(by_writer.values())
    leases = sum(n for r, n in parkfleet_by_request.items() if r.endswith(" leases"))
    status = sum(n for r, n in parkfleet_by_request.items() if r.endswith(" nodes/status"))
    per_1000 = 1000 / max(connected, 1)
    out: dict[str, Any] = {
        "window_s": window_s,
        "cars_connected": connected,
        "parkfleet_writes": ours,
        "per_1000_cars": ours / window_s * per_1000,
        "all_writes": total,
        "all_per_1000_cars": total / window_s * per_1000,
        "lease_writes_per_s": leases / window_s,
        "node_status_writes_per_s": status / window_s,
        "by_writer": dict(sorted(by_writer.items(), key=lambda kv: -kv[1])),
        "parkfleet_by_request": dict(sorted(parkfleet_by_request.items())),
        # The apiserver's own counter, sampled around the same window: a cross-check.
        "apiserver_request_total_writes": sum(d.values()),
        "apiserver_request_total_by_resource": {k: round(v, 1) for k, v in by_resource(d).items()},
    }
    if gw0 and gw1:
        out["node_agent_counted"] = {
            k.removeprefix("parkfleet_node_").removesuffix("_total"): gw1.get(k, 0) - gw0.get(k, 0)
            for k in gw1
        }
    return out


async def measure_bare_writes(kube: Kube, window_s: float) -> dict[str, Any]:
    w0 = await kube.apiserver_writes()
    t0 = time.monotonic()
    await asyncio.sleep(window_s)
    d = delta(w0, await kube.apiserver_writes())
    elapsed = time.monotonic() - t0
    return {
        "window_s": round(elapsed, 1),
        "writes_per_s": sum(d.values()) / elapsed,
        "by_resource": {k: round(v, 1) for k, v in by_resource(d).items()},
    }


# ---- phase 3: moves ---------------------------------------------------------------------------


async def measure_moves(
    kube: Kube, stack: DevStack, moves_wanted: int, budget: Budget
) -> dict[str, Any]:
    assert stack.model is not None
    pool = "bench-move"
    kube.kubectl("apply", "-f", "-", stdin=pool_doc(pool, 32, 1, grace_s=120))
    gw = Gateway(
        GatewayConfig.from_certs_dir(
            stack.certs,
            stack.root / "store",
            listen="127.0.0.1:0",
            telemetry_interval_s=2.0,
            telemetry_timeout_s=6.0,
        )
    )
    gw.models.add_file(stack.model.model_path, name="digits")
    await gw.start()
    events = gw.events()
    logs = LogStore()
    kubelet = KubeletServer(kube.api, logs, None, host="127.0.0.1", port=0)
    await kubelet.start()
    agent = NodeAgent(
        kube.api,
        gw,
        NodeAgentConfig(
            shard=0, address="127.0.0.1", kubelet_port=kubelet.port, data_root=stack.data
        ),
        logs,
    )
    kubelet.node_of = agent.node_of_pod
    await agent.start()
    stack.gateway_address = gw.address

    seen: list[tuple[float, TaskEvent]] = []
    changed = asyncio.Event()

    async def record() -> None:
        async for e in events:
            if e.kind in ("lost", "accepted", "moved", "log", "succeeded", "failed"):
                seen.append((time.monotonic(), e))
                changed.set()

    recorder = asyncio.create_task(record())
    slow = ["--compute=modelled", "--modelled-rate=10", "--log-level=error"]
    cars: dict[str, Proc] = {}
    spawned = 0

    def spawn() -> Proc:
        nonlocal spawned
        prefix = f"mv{spawned:03d}-"
        proc = cars[f"{prefix}000000"] = stack.start_fleet(
            1, 1, pool, prefix=prefix, name=f"mv{spawned:03d}", extra=slow
        )
        spawned += 1
        return proc

    async def find(start: int, pred: Any, within: float) -> tuple[int, float, TaskEvent]:
        """The first event at or after ``seen[start]`` matching ``pred``, and the index after it."""
        deadline = time.monotonic() + within
        idx = start
        while True:
            while idx < len(seen):
                t, e = seen[idx]
                idx += 1
                if pred(e):
                    return idx, t, e
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the task event did not come")
            changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), left)

    moves: list[float] = []
    detect: list[float] = []
    computing: list[float] = []
    notes: list[str] = []
    cell = f"{pool}-0"
    idle_cars = 3
    try:
        for _ in range(idle_cars + 1):
            spawn()
        await wait_for(
            f"{idle_cars + 1} cars in the move cell",
            lambda: _eligible(gw, cell, idle_cars + 1),
            90,
            every=0.5,
        )
        pods = 0
        task = ""
        running_on = ""
        idx = 0
        try:
            while len(moves) < moves_wanted and budget.left() > 45:
                if not task:
                    idx = len(seen)
                    created = await kube.core.create_namespaced_pod(
                        NS, pod_body(f"move-{pods}", pool, "0-450", 5)
                    )
                    pods += 1
                    task = created.metadata.uid
                    idx, _, e = await find(
                        idx,
                        lambda e, t=task: e.task_id == t and e.kind in ("accepted", "failed"),
                        60,
                    )
                    if e.kind != "accepted":
                        notes.append(f"pod move-{pods - 1} failed: {e.reason} {e.message}")
                        task = ""
                        continue
                    running_on = e.car_id
                    await asyncio.sleep(1.0)  # let it work a little: results, a checkpoint
                victim = cars.get(running_on)
                if victim is None or not victim.alive():
                    notes.append(f"car {running_on} is not one of ours")
                    task = ""
                    continue
                t_kill = time.monotonic()
                victim.popen.send_signal(signal.SIGKILL)  # the car drives off without a word
                idx, t_lost, lost = await find(
                    idx,
                    lambda e, t=task: e.task_id == t and e.kind in ("lost", "succeeded", "failed"),
                    30,
                )
                if lost.kind != "lost":
                    task = ""
                    continue
                idx, t_next, nxt = await find(
                    idx,
                    lambda e, t=task, a=lost.attempt: (
                        e.task_id == t
                        and (
                            (e.kind == "accepted" and e.attempt > a)
                            or e.kind in ("succeeded", "failed")
                        )
                    ),
                    60,
                )
                victim.popen.wait()
                if nxt.kind != "accepted":
                    notes.append(f"task ended {nxt.kind} instead of moving")
                    task = ""
                    continue
                moves.append(t_next - t_lost)
                detect.append(t_lost - t_kill)
                # The new car accepted at once; its first log line comes once it has the
                # model (fetched and verified, or cached) and starts computing.
                with contextlib.suppress(TimeoutError):
                    _, t_log, _ = await find(
                        idx,
                        lambda e, t=task, a=nxt.attempt: (
                            e.task_id == t and e.kind == "log" and e.attempt == a
                        ),
                        30,
                    )
                    computing.append(t_log - t_lost)
                running_on = nxt.car_id
                log(
                    f"move {len(moves)}: {lost.from_car} -> {nxt.car_id} in "
                    f"{moves[-1] * 1000:.0f} ms (loss seen {detect[-1] * 1000:.0f} ms after kill)"
                )
                # A replacement car, so the cell keeps idle cars; wait until it is there
                # (the task meanwhile runs on its new car), and at least a second.
                newest = spawn()
                t_spawn = time.monotonic()
                try:
                    await wait_for(
                        "the replacement car",
                        lambda: _eligible(gw, cell, idle_cars + 1),
                        60,
                        every=0.25,
                    )
                except TimeoutError:
                    raise TimeoutError(
                        f"replacement car {newest.name} not there after 60 s "
                        f"(alive: {newest.alive()}): {newest.tail(5)!r}; "
                        f"cell: {gw.capacity(cell)}"
                    ) from None
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t_spawn)))
        except TimeoutError as exc:
            notes.append(f"stopped early: {exc}")
    finally:
        recorder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await recorder
        for proc in cars.values():
            proc.kill()
        with contextlib.suppress(Exception):
            await kube.core.delete_collection_namespaced_pod(NS, grace_period_seconds=0)
        await agent.stop()
        await kubelet.stop()
        await gw.stop(1.0)
    return {
        "moves": len(moves),
        "p50_s": quantile(moves, 0.5),
        "p99_s": quantile(moves, 0.99),
        "max_s": max(moves) if moves else float("nan"),
        "to_computing_p50_s": quantile(computing, 0.5),
        "to_computing_p99_s": quantile(computing, 0.99),
        "loss_detect_p50_s": quantile(detect, 0.5),
        "loss_detect_max_s": max(detect) if detect else float("nan"),
        "samples_s": [round(m, 4) for m in moves],
        "notes": notes,
    }


async def _eligible(gw: Gateway, cell: str, n: int) -> bool:
    cap = gw.capacity(cell)
    return cap.cars_eligible >= n


# ---- the run -------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, cluster: devcluster.LocalCluster, work: Path) -> None:
    budget = Budget(args.time_cap_s)
    phases = set(args.phases.split(","))
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=cfg)
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.node()}",
        "cars": args.cars,
        "cells": args.cells,
        "baselines": {
            "k8s_slo_pod_start_p99_s": K8S_SLO_POD_START_P99_S,
            "kubeedge_100k_pod_start_p50_s": KUBEEDGE_100K_P50_S,
            "kubeedge_100k_pod_start_p99_s": KUBEEDGE_100K_P99_S,
            "node_per_car_writes_per_s_per_1000": NODE_PER_CAR_WRITES_PER_S_PER_1000,
        },
        "goals": GOALS,
    }
    stack = DevStack(work / "stack", cluster.kubeconfig, telemetry_interval_s=args.telemetry_s)
    async with client.ApiClient(configuration=cfg) as api:
        kube = Kube(cluster, api)
        try:
            kube.kubectl("apply", "-f", str(ROOT / "crds" / "fleetpools.parkfleet.io.yaml"))
            kube.kubectl(
                "wait",
                "--for=condition=Established",
                "crd/fleetpools.parkfleet.io",
                "--timeout=60s",
            )
            kube.kubectl("create", "namespace", NS)
            if "writes" in phases:
                log(f"bare control plane: counting apiserver writes for {args.bare_window:g}s")
                results["bare_control_plane_writes"] = await measure_bare_writes(
                    kube, args.bare_window
                )

            log("starting operator, gateway (node agent) and the fleet")
            stack.prepare(namespaces=(NS,))  # the pods' inputs in their namespace's area
            stack.start_operator()
            metrics_port = free_port()
            stack.start_gateway(f"--metrics-port={metrics_port}")
            pool = "bench"
            if {"pods", "writes"} & phases:
                kube.kubectl(
                    "apply", "-f", "-", stdin=pool_doc(pool, args.cars // args.cells, args.cells)
                )
                t0 = time.monotonic()
                stack.start_fleet(
                    args.cars,
                    args.cells,
                    pool,
                    scenario="parked",
                    extra=[
                        "--compute=modelled",
                        "--lenient-owners",
                        "--log-level=error",
                        "--ramp=20",  # later flags win: spread the TLS handshakes
                    ],
                )
                got = await wait_for(
                    f"{args.cars} eligible cars on {args.cells} Nodes",
                    _async_cars(kube, pool, args.cars),
                    min(180.0, budget.left()),
                    every=2.0,
                )
                results["fleet_connect_s"] = round(time.monotonic() - t0, 1)
                log(f"fleet up in {results['fleet_connect_s']}s: {got}")

            if "pods" in phases:
                results["pod_start"] = await measure_pod_start(
                    kube, pool, args.pods, args.rate, budget
                )
                log(f"pod start: {results['pod_start']}")
                await asyncio.sleep(args.settle)  # the last pods' status and Events land

            if "writes" in phases:
                # The operator's 5 s status timer catches up with the fleet's arrival first.
                await asyncio.sleep(args.settle)
                log(f"steady state: counting apiserver writes for {args.window:g}s")
                results["api_writes"] = await measure_writes(kube, pool, args.window, metrics_port)
                log(f"writes: {results['api_writes']['by_writer']}")

            if "moves" in phases:
                log("moves: stopping the fleet and the gateway; gateway in-process now")
                if "fleet" in stack.procs:
                    stack.procs["fleet"].stop()
                stack.procs["gateway"].stop()
                results["moves"] = await measure_moves(kube, stack, args.moves, budget)
        finally:
            stack.stop()
            summarise(results)  # what was measured, also when a phase failed


def _async_cars(kube: Kube, pool: str, n: int) -> Any:
    async def check() -> tuple[int, int, int] | None:
        got = await kube.cars(pool)
        return got if got[1] >= n and got[2] >= n else None

    return check


def summarise(r: dict[str, Any]) -> None:
    ps, w, mv = r.get("pod_start", {}), r.get("api_writes", {}), r.get("moves", {})
    bare = r.get("bare_control_plane_writes", {})
    flat = {
        "pod_start_p50_s": ps.get("p50_s"),
        "pod_start_p99_s": ps.get("p99_s"),
        "api_writes_per_s_per_1000_cars": w.get("per_1000_cars"),
        "api_writes_all_writers_per_s_per_1000_cars": w.get("all_per_1000_cars"),
        "move_p50_s": mv.get("p50_s"),
        "move_p99_s": mv.get("p99_s"),
    }
    r = {**flat, **r}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(r, indent=2, default=float) + "\n")

    def f(v: Any, unit: str = "") -> str:
        return "-" if v is None or v != v else f"{v:.3g}{unit}"

    rows = [
        ("pod_start_p50_s", f(flat["pod_start_p50_s"]), f"KubeEdge@100k {KUBEEDGE_100K_P50_S}"),
        (
            "pod_start_p99_s",
            f(flat["pod_start_p99_s"]),
            f"K8s SLO <= {K8S_SLO_POD_START_P99_S}; KubeEdge@100k {KUBEEDGE_100K_P99_S}",
        ),
        (
            "api_writes_per_s_per_1000_cars",
            f(flat["api_writes_per_s_per_1000_cars"]),
            f"parkfleet's, audit log; one Node per car ~{NODE_PER_CAR_WRITES_PER_S_PER_1000:g}",
        ),
        (
            "  every writer",
            f(flat["api_writes_all_writers_per_s_per_1000_cars"]),
            f"bare control plane before parkfleet {f(bare.get('writes_per_s'))}/s",
        ),
        ("  parkfleet Lease renewals", f(w.get("lease_writes_per_s")), "per s"),
        ("  parkfleet Node status writes", f(w.get("node_status_writes_per_s")), "per s"),
        ("move_p50_s", f(flat["move_p50_s"]), f"over {mv.get('moves', 0)} moves"),
        ("move_p99_s", f(flat["move_p99_s"]), f"goal <= {GOALS['move_p99_s']}"),
        (
            "  lost -> computing p50 / p99",
            f(mv.get("to_computing_p50_s")),
            f"p99 {f(mv.get('to_computing_p99_s'))} (new car has the model, first log line)",
        ),
        (
            "  kill -> loss detected p50",
            f(mv.get("loss_detect_p50_s")),
            f"max {f(mv.get('loss_detect_max_s'))} (SIGKILL: the stream closes)",
        ),
    ]
    print()
    print(f"bench-nodes: {r['cars']} cars in {r['cells']} cells on {r['machine']}")
    print(f"{'metric':34} {'value':>9}  baseline / note")
    for name, value, note in rows:
        print(f"{name:34} {value:>9}  {note}")
    print(f"pods observed: {ps.get('observed')}/{ps.get('pods')} ({ps.get('first_phase_seen')})")
    print(f"writes by writer over {w.get('window_s')}s (audit log): {w.get('by_writer')}")
    print(f"parkfleet's: {w.get('parkfleet_by_request')}")
    print(
        f"apiserver_request_total around it: {w.get('apiserver_request_total_writes')} "
        f"{w.get('apiserver_request_total_by_resource')}"
    )
    if w.get("node_agent_counted"):
        print(f"node agent's own count: {w['node_agent_counted']}")
    print(f"wrote {OUT}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--cars", type=int, default=1000)
    p.add_argument("--cells", type=int, default=10)
    p.add_argument("--pods", type=int, default=220)
    p.add_argument("--rate", type=float, default=5.0, help="pods created per second")
    p.add_argument("--window", type=float, default=60.0, help="write-count window (s)")
    p.add_argument("--bare-window", type=float, default=20.0)
    p.add_argument("--settle", type=float, default=10.0)
    p.add_argument("--moves", type=int, default=20)
    p.add_argument("--telemetry-s", type=float, default=10.0)
    p.add_argument("--time-cap-s", type=float, default=480.0)
    p.add_argument("--phases", default="pods,writes,moves", help="which measurements to run")
    args = p.parse_args()
    if not devcluster.default_binary().exists():
        print("the local control plane is not built: run `make controlplane`", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="parkfleet-bench-nodes-"))
    log(f"starting a local control plane in {work}")
    cluster = devcluster.start(
        work / "cluster", remove_dir_on_exit=True, flags={"audit-writes": "true"}
    )
    try:
        asyncio.run(run(args, cluster, work))
    finally:
        devcluster.stop(cluster)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

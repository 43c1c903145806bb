"""InferenceJob benchmark: the share of the fleet's compute a job gets, with and without churn.

Not a test (pytest does not collect ``bench_*.py``). Run ``make bench-jobs`` or
``.venv/bin/python tests/bench/bench_jobs.py``.

What runs: a fresh local control plane (``parkfleet.devcluster.start`` in a temporary
folder, stopped at the end whatever happens), the operator and a gateway with its node
agent as separate processes (``parkfleet.devstack.DevStack``), and ``--cars`` simulated
cars (the real agent code, one mTLS stream each, modelled compute: real outputs from one
shared ONNX Runtime pool per simulator process, each car held to ``--rate`` items/s) of
a FleetPool of ``--cells`` cells. The cars run in several simulator processes: the
"leavers" (``--churn`` of the fleet) in ``--leaver-procs`` processes of their own, so
that SIGKILLing one makes its cars vanish at once, mid-unit, without a goodbye.

One InferenceJob of ``--items`` items (the digits inputs tiled), ``--items-per-unit``
items per unit and parallelism = cars, three times, each run on a fresh gateway and a
freshly connected fleet:

- ``no_churn``: every car stays.
- ``churn30``: the leaver processes are killed at staggered times during the run.
- ``baseline_churn30``: the same job and the same kill times, with the gateway started
  as ``tests/bench/naive_gateway.py`` (the naive strategy: results held until the task is done, a
  task that loses its car starts over from its first item).

And three runs where cars leave on their own traces' departures (``make bench-departures``
runs only these): every car in one simulator process on the ``stays`` scenario
(``parkfleet.sim.traces.stays_trace``: plugged-in stays of ``--mean-stay-s`` ±50 % between
drives of ``--mean-drive-s`` ±50 %, each car at its own phase, so departures are spread
over the run, never at fixed moments). A car that drives off reports driving (its owner's
policy stops its task at once, the stream stays open) and comes back after its drive. Each
car reports its trace's next departure, off by up to ``--departure-noise`` of the stay. A
unit is ``--unit-stay-fraction`` (a quarter) of the mean remaining stay of a parked car
(over the whole traces: the same in every run), at ``--rate``:

- ``departures_today``: the gateway's departure-blind placement (``--placement=blind``).
- ``departures_aware``: departure-aware placement (``--placement=aware``, the default).
- ``baseline_departures``: the naive gateway (no checkpoints count), blind placement.

What it measures, per run:

- achieved items/s = items / (completionTime - startTime) of the InferenceJob's status
  (the batch Job's own times, one-second resolution), so pod creation, scheduling and
  every Kubernetes round trip between units count against the fleet.
- ideal items/s = sum over cars of ``--rate`` x the time the car was connected and
  eligible within [startTime, completionTime], divided by the same duration. Every car is
  connected and eligible before the job is created (checked on the Nodes' ``parkfleet.io/Cars``
  condition); a leaver counts until the moment its process was killed. In the departure
  runs every car is connected before the job is created, and a car counts only for the
  seconds its trace has it parked and plugged in within the job's window (the simulator's
  clock is the wall clock there, so the bench reads the same traces at the same times).
- efficiency = achieved / ideal.
- every item's result exactly once over the unit files, and equal to local ONNX Runtime.

Writes ``.cache/bench/jobs.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from manifests import pool_doc

from parkfleet import devcluster
from parkfleet.contract import parse_cars_condition
from parkfleet.controller.jobs import elapsed_s
from parkfleet.devstack import DevStack, Proc, free_port
from parkfleet.sim.sensors import trace_time_s
from parkfleet.sim.traces import DAY_S, CarTrace, fleet_traces

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / ".cache" / "bench" / "jobs.json"
POOL = "bench"
INPUT = "bench/inputs.npy"  # in namespace default's area of the gateway's data root
GOAL_NO_CHURN = 0.97
GOAL_BURST_P99_S = 2.0
GOAL_DEPARTURES = 0.85  # departure-aware efficiency (issue 17)
GOAL_VS_BASELINE = 1.5  # ... and its ratio to the no-checkpoint baseline
ASKED = {"items": 100_000, "cars": 500}


def log(msg: str) -> None:
    """Prints a timestamped progress line."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Budget:
    """The whole benchmark is bounded; each wait asks how long it may still take."""

    def __init__(self, total_s: float) -> None:
        self.deadline = time.monotonic() + total_s

    def left(self) -> float:
        """Seconds left."""
        return self.deadline - time.monotonic()


class Kube:
    """The machine's kubectl against the local control plane, as a user would type it."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        """Runs kubectl; raises on failure when ``check``."""
        return devcluster.kubectl(self.kubeconfig, *args, stdin=stdin, check=check).stdout

    def json(self, *args: str) -> Any:
        """``kubectl get ARGS -o json``, parsed."""
        return json.loads(self("get", *args, "-o", "json"))

    def cars_by_node(self) -> dict[str, int]:
        """Eligible cars per Node of the pool."""
        out = {}
        for n in self.json("nodes", "-l", f"parkfleet.io/pool={POOL}")["items"]:
            state = parse_cars_condition((n.get("status") or {}).get("conditions"))
            out[n["metadata"]["name"]] = state.cars_eligible if state is not None else 0
        return dict(sorted(out.items()))

    def cars(self) -> tuple[int, int, int]:
        """(cars connected, cars eligible, GPUs allocatable) over the pool's Nodes."""
        connected = eligible = gpus = 0
        for n in self.json("nodes", "-l", f"parkfleet.io/pool={POOL}")["items"]:
            st = n.get("status") or {}
            state = parse_cars_condition(st.get("conditions"))
            if state is not None:
                connected += state.cars_connected
                eligible += state.cars_eligible
            gpus += int((st.get("allocatable") or {}).get("nvidia.com/gpu", 0))
        return connected, eligible, gpus


def job_doc(name: str, items: int, per_unit: int, parallelism: int, batch: int) -> str:
    """The InferenceJob (the digits sample's shape, sized for the fleet)."""
    return json.dumps(
        {
            "apiVersion": "parkfleet.io/v1alpha1",
            "kind": "InferenceJob",
            "metadata": {"name": name},
            "spec": {
                "pool": POOL,
                "model": {"name": "digits", "outputNames": ["label", "probabilities"]},
                "input": {"path": INPUT, "items": items},
                "itemsPerUnit": per_unit,
                "parallelism": parallelism,
                "batchSize": batch,
                "retriesPerUnit": 3,
                "deadlineSeconds": 3600,
                "output": {"path": f"results/{name}"},
            },
        }
    )


@dataclass(frozen=True)
class RunSpec:
    """One of the three runs.

    Attributes:
        key: Name in the JSON and the table.
        resume: Gateway resumes moved tasks from their checkpoint (False: the naive
            strategy of ``naive_gateway.py``).
        churn: Whether the leaver processes are killed during the run.
        departures: Cars leave on their own traces' departures (the ``stays`` scenario).
        placement: The gateway's ``--placement``.
    """

    key: str
    resume: bool
    churn: bool
    departures: bool = False
    placement: str = "aware"


RUNS = (
    RunSpec("no_churn", resume=True, churn=False),
    RunSpec("churn30", resume=True, churn=True),
    RunSpec("baseline_churn30", resume=False, churn=True),
    RunSpec("departures_today", resume=True, churn=False, departures=True, placement="blind"),
    RunSpec("departures_aware", resume=True, churn=False, departures=True, placement="aware"),
    RunSpec("baseline_departures", resume=False, churn=False, departures=True, placement="blind"),
)
DEPARTURE_RUNS = tuple(s.key for s in RUNS if s.departures)
SIM_SEED = 0  # ``parkfleet simulate``'s default: the bench draws the same traces


def split_cars(cars: int, churn: float, procs: int) -> tuple[int, list[int]]:
    """(stayers, leavers per leaver process)."""
    leavers = round(cars * churn)
    per = [leavers // procs + (1 if i < leavers % procs else 0) for i in range(procs)]
    return cars - leavers, [n for n in per if n > 0]


def kill_offsets(ideal_s: float, n: int) -> list[float]:
    """Seconds after the job's creation at which each leaver process is killed.

    Spread over the middle of the run (30 % to 80 % of the ideal duration): cars start
    their units at staggered times (pods are created at the Job controller's pace), so
    at any of these moments nearly every car of the process is in mid-unit. The same
    offsets serve both churn runs: the same trace.
    """
    if n == 1:
        return [round(0.5 * ideal_s, 1)]
    return [round(ideal_s * (0.3 + 0.5 * i / (n - 1)), 1) for i in range(n)]


def exactly_once(stack: DevStack, name: str, items: int, truth: np.ndarray) -> dict[str, Any]:
    """Checks the unit files: every item's result exactly once, equal to local ONNX Runtime."""
    files = sorted((stack.area() / "results" / name).glob("unit-*.npz"))
    firsts, labels = [], []
    for f in files:
        with np.load(f) as z:
            firsts.append(int(z["first_item"][0]))
            labels.append(np.asarray(z["label"]))
    if not files:
        return {"unit_files": 0, "every_item_exactly_once": False, "matches_local_onnx": False}
    order = np.argsort(firsts)
    covered = np.concatenate([np.arange(firsts[i], firsts[i] + len(labels[i])) for i in order])
    got = np.concatenate([labels[i] for i in order])
    once = bool(np.array_equal(covered, np.arange(items)))
    return {
        "unit_files": len(files),
        "every_item_exactly_once": once,
        "matches_local_onnx": once and bool(np.array_equal(got, truth)),
    }


def local_labels(stack: DevStack, x: np.ndarray) -> np.ndarray:
    """The labels ONNX Runtime gives here, for comparison."""
    import onnxruntime as ort

    assert stack.model is not None
    session = ort.InferenceSession(str(stack.model.model_path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["label"], {"input": x})[0])


class PodWatch:
    """Stamps, as seen from here, when each of a job's pods was created, bound and ran.

    A pod watch in a thread of its own: every event is stamped with the local clock on
    arrival (the objects' own timestamps have one-second resolution), so the ramp splits
    into the Job controller (creation), the scheduler (binding), and the node agent with
    the car (bound to ``Running``; the agent writes Running once a car accepted). Stamps
    are as this process sees the API: on a busy machine they lag by a few tenths.
    """

    def __init__(self, kubeconfig: Path, job: str) -> None:
        self.kubeconfig = kubeconfig
        self.selector = f"batch.kubernetes.io/job-name={job}"
        # name -> {"created", "bound", "running", "done"} (epoch seconds)
        self.pods: dict[str, dict[str, float]] = {}
        self.nodes: dict[str, str] = {}  # pod name -> the cell's Node it was bound to
        self.error = ""
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._watch()), daemon=True)
        self.thread.start()
        self._ready.wait(timeout=30)

    async def _watch(self) -> None:
        from kubernetes_asyncio import client, config

        cfg = client.Configuration()
        await config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=cfg)
        async with client.ApiClient(configuration=cfg) as api:
            core = client.CoreV1Api(api)
            listed = await core.list_namespaced_pod("default", label_selector=self.selector)
            version = listed.metadata.resource_version
            self._ready.set()
            while not self._stop.is_set():
                try:
                    # The raw stream, one json.loads per event: the watch must cost the
                    # machine it measures as little as it can.
                    resp = await core.list_namespaced_pod(
                        "default",
                        label_selector=self.selector,
                        resource_version=version,
                        watch=True,
                        timeout_seconds=2,  # wake up to notice stop()
                        _preload_content=False,
                    )
                    async with resp:
                        async for line in resp.content:
                            ev = json.loads(line)
                            if ev["type"] == "ERROR":
                                raise RuntimeError(ev["object"].get("message"))
                            self._seen(ev["object"], time.time())
                            version = ev["object"]["metadata"]["resourceVersion"]
                except Exception as e:  # keep what was stamped
                    self.error = repr(e)
                    return

    def _seen(self, pod: dict[str, Any], now: float) -> None:
        st = pod.get("status") or {}
        phase = st.get("phase")
        p = self.pods.setdefault(pod["metadata"]["name"], {"created": now})
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            p.setdefault("bound", now)
            self.nodes[pod["metadata"]["name"]] = node
        ended = phase in ("Succeeded", "Failed")
        if ended or phase == "Running":
            p.setdefault("running", now)
        if ended:
            p.setdefault("done", now)

    def stop(self) -> None:
        """Ends the watch."""
        self._stop.set()
        self.thread.join(timeout=10)

    def phases(self, created: float, kube: Kube, job: str, cars: int) -> dict[str, Any]:
        """Per stage p50/p99/max, and when the n-th pod reached each stage."""
        pods = list(self.pods.values())

        def stats(xs: list[float]) -> dict[str, Any]:
            if not xs:
                return {"n": 0}
            a = np.asarray(xs)
            return {
                "n": len(xs),
                "p50": round(float(np.percentile(a, 50)), 2),
                "p99": round(float(np.percentile(a, 99)), 2),
                "max": round(float(a.max()), 2),
            }

        def span(a: str, b: str, subset: list[dict[str, Any]]) -> dict[str, Any]:
            return stats([p[b] - p[a] for p in subset if a in p and b in p])

        def nth(key: str, ns: tuple[int, ...]) -> dict[str, float | None]:
            ts = sorted(p[key] - created for p in pods if key in p)
            return {str(n): (round(ts[n - 1], 2) if len(ts) >= n else None) for n in ns}

        # The first wave: the pods created before any pod of the job ended. Of those, the
        # burst: pods a free car took (Running before any pod ended); the others are the
        # ready units, which wait at the gateway for a car to free by design.
        first_done = min((p["done"] for p in pods if "done" in p), default=float("inf"))
        wave1 = [p for p in pods if p["created"] < first_done]
        wave2 = [p for p in pods if p["created"] >= first_done]
        burst = [p for p in wave1 if p.get("running", float("inf")) < first_done]
        waited = [p for p in pods if p not in burst and "running" in p]
        # Second wave: from a pod's end to the creation of the next one (Job controller).
        ends = sorted(p["done"] for p in pods if "done" in p)
        starts = sorted(p["created"] for p in wave2)
        refill = [s - e for s, e in zip(starts, ends, strict=False)]
        ms = (1, cars // 2, cars)
        out: dict[str, Any] = {
            "pods_seen": len(pods),
            "wave1": {
                "created_to_bound_s (scheduler)": span("created", "bound", wave1),
                "bound_to_running_s (node agent + car)": span("bound", "running", wave1),
                "created_to_running_s": span("created", "running", wave1),
            },
            "burst": {
                "created_to_running_s (pods a free car took)": span("created", "running", burst),
                "created_to_bound_s (scheduler)": span("created", "bound", burst),
                "bound_to_running_s (node agent + car)": span("bound", "running", burst),
            },
            "waited_for_a_car": {
                "pods": len(waited),
                "created_to_running_s (ready at the gateway, then a car freed)": span(
                    "created", "running", waited
                ),
            },
            "wave2": {
                "pod_done_to_next_created_s (job controller)": stats(refill),
                "created_to_bound_s (scheduler)": span("created", "bound", wave2),
                "bound_to_running_s (node agent + car)": span("bound", "running", wave2),
            },
            "pods_per_node": dict(sorted(Counter(self.nodes.values()).items())),
            "nth_pod_created_s": nth("created", ms),
            "nth_pod_bound_s": nth("bound", ms),
            "nth_pod_running_s": nth("running", ms),
            "last_pod_done_s": round(ends[-1] - created, 2) if ends else None,
        }
        if self.error:
            out["watch_error"] = self.error
        # The operator: InferenceJob created -> Job created -> Job started (1 s resolution).
        try:
            ij = kube.json("ij", job)
            bj = kube.json("job", job)
            t_ij = _epoch(ij["metadata"]["creationTimestamp"])
            t_job = _epoch(bj["metadata"]["creationTimestamp"])
            out["ij_created_to_job_created_s (operator, 1s res)"] = round(t_job - t_ij, 1)
            start = (bj.get("status") or {}).get("startTime")
            if start:
                out["job_created_to_job_started_s (1s res)"] = round(_epoch(start) - t_job, 1)
            end = (bj.get("status") or {}).get("completionTime")
            if end and ends:
                out["last_pod_done_to_job_complete_s (1s res)"] = round(_epoch(end) - ends[-1], 1)
        except Exception as e:  # a measurement must not spoil the run
            out["operator_error"] = repr(e)
        return out


def wait_cars(kube: Kube, cars: int, within: float, eligible: bool = True) -> float:
    """Waits until the pool's Nodes count every car eligible (or, with ``eligible``
    False, connected: cars on their traces drive some of the time); returns the seconds
    it took."""
    t0 = time.monotonic()
    last = (0, 0, 0)
    while time.monotonic() - t0 < within:
        last = kube.cars()
        if (last[1] >= cars and last[2] >= cars) if eligible else last[0] >= cars:
            return time.monotonic() - t0
        time.sleep(1.0)
    raise TimeoutError(f"{cars} cars not seen within {within:.0f}s (last: {last})")


def departure_traces(args: argparse.Namespace) -> list[CarTrace]:
    """The traces the departure runs' simulator draws (same seed, scenario and sizes)."""
    return fleet_traces(SIM_SEED, args.cars, 7, "stays", args.mean_stay_s, args.mean_drive_s)


def mean_remaining_stay_s(traces: list[CarTrace], samples: int = 336) -> float:
    """The mean time to departure of a parked car, over the whole traces (every half
    hour of the week): the same figure, so the same unit size, for every departure run."""
    left = [t.departure_in(k * t.days * DAY_S / samples)[0] for t in traces for k in range(samples)]
    parked = [x for x in left if x > 0]
    return sum(parked) / len(parked) if parked else float("nan")


def departures_between(traces: list[CarTrace], start: float, end: float) -> int:
    """Drives the traces begin within epoch ``[start, end)``: the cars that left."""
    n = 0
    for t in traces:
        a = trace_time_s(int(start * 1000), t)
        period = t.days * DAY_S
        for seg in t.segments:
            if seg.driving and any(
                a <= x < a + (end - start) for x in (seg.start_s, seg.start_s + period)
            ):
                n += 1
    return n


def parked_car_seconds(traces: list[CarTrace], start: float, end: float) -> float:
    """Car-seconds the traces have parked and plugged in within epoch ``[start, end)``."""
    total = 0.0
    for t in traces:
        a = trace_time_s(int(start * 1000), t)
        total += t.parked_plugged_s(a, a + (end - start))
    return total


def start_fleets(
    stack: DevStack,
    args: argparse.Namespace,
    stayers: int,
    leavers: list[int],
    departures: bool = False,
) -> tuple[Proc, list[Proc]]:
    """One process of stayers and one per group of leavers; cars spread over every cell.
    With ``departures``: one process of every car, each on its own ``stays`` trace."""
    extra = [
        "--compute=modelled",
        f"--modelled-rate={args.rate}",
        "--lenient-owners",
        "--log-level=error",
        f"--ramp={args.ramp_s}",  # later flags win: spread the TLS handshakes
    ]
    if departures:
        # Every car on its own trace, the simulated clock on the wall clock's.
        extra += [
            f"--mean-stay-s={args.mean_stay_s}",
            f"--mean-drive-s={args.mean_drive_s}",
            f"--departure-noise={args.departure_noise}",
            f"--seed={SIM_SEED}",
        ]
        stay = stack.start_fleet(
            stayers,
            args.cells,
            POOL,
            scenario="stays",
            prefix="dep-",
            name="fleet-departures",
            extra=extra,
            start_hour=None,
        )
        return stay, []
    stay = stack.start_fleet(
        stayers, args.cells, POOL, prefix="stay-", name="fleet-stay", extra=extra
    )
    leave = [
        stack.start_fleet(
            n, args.cells, POOL, prefix=f"leave{i}-", name=f"fleet-leave{i}", extra=extra
        )
        for i, n in enumerate(leavers)
    ]
    return stay, leave


def run_one(
    stack: DevStack,
    kube: Kube,
    args: argparse.Namespace,
    spec: RunSpec,
    truth: np.ndarray,
    budget: Budget,
) -> dict[str, Any]:
    """One run of the job: fresh gateway and fleet, the job, its numbers, clean up."""
    name = f"bench-{spec.key.replace('_', '-')}"
    gw = stack.procs.get("gateway")
    if gw is not None:
        gw.stop()  # the new one binds the same address: cars reconnect there
    entry = () if spec.resume else (str(Path(__file__).with_name("naive_gateway.py")),)
    metrics_port = free_port()
    stack.start_gateway(
        "--log-level=warning",
        f"--metrics-port={metrics_port}",
        f"--placement={spec.placement}",
        entry=entry,
    )
    if spec.departures:
        stayers, leavers = args.cars, []
    else:
        stayers, leavers = split_cars(args.cars, args.churn, args.leaver_procs)
    stay, leave = start_fleets(stack, args, stayers, leavers, spec.departures)
    out: dict[str, Any] = {
        "job": name,
        "resume_from_checkpoint": spec.resume,
        "placement": spec.placement,
    }
    traces = departure_traces(args) if spec.departures else []
    per_unit = args.items_per_unit
    try:
        connect_s = wait_cars(kube, args.cars, min(240.0, budget.left()), not spec.departures)
        out["fleet_connect_s"] = round(connect_s, 1)
        log(f"{spec.key}: {args.cars} cars ready after {out['fleet_connect_s']}s")
        if spec.departures:
            remaining = mean_remaining_stay_s(traces)
            per_unit = max(1, round(args.rate * args.unit_stay_fraction * remaining))
            out["mean_remaining_stay_s"] = round(remaining, 1)
            out["items_per_unit"] = per_unit
            out["unit_s"] = round(per_unit / args.rate, 1)
            log(f"{spec.key}: mean remaining stay {remaining:.0f}s -> {per_unit} items per unit")
        out["cars_per_node"] = kube.cars_by_node()
        ideal_s = args.items / (args.cars * args.rate)
        kills = kill_offsets(ideal_s, len(leave)) if spec.churn else []
        shutil.rmtree(stack.area() / "results" / name, ignore_errors=True)
        watcher = PodWatch(kube.kubeconfig, name)
        created = time.time()
        kube(
            "apply",
            "-f",
            "-",
            stdin=job_doc(name, args.items, per_unit, args.cars, args.batch),
        )
        killed_at: list[float | None] = [None] * len(leave)
        st: dict[str, Any] = {}
        busy_before_kill: list[int] = []
        timeline: list[dict[str, Any]] = []
        limit = min(args.run_cap_s, budget.left() - 30)
        while time.time() - created < limit:
            for i, off in enumerate(kills):
                if killed_at[i] is None and time.time() - created >= off:
                    busy_before_kill.append(_busy(leave[i]))
                    leave[i].kill()  # its cars drive off without a word, mid-unit
                    killed_at[i] = time.time()
                    log(f"{spec.key}: killed {leavers[i]} cars ({leave[i].name}) at +{off:.0f}s")
            st = kube.json("ij", name).get("status", {})
            conds = {c["type"]: c["status"] for c in st.get("conditions", [])}
            units = st.get("units", {})
            timeline.append(
                {
                    "t_s": round(time.time() - created, 1),
                    "succeeded": units.get("succeeded", 0),
                    "running": units.get("running", 0),
                    "ready": units.get("ready", 0),
                    "moved": st.get("carsMoved", 0),
                }
            )
            if "True" in (conds.get("Complete"), conds.get("Failed")) and (
                st.get("completionTime") or conds.get("Failed") == "True"
            ):
                break
            time.sleep(args.poll_s)
        observed_s = time.time() - created
        watcher.stop()
        out["pod_phases"] = watcher.phases(created, kube, name, args.cars)
        log(f"{spec.key}: pod phases {json.dumps(out['pod_phases'])}")
        # Kill what was scheduled but not reached (a run that ended early), for the same trace.
        for i, proc in enumerate(leave):
            if killed_at[i] is None and spec.churn:
                proc.kill()
                killed_at[i] = time.time()
        conds = {c["type"]: c for c in st.get("conditions", [])}
        complete = conds.get("Complete", {}).get("status") == "True"
        start, end = st.get("startTime"), st.get("completionTime")
        duration = elapsed_s(start, end) if start and end else float("nan")
        done = int(st.get("items", {}).get("succeeded", 0))
        t_start = _epoch(start) if start else created
        t_end = t_start + duration
        # Car-seconds the fleet offered within the job's window.
        car_s = stayers * duration
        if spec.departures and duration > 0:
            car_s = parked_car_seconds(traces, t_start, t_end)
        for n, k in zip(leavers, killed_at, strict=True):
            left_at = t_end if k is None or not spec.churn else min(k, t_end)
            car_s += n * max(0.0, left_at - t_start)
        ideal_rate = args.rate * car_s / duration if duration > 0 else float("nan")
        achieved = done / duration if duration > 0 else float("nan")
        out.update(
            {
                "complete": complete,
                "conditions": {
                    k: f"{v.get('reason')}: {v.get('message')}" for k, v in conds.items()
                },
                "start_time": start,
                "completion_time": end,
                "duration_s": duration,
                "observed_duration_s": round(observed_s, 1),
                "items_succeeded": done,
                "units": st.get("units", {}),
                "cars_used": st.get("carsUsed", 0),
                "cars_moved": st.get("carsMoved", 0),
                "moves_per_1000_units": round(
                    1000 * st.get("carsMoved", 0) / max(1, -(-args.items // per_unit)), 1
                ),
                "status_items_per_second": st.get("itemsPerSecond", 0),
                "achieved_items_per_second": round(achieved, 1),
                "ideal_items_per_second": round(ideal_rate, 1),
                "efficiency": round(achieved / ideal_rate, 4) if ideal_rate > 0 else None,
                "car_seconds_eligible": round(car_s, 1),
                "kill_offsets_s": kills,
                "killed_at_s_after_start": [
                    None if k is None else round(k - t_start, 1) for k in killed_at
                ],
                "leaver_cars_busy_before_kill": busy_before_kill,
                "cars_left": (
                    departures_between(traces, t_start, t_end)
                    if spec.departures and duration > 0
                    else sum(leavers)
                    if spec.churn
                    else 0
                ),
                "all_cars_busy_after_s": _ramp_s(timeline, args.cars),
                "timeline": timeline,
            }
        )
        # Items that reached a sink, over every copy (spot checks and redundancy run a unit
        # twice): computed / delivered, as BOINC counts replication's cost.
        computed = gateway_counter(metrics_port, "parkfleet_gateway_result_items_total")
        out["items_computed"] = computed
        out["spot_check_overhead"] = round(computed / done, 4) if done else None
        for fit in ("stays", "unknown", "leaves"):
            out[f"placements_{fit}"] = gateway_counter(
                metrics_port, "parkfleet_gateway_placements_total", f'fit="{fit}"'
            )
        out["departure_claims_broken"] = gateway_counter(
            metrics_port, "parkfleet_gateway_departure_claims_broken_total"
        )
        out.update(exactly_once(stack, name, args.items, truth))
        log(
            f"{spec.key}: {'complete' if complete else 'NOT complete'} in {duration:.0f}s, "
            f"{achieved:.0f}/{ideal_rate:.0f} items/s = {out['efficiency']}, "
            f"moves {out['cars_moved']}, exactly once {out['every_item_exactly_once']}"
        )
    finally:
        kube(
            "delete", "ij", name, "--ignore-not-found", "--wait=true", "--timeout=120s", check=False
        )
        for proc in (stay, *leave):
            proc.stop()
    return out


def _ramp_s(timeline: list[dict[str, Any]], cars: int) -> float | None:
    """Seconds after creation until 95 % of the cars had a unit's pod Running (pod ramp)."""
    for point in timeline:
        if point["running"] + point["succeeded"] >= 0.95 * cars:
            return float(point["t_s"])
    return None


def gateway_counter(port: int, name: str, label: str = "") -> float:
    """The sum of a counter's samples on the gateway's /metrics (every label set, or
    those with ``label``, e.g. ``fit="stays"``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if label and label not in line.split("}", 1)[0]:
                continue
            total += float(line.rsplit(" ", 1)[1])
    return total


def _epoch(rfc3339: str) -> float:
    return datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def _busy(proc: Proc) -> int:
    """Cars of a simulator process busy at its last report (every few seconds)."""
    for line in reversed(proc.text().splitlines()):
        if " busy " in line:
            return int(line.split(" busy ", 1)[1].split()[0])
    return -1


def _burst(run: dict[str, Any], key: str) -> float | None:
    burst = (run.get("pod_phases") or {}).get("burst") or {}
    value = burst.get("created_to_running_s (pods a free car took)", {}).get(key)
    return float(value) if value is not None else None


def summarise(r: dict[str, Any], out: Path = OUT) -> None:
    """Writes the JSON (to ``out``) and prints the table."""
    runs = r.get("runs", {})
    flat = {
        "efficiency_no_churn": runs.get("no_churn", {}).get("efficiency"),
        "efficiency_churn30": runs.get("churn30", {}).get("efficiency"),
        "baseline_efficiency_churn30": runs.get("baseline_churn30", {}).get("efficiency"),
        # Computed / delivered with spot checks at their default rate (goal <= 1.10).
        "spot_check_overhead": runs.get("no_churn", {}).get("spot_check_overhead"),
        "spot_check_overhead_churn30": runs.get("churn30", {}).get("spot_check_overhead"),
        "efficiency_departures_today": runs.get("departures_today", {}).get("efficiency"),
        "efficiency_departures_aware": runs.get("departures_aware", {}).get("efficiency"),
        "baseline_efficiency_departures": runs.get("baseline_departures", {}).get("efficiency"),
        "moves_per_1000_units_departures_today": runs.get("departures_today", {}).get(
            "moves_per_1000_units"
        ),
        "moves_per_1000_units_departures_aware": runs.get("departures_aware", {}).get(
            "moves_per_1000_units"
        ),
        "baseline_moves_per_1000_units_departures": runs.get("baseline_departures", {}).get(
            "moves_per_1000_units"
        ),
        # Created -> Running of the pods a free car took, in the no-churn run's burst.
        "burst_created_to_running_p99_s": _burst(runs.get("no_churn", {}), "p99"),
        "burst_created_to_running_p50_s": _burst(runs.get("no_churn", {}), "p50"),
    }
    r = {**flat, **r}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2, default=str) + "\n")

    def f(v: Any, fmt: str = ".3f") -> str:
        return "-" if v is None or v != v else format(v, fmt)

    print()
    print(
        f"bench-jobs: {r['items']:,} items (asked {ASKED['items']:,}) on {r['cars']} cars "
        f"(asked {ASKED['cars']}) in {r['cells']} cells, {r['items_per_unit']} items/unit, "
        f"{r['rate']:g} items/s per car (a unit ~{r['unit_s']:.0f}s), on {r['machine']}"
    )
    rows: list[tuple[str, str, str]] = [
        ("efficiency", "efficiency", ".3f"),
        ("achieved items/s", "achieved_items_per_second", ".0f"),
        ("ideal items/s", "ideal_items_per_second", ".0f"),
        ("job duration s", "duration_s", ".0f"),
        ("95% of cars busy after s", "all_cars_busy_after_s", ".0f"),
        ("resume from checkpoint", "resume_from_checkpoint", ""),
        ("cars that left", "cars_left", ""),
        ("units succeeded/total", "", ""),
        ("units failed", "", ""),
        ("cars used", "cars_used", ""),
        ("computed / delivered", "spot_check_overhead", ".3f"),
        ("task moves (carsMoved)", "cars_moved", ""),
        ("moves per 1,000 units", "moves_per_1000_units", ".0f"),
        ("unit files", "unit_files", ""),
        ("every item exactly once", "every_item_exactly_once", ""),
        ("= local ONNX Runtime", "matches_local_onnx", ""),
    ]
    departure_rows: list[tuple[str, str, str]] = [
        ("placement", "placement", ""),
        ("items per unit", "items_per_unit", ""),
        ("unit s at --rate", "unit_s", ".0f"),
        ("mean remaining stay s", "mean_remaining_stay_s", ".0f"),
        ("placed: stays / unknown", "", ""),
        ("placed: leaves", "placements_leaves", ".0f"),
        ("departure claims broken", "departure_claims_broken", ".0f"),
    ]
    for cols, extra in (
        (("no_churn", "churn30", "baseline_churn30"), []),
        (DEPARTURE_RUNS, departure_rows),
    ):
        if not any(c in runs for c in cols):
            continue
        print(f"{'':30}" + "".join(f"{c:>20}" for c in cols))
        for label, key, fmt in rows + extra:
            cells = []
            for c in cols:
                run = runs.get(c, {})
                units = run.get("units", {})
                if label.startswith("units succeeded"):
                    v = f"{units.get('succeeded', '-')}/{units.get('total', '-')}"
                elif label == "units failed":
                    v = str(units.get("failed", "-"))
                elif label.startswith("placed: stays"):
                    v = f"{f(run.get('placements_stays'), '.0f')}/"
                    v += f(run.get("placements_unknown"), ".0f")
                elif fmt:
                    v = f(run.get(key), fmt)
                else:
                    v = str(run.get(key, "-"))
                cells.append(f"{v:>20}")
            print(f"{label:30}" + "".join(cells))
    print(
        f"burst (no_churn): created -> Running of the pods a free car took: "
        f"p50 {f(r['burst_created_to_running_p50_s'], '.2f')} s, "
        f"p99 {f(r['burst_created_to_running_p99_s'], '.2f')} s"
    )
    print(
        f"goal: efficiency_no_churn >= {GOAL_NO_CHURN}, "
        f"burst created -> Running p99 <= {GOAL_BURST_P99_S} s"
    )
    print(
        f"goal: efficiency_departures_aware >= {GOAL_DEPARTURES} and >= "
        f"{GOAL_VS_BASELINE}x baseline_efficiency_departures"
    )
    if r.get("notes"):
        for n in r["notes"]:
            print(f"note: {n}")
    print(f"wrote {out}")


def run(args: argparse.Namespace, cluster: devcluster.LocalCluster, work: Path) -> None:
    """The three runs on one control plane, operator and data root."""
    budget = Budget(args.time_cap_s)
    kube = Kube(cluster.kubeconfig)
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), {platform.node()}",
        "asked": ASKED,
        "items": args.items,
        "cars": args.cars,
        "cells": args.cells,
        "items_per_unit": args.items_per_unit,
        "units": -(-args.items // args.items_per_unit),
        "rate": args.rate,
        "unit_s": args.items_per_unit / args.rate,
        "ideal_job_s": args.items / (args.cars * args.rate),
        "churn": args.churn,
        "spot_check_fraction": args.spot_check_fraction,
        "batch_size": args.batch,
        "controlplane_flags": args.cp_flag,
        "runs": {},
        "notes": [],
    }
    stack = DevStack(work / "stack", cluster.kubeconfig, telemetry_interval_s=args.telemetry_s)
    try:
        for crd in ("fleetpools", "inferencejobs"):
            kube("apply", "-f", str(ROOT / "crds" / f"{crd}.parkfleet.io.yaml"))
            kube("wait", "--for=condition=Established", f"crd/{crd}.parkfleet.io", "--timeout=60s")
        stack.prepare()
        x = np.load(stack.area() / "digits" / "inputs.npy")
        reps = -(-args.items // len(x))
        big = np.ascontiguousarray(np.tile(x, (reps, 1))[: args.items])
        (stack.area() / INPUT).parent.mkdir(parents=True, exist_ok=True)
        np.save(stack.area() / INPUT, big)
        truth = local_labels(stack, big)
        stack.start_operator()
        kube(
            "apply",
            "-f",
            "-",
            stdin=pool_doc(
                POOL,
                -(-args.cars // args.cells),
                args.cells,
                args.grace_s,
                ["onnxruntime"],
                spot_check=args.spot_check_fraction,
            ),
        )
        wanted = [s for s in RUNS if s.key in args.runs.split(",")]
        for spec in wanted:
            if budget.left() < 60:
                results["notes"].append(f"{spec.key}: not run, the time cap was reached")
                continue
            log(f"run {spec.key}")
            try:
                results["runs"][spec.key] = run_one(stack, kube, args, spec, truth, budget)
            except Exception as e:  # keep what the other runs measured
                results["runs"][spec.key] = {"error": repr(e)}
                results["notes"].append(f"{spec.key} failed: {e!r}")
                log(f"{spec.key} failed: {e!r}")
    finally:
        stack.stop()
        kube("delete", "fp", POOL, "--ignore-not-found", "--wait=false", check=False)
        summarise(results, args.out)


def main() -> int:
    """Parses the flags, starts a control plane, runs, stops it."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--cars", type=int, default=500)
    p.add_argument("--cells", type=int, default=5)
    p.add_argument("--items-per-unit", type=int, default=100)
    p.add_argument("--rate", type=float, default=2.0, help="modelled items/s per car")
    # The car infers SLICE_BATCHES batches per call and checkpoints between calls: at 2
    # items/s, batch 2 means a slice of 16 items (8 s), so a car that leaves loses ~8 s.
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--churn", type=float, default=0.30, help="share of the cars that leave")
    p.add_argument("--leaver-procs", type=int, default=3)
    p.add_argument("--grace-s", type=int, default=600, help="the pool's graceSeconds")
    p.add_argument("--telemetry-s", type=float, default=5.0)
    p.add_argument("--ramp-s", type=float, default=10.0, help="spread the cars' connections")
    p.add_argument("--poll-s", type=float, default=2.0)
    p.add_argument(
        "--runs",
        default=",".join(s.key for s in RUNS),
        help=f"comma-separated, of {', '.join(s.key for s in RUNS)} (departures: "
        f"{','.join(DEPARTURE_RUNS)})",
    )
    d = p.add_argument_group("the departure runs (cars on their own traces)")
    d.add_argument("--mean-stay-s", type=float, default=400.0, help="mean parked stay")
    d.add_argument("--mean-drive-s", type=float, default=60.0, help="mean drive between")
    d.add_argument(
        "--departure-noise",
        type=float,
        default=0.2,
        help="cars' claimed departures off by up to this fraction of the stay",
    )
    d.add_argument(
        "--unit-stay-fraction",
        type=float,
        default=0.25,
        help="a unit is this share of the mean remaining stay (at --rate)",
    )
    p.add_argument(
        "--spot-check-fraction",
        type=float,
        default=None,
        help="the pool's spotCheckFraction (default: the CRD's, 0.05)",
    )
    p.add_argument("--out", type=Path, default=OUT, help="the JSON written")
    p.add_argument("--run-cap-s", type=float, default=400.0, help="one run at most")
    p.add_argument("--time-cap-s", type=float, default=2400.0, help="the whole benchmark")
    p.add_argument(
        "--cp-flag",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a `pf-controlplane up` flag (repeatable), e.g. node-monitor-period=1s",
    )
    args = p.parse_args()
    cp_flags = dict(f.split("=", 1) for f in args.cp_flag)
    if not devcluster.default_binary().exists():
        print("the local control plane is not built: run `make controlplane`", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="parkfleet-bench-jobs-"))
    log(f"starting a local control plane in {work}")
    cluster = devcluster.start(work / "cluster", remove_dir_on_exit=True, flags=cp_flags)
    try:
        run(args, cluster, work)
    finally:
        devcluster.stop(cluster)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

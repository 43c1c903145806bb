"""``parkfleet demo``: the main job on one machine, start to finish, in one command.

It starts the local control plane, the operator, a gateway and a simulated fleet (200
cars in 5 cells living a sped-up evening of parking and charging), applies the sample
FleetPool and InferenceJob, shows live progress, checks the results against the labels
and against local ONNX Runtime, and stops everything it started (``--keep`` leaves it
running for exploring).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from parkfleet import devcluster
from parkfleet.demoembed import run_embeddings_demo
from parkfleet.devhelm import ChartInstall, HelmError, image_archives
from parkfleet.devstack import DevStack, stop_recorded
from parkfleet.models.digits import DigitsModel

__all__ = ["down", "register", "run_demo", "run_helm_demo"]

REPO = Path(__file__).resolve().parents[2]
DEMO_ROOT = REPO / ".cache" / "demo"
DEMO_ITEMS = 20_000


def _kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    return devcluster.kubectl(kubeconfig, *args, stdin=stdin).stdout


def _get(kubeconfig: Path, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(_kubectl(kubeconfig, "get", *args, "-o", "json"))
    return out


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = width * done // max(total, 1)
    return "#" * filled + "-" * (width - filled)


def _demo_inputs(model: DigitsModel, area: Path) -> tuple[Path, np.ndarray]:
    """The held-out digits repeated to ``DEMO_ITEMS`` items in a namespace's ``area`` of
    the data volume (the job is in namespace default), with their labels."""
    x = np.load(model.directory / "digits_inputs.npy")
    y = np.load(model.directory / "digits_labels.npy")
    reps = -(-DEMO_ITEMS // len(x))
    xs, ys = np.tile(x, (reps, 1))[:DEMO_ITEMS], np.tile(y, reps)[:DEMO_ITEMS]
    path = area / "digits" / "demo-inputs.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(xs))
    return path, ys


def down(root: Path = DEMO_ROOT) -> list[str]:
    """Stops a demo left running in ``root`` (``make demo-down``), by its own pid files.

    The stack's processes first (cars, the gateway, the operator: each SIGTERM, SIGKILL
    only if it is still there 15 s later, logged), then the control plane.

    Returns:
        What was still running, in the order it was stopped.
    """
    stopped = stop_recorded(root / "stack")
    if devcluster.stop(root / "cluster"):
        stopped.append("control plane")
    return stopped


def _fresh_root() -> Path:
    """The demo's folder, emptied after stopping what an earlier demo left running."""
    left = down(DEMO_ROOT)
    if left:
        print(f"==> stopped what an earlier demo left running: {', '.join(left)}")
    shutil.rmtree(DEMO_ROOT, ignore_errors=True)
    DEMO_ROOT.mkdir(parents=True)
    return DEMO_ROOT


def _start_fleet(stack: DevStack, cars: int, speed: float, rate: float) -> None:
    """The demo's cars: 5 cells of pool demo living an evening, dialling the gateway."""
    print(
        f"==> {cars} simulated cars in 5 cells, an evening sped up x{speed:g}, "
        f"dialling {stack.gateway_address}"
    )
    stack.start_fleet(
        cars,
        5,
        "demo",
        scenario="day",
        speed=speed,
        extra=["--compute=modelled", f"--modelled-rate={rate}", "--start-hour=19"],
    )


def run_demo(
    *, keep: bool, cars: int, speed: float, rate: float, timeout: float, workload: str = "digits"
) -> int:
    """Runs the demo (``workload`` digits or embeddings); returns a process exit code."""
    root = _fresh_root()
    kubeconfig = root / "kubeconfig"
    print("==> starting the local control plane (etcd, kube-apiserver, scheduler, controllers)")
    cluster = devcluster.start(root / "cluster", kubeconfig=kubeconfig, detach=keep)
    print(f"    ready in {cluster.ready_seconds:.1f}s at {cluster.server}")
    stack = DevStack(root / "stack", kubeconfig, telemetry_interval_s=2.0, detach=keep)
    ok = False
    try:
        for crd in ("fleetpools", "inferencejobs"):
            _kubectl(kubeconfig, "apply", "-f", str(REPO / "crds" / f"{crd}.parkfleet.io.yaml"))
            _kubectl(
                kubeconfig,
                "wait",
                "--for=condition=Established",
                f"crd/{crd}.parkfleet.io",
                "--timeout=60s",
            )
        model = stack.prepare()
        if workload == "embeddings":
            print("==> starting the operator and a gateway (with its node agent)")
            stack.start_operator()
            stack.start_gateway()
            ok = run_embeddings_demo(stack, kubeconfig, root, cars, timeout, keep)
            return 0 if ok else 1
        inputs_path, labels = _demo_inputs(model, stack.area())
        print(
            f"==> digits model {model.sha256[:12]}… "
            f"(accuracy on its test split {model.accuracy:.3f})"
        )
        print("==> starting the operator and a gateway (with its node agent)")
        stack.start_operator()
        stack.start_gateway()
        _start_fleet(stack, cars, speed, rate)
        status = _run_sample_job(kubeconfig, timeout)
        ok = _report(stack.data, model, status, labels, inputs_path)
    finally:
        _end(
            keep,
            stack,
            cluster,
            "kubectl get fp,ij,nodes,jobs; kubectl get pods -o wide",
            "kubectl describe ij digits; kubectl logs <a pod of job digits>",
            f"logs of each process: {stack.logs}",
        )
    return 0 if ok else 1


def _end(keep: bool, stack: DevStack, cluster: devcluster.LocalCluster, *look_around: str) -> None:
    """Stops what the demo started, or with ``keep`` says how to look around and stop it."""
    if keep:
        print("\n==> still running (--keep). Look around:")
        print(f"    export KUBECONFIG={cluster.kubeconfig}")
        for line in look_around:
            print(f"    {line}")
        print("    stop it all with: make demo-down")
    else:
        print("\n==> stopping everything the demo started")
        stack.stop()
        devcluster.stop(cluster)


def _run_sample_job(kubeconfig: Path, timeout: float) -> dict[str, Any]:
    """Applies the sample FleetPool, waits for its cars, runs the sample job to its end."""
    print("==> kubectl apply -f crds/samples/fleetpool-demo.yaml")
    _kubectl(kubeconfig, "apply", "-f", str(REPO / "crds" / "samples" / "fleetpool-demo.yaml"))
    _wait_for_pool(kubeconfig)
    print("==> kubectl apply -f crds/samples/inferencejob-digits.yaml")
    _kubectl(kubeconfig, "apply", "-f", str(REPO / "crds" / "samples" / "inferencejob-digits.yaml"))
    return _follow(kubeconfig, timeout)


def run_helm_demo(*, keep: bool, cars: int, speed: float, rate: float, timeout: float) -> int:
    """The same job on parkfleet installed by its chart (``make demo-helm``): the local
    cluster with its real node runs the chart's pods from the images ``make images``
    built; the simulated cars dial the gateway's NodePort. Root only (the real node)."""
    if os.geteuid() != 0:
        print("!! make demo-helm needs root: the real node makes network namespaces and mounts")
        return 2
    try:
        archives = image_archives()
    except HelmError as e:
        print(f"!! {e}")
        return 2
    root = _fresh_root()
    kubeconfig = root / "kubeconfig"
    print("==> starting the local control plane and its real node (containerd, kubelet)")
    cluster = devcluster.start(root / "cluster", kubeconfig=kubeconfig, detach=keep, node=True)
    assert cluster.node is not None
    print(
        f"    ready in {cluster.ready_seconds:.1f}s at {cluster.server}; node {cluster.node.name} "
        f"at {cluster.node.ip} (Ready {cluster.node.ready_seconds:.1f}s after it started)"
    )
    chart = ChartInstall(cluster, root, detach=keep)
    stack = chart.stack
    ok = False
    try:
        print(f"==> importing {', '.join(a.name for a in archives)} into the node's containerd")
        model = chart.prepare(archives)
        inputs_path, labels = _demo_inputs(model, chart.area())
        chart.chown_volume()
        print(
            f"==> helm install {chart.release} helm/parkfleet -n {chart.namespace} "
            f"(restricted Pod Security; cars' Service: NodePort {chart.node_port})"
        )
        seconds = chart.install()
        print(f"    every pod Ready in {seconds:.1f}s:")
        pods = _kubectl(kubeconfig, "get", "pods", "-n", chart.namespace, "-o", "wide")
        for line in pods.rstrip().splitlines():
            print(f"    {line}")
        _start_fleet(stack, cars, speed, rate)
        status = _run_sample_job(kubeconfig, timeout)
        ok = _report(chart.volume / "data", model, status, labels, inputs_path)
    finally:
        _end(
            keep,
            stack,
            cluster,
            f"kubectl -n {chart.namespace} get pods -o wide; kubectl get fp,ij,nodes",
            f"kubectl -n {chart.namespace} logs statefulset/{chart.fullname}-gateway",
        )
    return 0 if ok else 1


def _wait_for_pool(kubeconfig: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = _get(kubeconfig, "fp", "demo").get("status", {})
        if st.get("carsConnected"):
            print(
                f"==> pool demo: {st.get('cellCount')} cells (virtual Nodes), "
                f"{st.get('carsConnected')} cars connected, {st.get('carsEligible')} eligible now"
            )
            return
        time.sleep(1)
    raise RuntimeError("no car connected to pool demo within 120 s")


def _follow(kubeconfig: Path, timeout: float, job: str = "digits") -> dict[str, Any]:
    tty = sys.stdout.isatty()
    deadline = time.monotonic() + timeout
    last_line = ""
    while time.monotonic() < deadline:
        st: dict[str, Any] = _get(kubeconfig, "ij", job).get("status", {})
        pool = _get(kubeconfig, "fp", "demo").get("status", {})
        units = st.get("units", {})
        line = (
            f"[{_bar(units.get('succeeded', 0), units.get('total', 1))}] "
            f"units {units.get('succeeded', 0)}/{units.get('total', '?')} "
            f"running {units.get('running', 0)}  items/s {st.get('itemsPerSecond', 0):.0f}  "
            f"cars busy {pool.get('carsBusy', 0)}/{pool.get('carsEligible', 0)} eligible  "
            f"moved {st.get('carsMoved', 0)}"
        )
        if tty:
            print("\r" + line, end="", flush=True)
        elif line != last_line:
            print(line, flush=True)
        last_line = line
        conds = {c["type"]: c for c in st.get("conditions", [])}
        if (
            conds.get("Complete", {}).get("status") == "True"
            or conds.get("Failed", {}).get("status") == "True"
        ):
            print()
            return st
        time.sleep(1)
    print()
    raise RuntimeError(f"the job did not finish within {timeout:.0f} s")


def _report(
    data: Path, model: DigitsModel, st: dict[str, Any], labels: np.ndarray, inputs: Path
) -> bool:
    conds = {c["type"]: c for c in st.get("conditions", [])}
    if conds.get("Failed", {}).get("status") == "True":
        print(f"!! the job failed: {conds['Failed']['reason']}: {conds['Failed']['message']}")
        return False
    out = data / st.get("resultLocation", "results/digits")
    files = sorted(out.glob("unit-*.npz"))
    firsts, predicted = [], []
    for f in files:
        with np.load(f) as z:
            firsts.append(int(z["first_item"][0]))
            predicted.append(z["label"])
    order = np.argsort(firsts)
    items = np.concatenate([np.arange(firsts[i], firsts[i] + len(predicted[i])) for i in order])
    labels_pred = np.concatenate([predicted[i] for i in order])
    exactly_once = np.array_equal(items, np.arange(len(labels)))
    session = ort.InferenceSession(str(model.model_path), providers=["CPUExecutionProvider"])
    local = session.run(["label"], {"input": np.load(inputs)})[0]
    same = int(np.sum(local == labels_pred)) if exactly_once else 0
    accuracy = float(np.mean(labels_pred == labels)) if exactly_once else 0.0
    seconds = _elapsed(st)
    print("==> done")
    print(
        f"    units: {st['units']['succeeded']}/{st['units']['total']}, items: {len(items)} "
        f"(every item exactly once: {'yes' if exactly_once else 'NO'})"
    )
    print(f"    same labels as local ONNX Runtime: {same}/{len(labels)}")
    print(f"    accuracy against the digits labels: {accuracy:.4f}")
    print(
        f"    {st.get('carsUsed', 0)} cars used, {st.get('carsMoved', 0)} moves, "
        f"{seconds:.0f} s, {len(items) / max(seconds, 1e-9):.0f} items/s"
    )
    energy = float(st.get("energyWh", 0))
    per_item = energy / max(len(items), 1) * 1000.0
    print(
        f"    energy: {energy:.3f} Wh, {per_item:.4f} mWh per item, on the wall clock like "
        "items/s (the simulator's speed-up moves only when cars park and drive)"
        + (
            "; the gateway's account: task seconds x each car's declared power (awake "
            "base + GPU, at the socket)"
            if st.get("energyModelled")
            else ""
        )
    )
    print(f"    results: {out}/unit-*.npz ({len(files)} files)")
    return exactly_once and same == len(labels)


def _elapsed(st: dict[str, Any]) -> float:
    from parkfleet.controller.jobs import elapsed_s

    return elapsed_s(st.get("startTime"), st.get("completionTime"))


def _cmd(args: argparse.Namespace) -> int:
    if args.down:
        stopped = down()
        print(f"demo stopped: {', '.join(stopped)}" if stopped else "no demo was running")
        return 0
    if args.helm:
        if args.workload != "digits":
            print("!! --helm runs the digits workload only")
            return 2
        return run_helm_demo(
            keep=args.keep,
            cars=args.cars or 200,
            speed=args.speed,
            rate=args.rate,
            timeout=args.timeout,
        )
    cars = args.cars or (200 if args.workload == "digits" else 20)
    return run_demo(
        keep=args.keep,
        cars=cars,
        speed=args.speed,
        rate=args.rate,
        timeout=args.timeout,
        workload=args.workload,
    )


def register(subparsers: Any) -> None:
    """Adds ``parkfleet demo``."""
    p = subparsers.add_parser("demo", help="run the main job end to end on this machine")
    p.add_argument("--keep", action="store_true", help="leave everything running afterwards")
    p.add_argument("--down", action="store_true", help="stop a demo left running with --keep")
    p.add_argument(
        "--helm",
        action="store_true",
        help="on parkfleet installed by its chart on the local cluster's real node (root)",
    )
    p.add_argument(
        "--workload",
        choices=("digits", "embeddings"),
        default="digits",
        help="digits (the default, quick) or embeddings: 10,000 sentences with "
        "all-MiniLM-L6-v2, object storage to object storage",
    )
    p.add_argument("--cars", type=int, default=0, help="default 200 (digits), 20 (embeddings)")
    p.add_argument("--speed", type=float, default=60.0, help="simulated seconds per second")
    p.add_argument("--rate", type=float, default=25.0, help="modelled items/s per car")
    p.add_argument("--timeout", type=float, default=600.0)
    p.set_defaults(func=_cmd)

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
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from parkfleet import devcluster
from parkfleet.devstack import DevStack, stop_recorded

__all__ = ["down", "register", "run_demo"]

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


def _demo_inputs(stack: DevStack) -> tuple[Path, np.ndarray]:
    """The held-out digits repeated to ``DEMO_ITEMS`` items, with their labels."""
    assert stack.model is not None
    x = np.load(stack.model.directory / "digits_inputs.npy")
    y = np.load(stack.model.directory / "digits_labels.npy")
    reps = -(-DEMO_ITEMS // len(x))
    xs, ys = np.tile(x, (reps, 1))[:DEMO_ITEMS], np.tile(y, reps)[:DEMO_ITEMS]
    path = stack.area() / "digits" / "demo-inputs.npy"  # the job is in namespace default
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


def run_demo(*, keep: bool, cars: int, speed: float, rate: float, timeout: float) -> int:
    """Runs the demo; returns a process exit code."""
    root = DEMO_ROOT
    left = down(root)
    if left:
        print(f"==> stopped what an earlier demo left running: {', '.join(left)}")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
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
        inputs_path, labels = _demo_inputs(stack)
        print(
            f"==> digits model {model.sha256[:12]}… "
            f"(accuracy on its test split {model.accuracy:.3f})"
        )
        print("==> starting the operator and a gateway (with its node agent)")
        stack.start_operator()
        stack.start_gateway()
        print(f"==> {cars} simulated cars in 5 cells, an evening sped up x{speed:g}")
        stack.start_fleet(
            cars,
            5,
            "demo",
            scenario="day",
            speed=speed,
            extra=["--compute=modelled", f"--modelled-rate={rate}", "--start-hour=19"],
        )
        _kubectl(kubeconfig, "apply", "-f", str(REPO / "crds" / "samples" / "fleetpool-demo.yaml"))
        _wait_for_pool(kubeconfig)
        print("==> kubectl apply -f crds/samples/inferencejob-digits.yaml")
        _kubectl(
            kubeconfig, "apply", "-f", str(REPO / "crds" / "samples" / "inferencejob-digits.yaml")
        )
        status = _follow(kubeconfig, timeout)
        ok = _report(stack, kubeconfig, status, labels, inputs_path)
    finally:
        if keep:
            print("\n==> still running (--keep). Look around:")
            print(f"    export KUBECONFIG={kubeconfig}")
            print("    kubectl get fp,ij,nodes,jobs; kubectl get pods -o wide")
            print("    kubectl describe ij digits; kubectl logs <a pod of job digits>")
            print(f"    logs of each process: {stack.logs}")
            print("    stop it all with: make demo-down")
        else:
            print("\n==> stopping everything the demo started")
            stack.stop()
            devcluster.stop(cluster)
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


def _follow(kubeconfig: Path, timeout: float) -> dict[str, Any]:
    tty = sys.stdout.isatty()
    deadline = time.monotonic() + timeout
    last_line = ""
    while time.monotonic() < deadline:
        st: dict[str, Any] = _get(kubeconfig, "ij", "digits").get("status", {})
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
    stack: DevStack, kubeconfig: Path, st: dict[str, Any], labels: np.ndarray, inputs: Path
) -> bool:
    conds = {c["type"]: c for c in st.get("conditions", [])}
    if conds.get("Failed", {}).get("status") == "True":
        print(f"!! the job failed: {conds['Failed']['reason']}: {conds['Failed']['message']}")
        return False
    out = stack.data / st.get("resultLocation", "results/digits")
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
    assert stack.model is not None
    session = ort.InferenceSession(str(stack.model.model_path), providers=["CPUExecutionProvider"])
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
    print(
        f"    energy: {st.get('energyWh', 0):.3f} Wh"
        + (" (modelled: GPU power x time)" if st.get("energyModelled") else "")
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
    return run_demo(
        keep=args.keep, cars=args.cars, speed=args.speed, rate=args.rate, timeout=args.timeout
    )


def register(subparsers: Any) -> None:
    """Adds ``parkfleet demo``."""
    p = subparsers.add_parser("demo", help="run the main job end to end on this machine")
    p.add_argument("--keep", action="store_true", help="leave everything running afterwards")
    p.add_argument("--down", action="store_true", help="stop a demo left running with --keep")
    p.add_argument("--cars", type=int, default=200)
    p.add_argument("--speed", type=float, default=60.0, help="simulated seconds per second")
    p.add_argument("--rate", type=float, default=25.0, help="modelled items/s per car")
    p.add_argument("--timeout", type=float, default=600.0)
    p.set_defaults(func=_cmd)

"""agent_vs_raw_ratio: items/s through gateway + agent vs raw ONNX Runtime, same run.

Not a test (pytest does not collect it). Run from the repo root::

    .venv/bin/python tests/bench/bench_agent.py [--items 200000] [--batch-size 256]

Raw: one ONNX Runtime session (the agent's options: ``intra_op_num_threads`` as given,
one inter-op thread) runs the digits model over the inputs in batches of ``batch_size``.
Agent: the same inputs go through a real gateway (in this process) over mTLS on
127.0.0.1 to a real ``parkfleet agent`` process, which runs the same model with the same
batch size and threads and streams the results back; measured from submit to the
task's ``succeeded`` event, after a warm-up task has loaded the model. Writes
``.cache/bench/agent.json`` and prints a table.
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "operator"))

from parkfleet.certs import FleetCA  # noqa: E402
from parkfleet.gateway import ArrayInput, Gateway, GatewayConfig, TaskSpec  # noqa: E402
from parkfleet.gateway import ModelRef as GatewayModelRef  # noqa: E402
from parkfleet.models.digits import build_digits  # noqa: E402


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process (Linux /proc), 0 when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CountingSink:
    """Counts result items (keeping them would measure the sink, not the link)."""

    def __init__(self) -> None:
        self.items = 0
        self.checksum = 0
        self.done = asyncio.Event()

    async def write(self, first_item: int, outputs: Mapping[str, np.ndarray]) -> None:
        labels = outputs["label"]
        self.items += len(labels)
        self.checksum += int(labels.sum())

    async def complete(self) -> None:
        self.done.set()


def raw_items_per_second(
    model_path: Path, x: np.ndarray, batch_size: int, threads: int, repeats: int
) -> tuple[float, int]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    names = ["label", "probabilities"]
    session.run(names, {"input": x[:batch_size]})  # warm-up
    best = 0.0
    checksum = 0
    for _ in range(repeats):
        checksum = 0
        t0 = time.perf_counter()
        for i in range(0, len(x), batch_size):
            label, _ = session.run(names, {"input": x[i : i + batch_size]})
            checksum += int(label.sum())
        best = max(best, len(x) / (time.perf_counter() - t0))
    return best, checksum


async def agent_items_per_second(
    model_path: Path, x: np.ndarray, batch_sizes: list[int], threads: int, repeats: int
) -> dict[int, tuple[float, int, dict[str, Any]]]:
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        root = Path(tmp)
        ca = FleetCA.create()
        ca.save(root / "certs")
        server = ca.issue_gateway(["127.0.0.1"])
        car = ca.issue_car("bench-car", {"pool": "bench"})
        car.save(root / "car.crt", root / "car.key")
        gateway = Gateway(
            GatewayConfig(
                ca_pem=ca.cert_pem,
                cert_pem=server.cert_pem,
                key_pem=server.key_pem,
                models_dir=root / "models",
                telemetry_interval_s=5.0,
            )
        )
        await gateway.start()
        ref = gateway.models.add_file(model_path)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "parkfleet.cli",
            "agent",
            "--gateway",
            gateway.address,
            "--cert",
            str(root / "car.crt"),
            "--key",
            str(root / "car.key"),
            "--ca",
            str(root / "certs" / "ca.crt"),
            "--intra-op-threads",
            str(threads),
            "--log-level",
            "warning",
            env={**os.environ, "PYTHONPATH": str(REPO / "operator")},
        )
        events = gateway.events()
        try:
            for _ in range(600):
                cap = gateway.capacity().get("bench-0")
                if cap is not None and cap.cars_eligible:
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("the agent did not connect")

            async def run(
                task_id: str, data: np.ndarray, batch_size: int
            ) -> tuple[float, CountingSink]:
                sink = CountingSink()
                spec = TaskSpec(
                    task_id=task_id,
                    cell="bench-0",
                    runtime="onnxruntime",
                    model=GatewayModelRef(sha256=ref.sha256, size_bytes=ref.size_bytes),
                    input_name="input",
                    output_names=("label", "probabilities"),
                    batch_size=batch_size,
                    item_start=0,
                    item_end=len(data),
                    inputs=ArrayInput(data),
                    sink=sink,
                    checkpoint_interval_s=5.0,
                )
                t0 = time.perf_counter()
                await gateway.submit(spec)
                async for e in events:
                    if e.task_id == task_id and e.kind in ("succeeded", "failed", "cancelled"):
                        if e.kind != "succeeded":
                            raise RuntimeError(f"task {task_id} {e.kind}: {e.reason} {e.message}")
                        break
                return time.perf_counter() - t0, sink

            await run("warm-up", x[:1024], 64)  # fetches and loads the model
            out: dict[int, tuple[float, int, dict[str, Any]]] = {}
            for batch_size in batch_sizes:
                best = 0.0
                checksum = 0
                cpu = {"gateway_cpu_s": 0.0, "agent_cpu_s": 0.0, "wall_s": 0.0}
                for i in range(repeats):
                    g0, a0 = _own_cpu_s(), _proc_cpu_s(proc.pid)
                    seconds, sink = await run(f"bench-{batch_size}-{i}", x, batch_size)
                    g1, a1 = _own_cpu_s(), _proc_cpu_s(proc.pid)
                    assert sink.items == len(x)
                    checksum = sink.checksum
                    if len(x) / seconds > best:
                        best = len(x) / seconds
                        cpu = {
                            "gateway_cpu_s": round(g1 - g0, 3),
                            "agent_cpu_s": round(a1 - a0, 3),
                            "wall_s": round(seconds, 3),
                        }
                status = gateway.task(f"bench-{batch_size}-{repeats - 1}")
                modelled = bool(status and status.energy_modelled)
                out[batch_size] = (best, checksum, {"energy_modelled": modelled, **cpu})
            return out
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)
            await gateway.stop(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=300_000)
    parser.add_argument(
        "--batch-size", type=int, default=256, help="the batch size agent_vs_raw_ratio reports"
    )
    parser.add_argument(
        "--sweep", default="1,16", help="further batch sizes measured alongside (comma list)"
    )
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    parser.add_argument("--repeats", type=int, default=2, help="best of N runs, each side")
    parser.add_argument("--out", type=Path, default=REPO / ".cache" / "bench" / "agent.json")
    args = parser.parse_args()

    model = build_digits(REPO / ".cache" / "models")
    x = np.ascontiguousarray(np.resize(model.test_inputs(), (args.items, 64)), dtype=np.float32)
    sizes = [args.batch_size] + [
        int(b) for b in args.sweep.split(",") if b.strip() and int(b) != args.batch_size
    ]
    raw = {
        b: raw_items_per_second(model.model_path, x, b, args.threads, args.repeats) for b in sizes
    }
    agent = asyncio.run(
        agent_items_per_second(model.model_path, x, sizes, args.threads, args.repeats)
    )
    rows = []
    for b in sizes:
        (raw_rate, raw_sum), (agent_rate, agent_sum, extra) = raw[b], agent[b]
        if raw_sum != agent_sum:
            print(f"batch {b}: results differ (label checksum raw {raw_sum}, agent {agent_sum})")
            return 1
        rows.append(
            {
                "batch_size": b,
                "raw_items_per_second": round(raw_rate, 1),
                "agent_items_per_second": round(agent_rate, 1),
                "ratio": round(agent_rate / raw_rate, 4),
                "input_mb_per_second": round(agent_rate * 64 * 4 / 1e6, 1),
                **extra,
            }
        )
    main_row = rows[0]
    result = {
        "agent_vs_raw_ratio": main_row["ratio"],
        "agent_items_per_second": main_row["agent_items_per_second"],
        "raw_items_per_second": main_row["raw_items_per_second"],
        "batch_size": args.batch_size,
        "items": args.items,
        "intra_op_threads": args.threads,
        "repeats": args.repeats,
        "model": "digits",
        "model_sha256": model.sha256,
        "providers": ["CPUExecutionProvider"],
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "goal": ">= 0.95",
        "sweep": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{'batch':>6}{'raw items/s':>14}{'agent items/s':>15}{'ratio':>8}"
        f"{'input MB/s':>12}{'gw CPU s':>10}{'agent CPU s':>13}{'wall s':>8}"
    )
    for r in rows:
        print(
            f"{r['batch_size']:>6}{r['raw_items_per_second']:>14,.0f}"
            f"{r['agent_items_per_second']:>15,.0f}{r['ratio']:>8.3f}"
            f"{r['input_mb_per_second']:>12.1f}{r['gateway_cpu_s']:>10.2f}"
            f"{r['agent_cpu_s']:>13.2f}{r['wall_s']:>8.2f}"
        )
    print(
        f"agent_vs_raw_ratio = {result['agent_vs_raw_ratio']:.3f} at batch {args.batch_size} "
        f"(goal >= 0.95); {args.items} items, {args.threads} intra-op thread(s)"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

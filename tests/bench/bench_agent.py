"""agent_vs_raw_ratio: items/s through gateway + agent vs raw ONNX Runtime, same run.

Not a test (pytest does not collect it). Run from the repo root::

    .venv/bin/python tests/bench/bench_agent.py [--items 300000] [--batch-size 256]

Raw: one ONNX Runtime session (the agent's options: ``intra_op_num_threads`` as given,
one inter-op thread) runs a model over the inputs in batches of ``batch_size``.
Agent: the same inputs go through a real gateway (in this process) over mTLS on
127.0.0.1 to a real ``parkfleet agent`` process, which runs the same model with the same
batch size and threads and streams the results back; measured from submit to the
task's ``succeeded`` event, after a warm-up task has loaded the model. Raw and agent
runs alternate (best of ``--repeats`` each; ``--convnet-repeats`` for the convnet), so a
neighbour's load on a shared machine falls on both alike. Results are compared with
raw's (labels weighted by item number, and the probabilities' sum).

Two models, in the same run:

- ``digits`` (64 floats in, a tiny MLP, ~0.2 µs per item): its ratio measures the car
  link's cost per item (TLS, gRPC, encoding), not the car's compute. It is
  ``agent_vs_raw_ratio``, at ``--batch-size`` and the ``--sweep`` batch sizes.
- ``convnet`` (a 3x32x32 image CNN, ~1 ms per item; ``parkfleet.models.convnet``): a cost
  per item like a car's real vision or language workloads, at ``--batch-size``.
- ``minilm``: all-MiniLM-L6-v2 (int8) with mean pooling and L2 norm appended
  (``make model-minilm``), over texts tokenised beforehand and padded per batch (three
  int64 inputs of variable length, one chunk per batch; an embedding of 384 floats back).
  Raw runs the same batches. Its ratio is ``agent_vs_raw_ratio_minilm``, with the bytes
  per item each way on the link (``link_bytes_per_item_in_minilm``, ``..._out_minilm``:
  the encoded InputChunk and ResultChunk messages, before gRPC's and TLS's framing).

``overhead_us_per_item`` is what the link adds per item (agent minus raw, in µs of wall
time), ``overhead_ns_per_input_byte`` the same per input byte (the link's work grows with
the bytes, not the items): a model costing ``c`` µs per item of ``b`` input bytes would
reach about ``c / (c + b * ns_per_byte / 1000)`` (no overlap assumed; spare cores hide
some of it). Writes ``.cache/bench/agent.json`` and prints a table.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "operator"))

from parkfleet.certs import FleetCA  # noqa: E402
from parkfleet.gateway import ArrayInput, Gateway, GatewayConfig, TaskSpec  # noqa: E402
from parkfleet.gateway import ModelRef as GatewayModelRef  # noqa: E402
from parkfleet.models.convnet import build_convnet  # noqa: E402
from parkfleet.models.digits import build_digits  # noqa: E402
from parkfleet.models.minilm import load_minilm  # noqa: E402
from parkfleet.protocol.chunks import encode_input, encode_result  # noqa: E402
from parkfleet.protocol.padding import pad_concat  # noqa: E402


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


def checksum(first_item: int, labels: np.ndarray, probabilities: np.ndarray) -> tuple[int, float]:
    """Labels weighted by item number (order matters), and the probabilities' sum."""
    weights = np.arange(first_item + 1, first_item + 1 + len(labels), dtype=np.int64)
    return int(np.dot(weights, labels.astype(np.int64))), float(probabilities.sum(dtype=np.float64))


class CountingSink:
    """Counts result items and sums them (keeping them would measure the sink, not the link)."""

    def __init__(self) -> None:
        self.items = 0
        self.labels = 0
        self.probabilities = 0.0
        self.done = asyncio.Event()

    async def write(self, first_item: int, outputs: Mapping[str, np.ndarray]) -> None:
        labels, probs = outputs["label"], outputs["probabilities"]
        self.items += len(labels)
        s_labels, s_probs = checksum(first_item, labels, probs)
        self.labels += s_labels
        self.probabilities += s_probs

    async def complete(self) -> None:
        self.done.set()


Checksum = tuple[int, float]


@dataclass(frozen=True)
class Case:
    """One model measured at some batch sizes.

    Attributes:
        name: The model's name in the results.
        path: The ONNX file.
        x: The inputs.
        batch_sizes: Batch sizes measured, the first one reported.
        repeats: Runs each side, the best one counts.
    """

    name: str
    path: Path
    x: np.ndarray
    batch_sizes: list[int]
    repeats: int


class Raw:
    """ONNX Runtime alone, with the agent's session options.

    Args:
        model_path: The ONNX file.
        threads: ``intra_op_num_threads``.
    """

    def __init__(self, model_path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def items_per_second(self, x: np.ndarray, batch_size: int) -> tuple[float, Checksum]:
        """One pass over ``x`` in batches (after a warm-up batch): items/s and checksums."""
        names = ["label", "probabilities"]
        run = self.session.run
        run(names, {"input": x[:batch_size]})  # warm-up
        outs = []
        t0 = time.perf_counter()
        for i in range(0, len(x), batch_size):
            outs.append(run(names, {"input": x[i : i + batch_size]}))
        seconds = time.perf_counter() - t0
        labels, probs = 0, 0.0  # summed after the clock stops, as the agent's sink does
        for i, (label, prob) in zip(range(0, len(x), batch_size), outs, strict=True):
            s_labels, s_probs = checksum(i, label, prob)
            labels += s_labels
            probs += s_probs
        return len(x) / seconds, (labels, probs)


Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class TextCase:
    """The pooled MiniLM over texts tokenised beforehand, one padded array set per batch.

    Attributes:
        path: The pooled ONNX file.
        batches: The token inputs of each batch, padded to its longest text.
        batch_size: Items per batch.
        repeats: Runs each side, the best one counts.
    """

    path: Path
    batches: list[Feeds]
    batch_size: int
    repeats: int

    @property
    def items(self) -> int:
        return sum(len(b["input_ids"]) for b in self.batches)

    def input_bytes(self, task_id: str) -> int:
        """The InputChunk messages the gateway sends for them (one per batch), in bytes."""
        total, first = 0, 0
        for b in self.batches:
            (name, array), *more = b.items()
            n = len(array)
            total += len(
                encode_input(task_id, 1, first, first + n == self.items, name, array, more)
            )
            first += n
        return total


class BatchedTokens:
    """An input source over ``TextCase.batches``: a read of one batch is that batch."""

    padded = True

    def __init__(self, case: TextCase) -> None:
        self.case = case

    def read(self, start: int, end: int) -> Feeds:
        size = self.case.batch_size
        if start % size == 0 and end - start <= size:
            batch = self.case.batches[start // size]
            if end - start == len(batch["input_ids"]):
                return batch
        # Not one batch (the gateway split it): those items, padded to their longest.
        rows = [
            {k: v[i - (i // size) * size][None] for k, v in self.case.batches[i // size].items()}
            for i in range(start, end)
        ]
        merged = {k: pad_concat([r[k] for r in rows]) for k in rows[0]}
        longest = int(merged["attention_mask"].sum(axis=1).max())
        return {k: v[:, :longest] for k, v in merged.items()}


class EmbeddingSink:
    """Keeps the embeddings (small), and the bytes of the result chunks that carried them."""

    def __init__(self, items: int, task_id: str) -> None:
        self.embeddings = np.zeros((items, 384), np.float32)
        self.items = 0
        self.result_bytes = 0
        self.task_id = task_id

    async def write(self, first_item: int, outputs: Mapping[str, np.ndarray]) -> None:
        e = outputs["embedding"]
        self.embeddings[first_item : first_item + len(e)] = e
        self.items += len(e)
        # The chunk as the car encoded it (the encoder is the car's own, deterministic).
        self.result_bytes += len(encode_result(self.task_id, 1, first_item, [("embedding", e)]))

    async def complete(self) -> None:
        pass


def raw_minilm(case: TextCase, threads: int) -> tuple[float, np.ndarray]:
    """One pass of ONNX Runtime alone over the batches (after a warm-up): items/s, outputs."""
    run = Raw(case.path, threads).session.run
    run(["embedding"], case.batches[0])
    outs = []
    t0 = time.perf_counter()
    for feeds in case.batches:
        outs.append(run(["embedding"], feeds)[0])
    seconds = time.perf_counter() - t0
    return case.items / seconds, np.concatenate(outs)


Measured = tuple[float, Checksum, dict[str, Any]]


async def timed(gateway: Gateway, events: Any, spec: TaskSpec) -> float:
    """Seconds from submitting a task to its ``succeeded`` event."""
    t0 = time.perf_counter()
    await gateway.submit(spec)
    async for e in events:
        if e.task_id == spec.task_id and e.kind in ("succeeded", "failed", "cancelled"):
            if e.kind != "succeeded":
                raise RuntimeError(f"task {spec.task_id} {e.kind}: {e.reason} {e.message}")
            break
    return time.perf_counter() - t0


async def measure(
    cases: list[Case], threads: int, text: TextCase | None = None
) -> tuple[dict[tuple[str, int], tuple[tuple[float, Checksum], Measured]], dict[str, Any]]:
    """Raw and agent items/s per (model, batch size), best of the case's repeats each, and
    the pooled MiniLM's figures (empty without ``text``).

    Raw and agent runs alternate, so that a neighbour's load on a shared machine
    falls on both alike.
    """
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
        refs = {case.name: gateway.models.add_file(case.path) for case in cases}
        text_info = None
        if text is not None:
            text_ref = gateway.models.add_file(text.path)
            text_info = await gateway.resolve_model(sha256=text_ref.sha256)
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
                cap = gateway.capacity("bench-0")
                if cap.cars_eligible:
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("the agent did not connect")

            async def run(
                task_id: str, model: str, data: np.ndarray, batch_size: int
            ) -> tuple[float, CountingSink]:
                sink = CountingSink()
                ref = refs[model]
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
                return await timed(gateway, events, spec), sink

            out: dict[tuple[str, int], tuple[tuple[float, Checksum], Measured]] = {}
            for case in cases:
                # Fetches and loads the model, and lets ORT size its buffers for a batch.
                warm = max(case.batch_sizes)
                await run(f"warm-up-{case.name}", case.name, case.x[:warm], warm)
                raw = Raw(case.path, threads)
                for batch_size in case.batch_sizes:
                    best_raw: tuple[float, Checksum] = (0.0, (0, 0.0))
                    best = 0.0
                    sums: Checksum = (0, 0.0)
                    cpu = {"gateway_cpu_s": 0.0, "agent_cpu_s": 0.0, "wall_s": 0.0}
                    task = ""
                    for i in range(case.repeats):
                        # In a thread: the gateway's loop keeps serving the idle car.
                        raw_run = await asyncio.to_thread(raw.items_per_second, case.x, batch_size)
                        if raw_run[0] > best_raw[0]:
                            best_raw = raw_run
                        task = f"bench-{case.name}-{batch_size}-{i}"
                        g0, a0 = _own_cpu_s(), _proc_cpu_s(proc.pid)
                        seconds, sink = await run(task, case.name, case.x, batch_size)
                        g1, a1 = _own_cpu_s(), _proc_cpu_s(proc.pid)
                        assert sink.items == len(case.x)
                        sums = (sink.labels, sink.probabilities)
                        if len(case.x) / seconds > best:
                            best = len(case.x) / seconds
                            cpu = {
                                "gateway_cpu_s": round(g1 - g0, 3),
                                "agent_cpu_s": round(a1 - a0, 3),
                                "wall_s": round(seconds, 3),
                            }
                    status = gateway.task(task)
                    modelled = bool(status and status.energy_modelled)
                    out[(case.name, batch_size)] = (
                        best_raw,
                        (best, sums, {"energy_modelled": modelled, **cpu}),
                    )
            texts: dict[str, Any] = {}
            if text is not None and text_info is not None:
                texts = await measure_text(gateway, events, text, text_info, threads, proc.pid)
            return out, texts
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)
            await gateway.stop(0)


async def measure_text(
    gateway: Gateway, events: Any, case: TextCase, info: Any, threads: int, agent_pid: int
) -> dict[str, Any]:
    """The pooled MiniLM: raw and agent runs alternating, best of ``case.repeats`` each."""

    async def run(task_id: str, items: int) -> tuple[float, EmbeddingSink]:
        sink = EmbeddingSink(items, task_id)
        spec = TaskSpec(
            task_id=task_id,
            cell="bench-0",
            runtime="onnxruntime",
            model=info.ref,
            input_name=info.input_name,
            input_specs=info.inputs,
            output_names=("embedding",),
            output_specs=info.outputs,
            batch_size=case.batch_size,
            item_start=0,
            item_end=items,
            inputs=BatchedTokens(case),
            sink=sink,
            checkpoint_interval_s=5.0,
        )
        return await timed(gateway, events, spec), sink

    await run("warm-up-minilm", case.batch_size)
    best_raw, best, raw_out, sink = 0.0, 0.0, np.empty(0), None
    cpu: dict[str, float] = {}
    for i in range(case.repeats):
        rate, outs = await asyncio.to_thread(raw_minilm, case, threads)
        if rate > best_raw:
            best_raw, raw_out = rate, outs
        g0, a0 = _own_cpu_s(), _proc_cpu_s(agent_pid)
        seconds, got = await run(f"bench-minilm-{i}", case.items)
        g1, a1 = _own_cpu_s(), _proc_cpu_s(agent_pid)
        assert got.items == case.items
        if case.items / seconds > best:
            best, sink = case.items / seconds, got
            cpu = {
                "gateway_cpu_us_per_item_minilm": round((g1 - g0) / case.items * 1e6, 1),
                "agent_cpu_us_per_item_minilm": round((a1 - a0) / case.items * 1e6, 1),
                "agent_wall_us_per_item_minilm": round(seconds / case.items * 1e6, 1),
            }
    assert sink is not None
    cos = np.sum(sink.embeddings * raw_out, axis=1) / (
        np.linalg.norm(sink.embeddings, axis=1) * np.linalg.norm(raw_out, axis=1)
    )
    tokens = sum(int(b["attention_mask"].sum()) for b in case.batches)
    return {
        "agent_vs_raw_ratio_minilm": round(best / best_raw, 4),
        "raw_items_per_second_minilm": round(best_raw, 1),
        "agent_items_per_second_minilm": round(best, 1),
        "link_bytes_per_item_in_minilm": round(case.input_bytes("bench-minilm-0") / case.items, 1),
        "link_bytes_per_item_out_minilm": round(sink.result_bytes / case.items, 1),
        # What the unpooled encoder would send back at least: last_hidden_state, float32,
        # per real token (padding would add more).
        "unpooled_bytes_per_item_out_minilm": round(tokens * 384 * 4 / case.items, 1),
        "tokens_per_item_minilm": round(tokens / case.items, 2),
        "min_cosine_vs_raw_minilm": round(float(cos.min()), 6),
        "items_minilm": case.items,
        "batch_size_minilm": case.batch_size,
        "repeats_minilm": case.repeats,
        "raw_wall_us_per_item_minilm": round(1e6 / best_raw, 1),
        **cpu,
    }


def text_case(items: int, batch_size: int, repeats: int) -> TextCase | None:
    """The pooled MiniLM's case over ``items`` varied sentences, or None without its files."""
    model = load_minilm(REPO / ".cache" / "models" / "minilm")
    if model is None:
        print("no MiniLM files in .cache/models/minilm (make model-minilm): minilm skipped")
        return None
    sys.path.insert(0, str(REPO))
    from tests.minilm import TextTokens, texts

    tokens = TextTokens(model.tokenizer_path)
    batch = texts(items, seed=11)
    batches = [tokens.encode(batch[i : i + batch_size]) for i in range(0, items, batch_size)]
    return TextCase(model.pooled_path, batches, batch_size, repeats)


def _row(
    model: str,
    batch_size: int,
    items: int,
    item_bytes: int,
    raw: tuple[float, Checksum],
    agent: Measured,
) -> dict[str, Any] | None:
    (raw_rate, raw_sums), (agent_rate, agent_sums, extra) = raw, agent
    if raw_sums[0] != agent_sums[0] or not np.isclose(raw_sums[1], agent_sums[1], rtol=1e-6):
        print(f"{model} batch {batch_size}: results differ (raw {raw_sums}, agent {agent_sums})")
        return None
    raw_us, agent_us = 1e6 / raw_rate, 1e6 / agent_rate
    return {
        "model": model,
        "batch_size": batch_size,
        "items": items,
        "raw_items_per_second": round(raw_rate, 1),
        "agent_items_per_second": round(agent_rate, 1),
        "ratio": round(agent_rate / raw_rate, 4),
        "raw_us_per_item": round(raw_us, 4),
        "agent_us_per_item": round(agent_us, 4),
        "overhead_us_per_item": round(agent_us - raw_us, 4),
        "input_bytes_per_item": item_bytes,
        "overhead_ns_per_input_byte": round((agent_us - raw_us) * 1e3 / item_bytes, 4),
        "gateway_cpu_us_per_item": round(extra["gateway_cpu_s"] / items * 1e6, 4),
        "agent_cpu_us_per_item": round(extra["agent_cpu_s"] / items * 1e6, 4),
        "input_mb_per_second": round(agent_rate * item_bytes / 1e6, 1),
        **extra,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=300_000, help="digits items")
    parser.add_argument(
        "--batch-size", type=int, default=256, help="the batch size agent_vs_raw_ratio reports"
    )
    parser.add_argument(
        "--sweep", default="1,16", help="further digits batch sizes measured alongside (comma list)"
    )
    parser.add_argument(
        "--convnet-items", type=int, default=2048, help="convnet items (~1 ms each; 0 = skip)"
    )
    parser.add_argument(
        "--minilm-items", type=int, default=1024, help="pooled MiniLM texts (0 = skip)"
    )
    parser.add_argument("--minilm-batch-size", type=int, default=32, help="MiniLM batch size")
    parser.add_argument(
        "--minilm-repeats", type=int, default=2, help="best of N MiniLM runs, each side"
    )
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    parser.add_argument("--repeats", type=int, default=2, help="best of N runs, each side")
    parser.add_argument(
        "--convnet-repeats", type=int, default=3, help="best of N convnet runs, each side"
    )
    parser.add_argument("--out", type=Path, default=REPO / ".cache" / "bench" / "agent.json")
    args = parser.parse_args()

    digits = build_digits(REPO / ".cache" / "models")
    x = np.ascontiguousarray(np.resize(digits.test_inputs(), (args.items, 64)), dtype=np.float32)
    sizes = [args.batch_size] + [
        int(b) for b in args.sweep.split(",") if b.strip() and int(b) != args.batch_size
    ]
    cases = [Case("digits", digits.model_path, x, sizes, args.repeats)]
    convnet = None
    if args.convnet_items > 0:
        convnet = build_convnet(REPO / ".cache" / "models")
        cases.append(
            Case(
                "convnet",
                convnet.model_path,
                convnet.inputs(args.convnet_items),
                [args.batch_size],
                args.convnet_repeats,
            )
        )
    text = (
        text_case(args.minilm_items, args.minilm_batch_size, args.minilm_repeats)
        if args.minilm_items > 0
        else None
    )
    measured, minilm = asyncio.run(measure(cases, args.threads, text))
    rows = []
    for c in cases:
        item_bytes = c.x[0].nbytes
        for b in c.batch_sizes:
            row = _row(c.name, b, len(c.x), item_bytes, *measured[(c.name, b)])
            if row is None:
                return 1
            rows.append(row)
    main_row = rows[0]
    by_model = {r["model"]: r for r in rows if r["batch_size"] == args.batch_size}
    result = {
        "agent_vs_raw_ratio": main_row["ratio"],
        "agent_items_per_second": main_row["agent_items_per_second"],
        "raw_items_per_second": main_row["raw_items_per_second"],
        "batch_size": args.batch_size,
        "items": args.items,
        "intra_op_threads": args.threads,
        "repeats": args.repeats,
        "convnet_repeats": args.convnet_repeats,
        "model": "digits",
        "model_sha256": digits.sha256,
        "providers": ["CPUExecutionProvider"],
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "goal": ">= 0.95",
        # What the link adds per item, in µs of wall time (digits: the model costs ~nothing),
        # and per input byte: the link's cost grows with the bytes an item carries.
        "overhead_us_per_item": main_row["overhead_us_per_item"],
        "overhead_ns_per_input_byte": main_row["overhead_ns_per_input_byte"],
        "by_model": {
            name: {
                "ratio": r["ratio"],
                "raw_us_per_item": r["raw_us_per_item"],
                "agent_us_per_item": r["agent_us_per_item"],
                "overhead_us_per_item": r["overhead_us_per_item"],
                "input_bytes_per_item": r["input_bytes_per_item"],
                "overhead_ns_per_input_byte": r["overhead_ns_per_input_byte"],
                "items": r["items"],
            }
            for name, r in by_model.items()
        },
        "convnet_sha256": convnet.sha256 if convnet is not None else None,
        "sweep": [r for r in rows if r["model"] == "digits"],
        "rows": rows,
        **minilm,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{'model':>8}{'batch':>6}{'raw items/s':>14}{'agent items/s':>15}{'ratio':>8}"
        f"{'raw us':>9}{'agent us':>10}{'overhead us':>13}{'input MB/s':>12}"
        f"{'gw CPU us':>11}{'agent CPU us':>14}{'wall s':>8}"
    )
    for r in rows:
        print(
            f"{r['model']:>8}{r['batch_size']:>6}{r['raw_items_per_second']:>14,.0f}"
            f"{r['agent_items_per_second']:>15,.0f}{r['ratio']:>8.3f}"
            f"{r['raw_us_per_item']:>9.3f}{r['agent_us_per_item']:>10.3f}"
            f"{r['overhead_us_per_item']:>13.3f}{r['input_mb_per_second']:>12.1f}"
            f"{r['gateway_cpu_us_per_item']:>11.3f}{r['agent_cpu_us_per_item']:>14.3f}"
            f"{r['wall_s']:>8.2f}"
        )
    print(
        f"agent_vs_raw_ratio = {result['agent_vs_raw_ratio']:.3f} at batch {args.batch_size} "
        f"(goal >= 0.95; digits, {args.items} items, {args.threads} intra-op thread(s)); "
        + ", ".join(f"{name} {r['ratio']:.3f}" for name, r in by_model.items())
    )
    if minilm:
        print(
            f"{'minilm':>8}{args.minilm_batch_size:>6}"
            f"{minilm['raw_items_per_second_minilm']:>14,.0f}"
            f"{minilm['agent_items_per_second_minilm']:>15,.0f}"
            f"{minilm['agent_vs_raw_ratio_minilm']:>8.3f}"
        )
        print(
            f"agent_vs_raw_ratio_minilm = {minilm['agent_vs_raw_ratio_minilm']:.3f} "
            f"(goal >= 0.95; pooled all-MiniLM-L6-v2 int8, {minilm['items_minilm']} texts, "
            f"{minilm['tokens_per_item_minilm']} tokens each on average); on the link per "
            f"item: {minilm['link_bytes_per_item_in_minilm']:.0f} B in, "
            f"{minilm['link_bytes_per_item_out_minilm']:.0f} B out (unpooled it would be "
            f"{minilm['unpooled_bytes_per_item_out_minilm']:.0f} B out); min cosine vs raw "
            f"{minilm['min_cosine_vs_raw_minilm']:.6f}"
        )
    per_item, item_bytes = main_row["overhead_us_per_item"], main_row["input_bytes_per_item"]
    per_byte = main_row["overhead_ns_per_input_byte"]
    print(
        f"the link adds {per_item:.3f} us per {item_bytes}-byte digits item ({per_byte:.2f} ns "
        "per input byte): a model costing c us per item of b input bytes reaches about "
        "c / (c + b * that / 1000)"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

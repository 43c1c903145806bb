"""Silent-loss benchmark: a car's link cut without a word -> the gateway lets it go.

Not a test (pytest does not collect ``bench_*.py``). Run ``make bench-silent-loss`` or
``.venv/bin/python tests/bench/bench_silent_loss.py [--trials 20 --baseline-trials 5]``
(``SILENT_LOSS_TRIALS``, ``SILENT_LOSS_BASELINE_TRIALS``, ``SILENT_LOSS_IDLE_TRIALS``,
``SILENT_LOSS_BASELINE_IDLE_TRIALS``, ``SILENT_LOSS_IDLE_S`` too). Root only: the car has a
network namespace of its own (``tests/integration/netns_env.py``); about 10 minutes.

What runs: the real gateway (``parkfleet.gateway.Gateway``, in this process) listening on
the host end of a veth pair; per trial, a real ``parkfleet agent`` process in the
namespace at the other end. Every packet in and out of the namespace is then dropped (no
FIN, no reset reaches the gateway).

What it measures, by this process's monotonic clock from just before the cut:
- busy cars (``p50_s``, ``p99_s``, over ``--trials``): the agent holds a task of the
  digits model and has checkpointed; until the gateway's ``lost`` event for the task,
  which must then succeed on an in-process agent standing by, every item exactly once;
- idle cars (``idle``, over ``--idle-trials``, each cut at a random moment of its
  telemetry period): until the gateway has let the car go (its registry);
- both again with the gateway's settings before its pings (``baseline``, same run):
  gRPC's server defaults, so a busy car is noticed when a flow-control ping goes
  unanswered for 20 s and an idle one at the 30 s telemetry timeout;
- the link cost of the pings (``link_cost``): bytes and packets through the host end of
  the veth (Ethernet frames, both ways, from the kernel's counters) while one connected
  car idles ``--idle-s``, with the pings and without; the difference, per hour, is their
  cost per car (an idle car is the worst case: data from the car defers the next ping).

Goal: p99 under 10 s. Writes ``.cache/bench/silent_loss.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # tests/integration's environment

from parkfleet.gateway import MemorySink, ModelRef  # noqa: E402
from parkfleet.protocol.limits import (  # noqa: E402
    GATEWAY_PING_INTERVAL_MS,
    GATEWAY_PING_TIMEOUT_MS,
    LOSS_DETECTION_BOUND_S,
)
from tests.integration import netns_env  # noqa: E402
from tests.integration.car_env import (  # noqa: E402
    CarEnv,
    SlowInput,
    digits,
    digits_task,
    start_env,
)

OUT = ROOT / ".cache" / "bench" / "silent_loss.json"
GOAL_S = 10.0
# Both gateways tell cars to send telemetry every 10 s and time them out after 30 s (the
# defaults). The baseline is the gateway as it was before its pings: gRPC's server
# defaults, a keepalive ping in 2 h, 20 s for any ping's answer (its flow-control pings
# included), 2 pings at most without data.
TELEMETRY_INTERVAL_S = 10.0
TELEMETRY_TIMEOUT_S = 30.0
BASELINE_OPTIONS = [
    ("grpc.keepalive_time_ms", 2 * 3600 * 1000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.max_pings_without_data", 2),
]
ITEMS = 60_000


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def quantile(values: list[float], q: float) -> float:
    return round(float(np.quantile(np.asarray(values), q)), 3) if values else float("nan")


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "trials": len(values),
        "p50_s": quantile(values, 0.5),
        "p99_s": quantile(values, 0.99),
        "min_s": round(min(values), 3) if values else None,
        "max_s": round(max(values), 3) if values else None,
        "detection_s": [round(v, 3) for v in values],
    }


async def trial(
    env: CarEnv, link: netns_env.CarLink, ref: ModelRef, x: np.ndarray, name: str
) -> float:
    """One cut of a busy car's link: seconds until the gateway's ``lost``."""
    far_id, near_id = f"far-{name}", f"near-{name}"
    far = env.spawn_agent(far_id, wrap=link.wrap())
    try:
        await env.wait_connected(1)
        sink = MemorySink()
        await env.gateway.submit(digits_task(name, ref, SlowInput(x, 0.5), ITEMS, sink))
        placed = await env.events.wait(lambda e: e.kind == "placed" and e.task_id == name)
        assert placed.car_id == far_id, placed
        near = env.start_agent(near_id)  # after placement: the task goes to the far car
        await env.events.wait(
            lambda e: e.kind == "checkpoint" and e.task_id == name and e.checkpoint > 0
        )
        await env.wait_connected(2)
        cut_at = time.monotonic()
        link.cut()
        try:
            lost = await env.events.wait(
                lambda e: e.kind == "lost" and e.task_id == name, timeout_s=120.0
            )
            detection = env.events.at(lost) - cut_at
            far.kill()
            end = await env.events.ended(name, timeout_s=120.0)
            assert end.kind == "succeeded", end
            assert sink.items() == list(range(ITEMS)), "not every item exactly once"
        finally:
            link.mend()
        near.stop()
        await env.wait_connected(0)
        return detection
    finally:
        far.kill()
        await asyncio.to_thread(far.wait)


async def idle_cut(env: CarEnv, link: netns_env.CarLink, name: str, wait_s: float) -> float:
    """One cut of an idle car's link, ``wait_s`` after it connected: seconds until the
    gateway has let it go (its registry, polled every 20 ms)."""
    far = env.spawn_agent(name, wrap=link.wrap())
    try:
        await env.wait_connected(1)
        await asyncio.sleep(wait_s)
        cut_at = time.monotonic()
        link.cut()
        try:
            await env.wait_connected(0, timeout_s=120.0)
            return time.monotonic() - cut_at
        finally:
            link.mend()
    finally:
        far.kill()
        await asyncio.to_thread(far.wait)


async def idle_traffic(env: CarEnv, link: netns_env.CarLink, idle_s: float) -> tuple[int, int]:
    """Bytes and packets through the link while one connected car idles ``idle_s``."""
    far = env.spawn_agent("idle", wrap=link.wrap())
    try:
        await env.wait_connected(1)
        await asyncio.sleep(2.0)  # past the connection's start (TLS, Hello, Welcome)
        before = link.host_counters()
        await asyncio.sleep(idle_s)
        after = link.host_counters()
        return after[0] - before[0], after[1] - before[1]
    finally:
        far.kill()
        await asyncio.to_thread(far.wait)
        await env.wait_connected(0)


async def measure(
    work: Path,
    link: netns_env.CarLink,
    trials: int,
    idle_trials: int,
    idle_s: float,
    baseline: bool,
) -> tuple[list[float], list[float], tuple[int, int]]:
    env = await start_env(
        work,
        hosts=[link.host_ip],
        listen=f"{link.host_ip}:0",
        telemetry_interval_s=TELEMETRY_INTERVAL_S,
        telemetry_timeout_s=TELEMETRY_TIMEOUT_S,
        car_wait_s=60.0,
        grpc_options=BASELINE_OPTIONS if baseline else (),
    )
    label = "baseline" if baseline else "pings"
    try:
        model = digits()
        ref = env.gateway.models.add_file(model.model_path)
        base = model.test_inputs()
        x = np.resize(base, (ITEMS, base.shape[1]))
        detections: list[float] = []
        for i in range(trials):
            d = await trial(env, link, ref, x, f"{label}-{i}")
            detections.append(d)
            log(f"{label} trial {i + 1}/{trials}: noticed {d:.2f} s after the cut")
        # Cut at a random moment of the car's telemetry period (the same ones both runs).
        phases = random.Random(7)
        idle_detections: list[float] = []
        for i in range(idle_trials):
            wait_s = 2.0 + phases.uniform(0.0, TELEMETRY_INTERVAL_S)
            d = await idle_cut(env, link, f"idle-{label}-{i}", wait_s)
            idle_detections.append(d)
            log(f"{label} idle trial {i + 1}/{idle_trials}: let go {d:.2f} s after the cut")
        log(f"{label}: one car idle for {idle_s:g} s")
        idle = await idle_traffic(env, link, idle_s)
        log(f"{label}: {idle[0]} bytes, {idle[1]} packets through the link")
        return detections, idle_detections, idle
    finally:
        await env.close()


async def run(args: argparse.Namespace, work: Path) -> None:
    with netns_env.car_link("bench") as link:
        pings, idle_cuts, idle_pings = await measure(
            work / "pings", link, args.trials, args.idle_trials, args.idle_s, False
        )
        old, old_idle_cuts, idle_old = await measure(
            work / "baseline", link, args.baseline_trials, args.baseline_idle_trials,
            args.idle_s, True,
        )  # fmt: skip
    report(args, (pings, idle_cuts, idle_pings), (old, old_idle_cuts, idle_old))


Measured = tuple[list[float], list[float], tuple[int, int]]


def report(args: argparse.Namespace, with_pings: Measured, before: Measured) -> None:
    pings, idle_cuts, idle_pings = with_pings
    old, old_idle_cuts, idle_old = before
    hour = 3600.0 / args.idle_s
    new = summary(pings)
    out: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.node()}",
        "settings": {
            "gateway_ping_interval_ms": GATEWAY_PING_INTERVAL_MS,
            "gateway_ping_timeout_ms": GATEWAY_PING_TIMEOUT_MS,
            "bound_s": LOSS_DETECTION_BOUND_S,
            "telemetry_interval_s": TELEMETRY_INTERVAL_S,
            "telemetry_timeout_s": TELEMETRY_TIMEOUT_S,
        },
        **new,
        "goal_s": GOAL_S,
        "idle": summary(idle_cuts),
        "baseline": {
            "settings": "gRPC's server defaults: keepalive 2 h, 20 s timeout (as before)",
            **summary(old),
            "idle": summary(old_idle_cuts),
        },
        "link_cost": {
            "method": (
                "measured: bytes through the host end of the veth (Ethernet frames, both "
                "ways, kernel counters) while one connected car idles, with the gateway's "
                "pings and without (the baseline gateway); the difference scaled to an hour"
            ),
            "idle_s": args.idle_s,
            "bytes_per_car_per_hour": round((idle_pings[0] - idle_old[0]) * hour),
            "packets_per_car_per_hour": round((idle_pings[1] - idle_old[1]) * hour),
            "with_pings_bytes_per_hour": round(idle_pings[0] * hour),
            "baseline_bytes_per_hour": round(idle_old[0] * hour),
            "with_pings_packets_per_hour": round(idle_pings[1] * hour),
            "baseline_packets_per_hour": round(idle_old[1] * hour),
        },
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=2) + "\n")
    base = out["baseline"]
    c = out["link_cost"]
    print()
    print(f"{'cut -> gateway lost event':44}{'trials':>8}{'p50 s':>9}{'p99 s':>9}{'max s':>9}")
    pinged = (
        f"pings every {GATEWAY_PING_INTERVAL_MS / 1000:g} s, "
        f"{GATEWAY_PING_TIMEOUT_MS / 1000:g} s timeout"
    )
    for label, s in (
        (f"busy car, {pinged}", new),
        ("busy car, baseline (the old settings)", base),
        (f"idle car, {pinged}", out["idle"]),
        ("idle car, baseline (the old settings)", base["idle"]),
    ):
        print(f"{label:44}{s['trials']:>8}{s['p50_s']:>9.2f}{s['p99_s']:>9.2f}{s['max_s']:>9.2f}")
    print()
    print(f"{'idle car, bytes per hour on its link':44}{'bytes/h':>12}")
    print(f"{'  with the gateway pings':44}{c['with_pings_bytes_per_hour']:>12,}")
    print(f"{'  baseline (telemetry, car pings)':44}{c['baseline_bytes_per_hour']:>12,}")
    print(f"{'  cost of the pings, per car':44}{c['bytes_per_car_per_hour']:>12,}")
    print(
        f"{c['packets_per_car_per_hour']:,} packets an hour more "
        f"({c['bytes_per_car_per_hour'] / max(1, c['packets_per_car_per_hour']):.0f} bytes "
        f"each); goal p99 < {GOAL_S:g} s"
    )
    print(f"wrote {OUT}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    env = os.environ.get
    p.add_argument("--trials", type=int, default=int(env("SILENT_LOSS_TRIALS", "20")))
    p.add_argument(
        "--baseline-trials", type=int, default=int(env("SILENT_LOSS_BASELINE_TRIALS", "5"))
    )
    p.add_argument("--idle-trials", type=int, default=int(env("SILENT_LOSS_IDLE_TRIALS", "5")))
    p.add_argument(
        "--baseline-idle-trials",
        type=int,
        default=int(env("SILENT_LOSS_BASELINE_IDLE_TRIALS", "3")),
    )
    p.add_argument(
        "--idle-s",
        type=float,
        default=float(env("SILENT_LOSS_IDLE_S", "60")),
        help="idle window of the byte count, each gateway",
    )
    args = p.parse_args()
    reason = netns_env.unavailable()
    if reason is not None:
        print(f"bench-silent-loss {reason}", file=sys.stderr)
        return 2
    # A SIGTERM unwinds like ^C: the namespace and the agents go.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="parkfleet-bench-silent-loss-") as work:
        asyncio.run(run(args, Path(work)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

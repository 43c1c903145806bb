"""A car that vanishes without a word: a real ``parkfleet agent`` process in a network
namespace of its own, its link to the gateway cut mid-task so that nothing more reaches
the gateway (no FIN, no reset: every packet dropped, as out of Wi-Fi range). The gateway
notices within 10 s by its own clock (its pings: ``protocol/limits.py``), well before its
30 s telemetry timeout, and the task resumes on another car from its checkpoint, every
item exactly once.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from parkfleet.gateway import MemorySink
from parkfleet.gateway.server import REASON_LINK_CLOSED
from parkfleet.protocol.limits import GATEWAY_PING_TIMEOUT_MS, LOSS_DETECTION_BOUND_S
from tests.integration import netns_env
from tests.integration.car_env import CELL, SlowInput, digits, digits_task, start_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

GOAL_S = 10.0


async def test_car_cut_off_silently_is_noticed_within_10_s_and_its_task_moves(
    tmp_path: Path,
) -> None:
    reason = netns_env.unavailable()
    if reason is not None:
        pytest.skip(reason)
    model = digits()
    base = model.test_inputs()
    items = 60_000
    x = np.resize(base, (items, base.shape[1]))
    with netns_env.car_link("silent") as link:
        # The telemetry timeout stays at its 30 s: only the pings can notice in time.
        env = await start_env(
            tmp_path, hosts=[link.host_ip], listen=f"{link.host_ip}:0", car_wait_s=30.0
        )
        try:
            ref = env.gateway.models.add_file(model.model_path)
            far = env.spawn_agent("car-far", wrap=link.wrap())
            await env.wait_eligible(1)
            sink = MemorySink()
            # Each read of ~12k items takes 1 s: the task lasts several seconds.
            await env.gateway.submit(digits_task("far", ref, SlowInput(x, 1.0), items, sink))
            placed = await env.events.wait(lambda e: e.kind == "placed")
            assert placed.car_id == "car-far"
            env.start_agent("car-near")  # after placement: the task goes to the far car
            checkpoint = await env.events.wait(
                lambda e: e.kind == "checkpoint" and e.car_id == "car-far" and e.checkpoint > 0
            )
            await env.wait_connected(2)

            cut_at = time.monotonic()
            link.cut()
            lost = await env.events.wait(lambda e: e.kind == "lost", timeout_s=40.0)
            noticed_s = env.events.at(lost) - cut_at
            print(f"the gateway noticed the cut after {noticed_s:.2f} s")  # shown with -rP
            assert lost.from_car == "car-far"
            assert lost.reason == REASON_LINK_CLOSED, lost
            assert noticed_s < GOAL_S, f"noticed {noticed_s:.2f} s after the cut"
            assert noticed_s <= LOSS_DETECTION_BOUND_S + 1.0
            # Not sooner than an unanswered ping allows: nothing (no reset) told the gateway.
            assert noticed_s >= GATEWAY_PING_TIMEOUT_MS / 1000 - 0.5
            assert env.gateway.capacity(CELL).cars_connected == 1
            assert checkpoint.checkpoint <= lost.checkpoint < items
            far.kill()

            end = await env.events.ended("far")
            assert end.kind == "succeeded", end
            moved = env.events.of("moved", "far")
            # The next attempt, from the checkpoint the lost car had reached.
            assert [(m.from_car, m.car_id, m.attempt) for m in moved] == [
                ("car-far", "car-near", placed.attempt + 1)
            ]
            assert moved[0].checkpoint == lost.checkpoint
            status = env.gateway.task("far")
            assert status is not None
            assert status.cars == ("car-far", "car-near")
            # Every item exactly once, in order, and right.
            assert sink.items() == list(range(items))
            import onnxruntime as ort

            local = ort.InferenceSession(str(model.model_path), providers=["CPUExecutionProvider"])
            (label,) = local.run(["label"], {"input": x})
            np.testing.assert_array_equal(sink.output("label"), label)
        finally:
            await env.close()

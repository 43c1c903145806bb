"""A model whose bytes do not match its sha256: the task fails with ModelHashMismatch and
the model is never loaded or run.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from parkfleet.gateway import ArrayInput, MemorySink, ModelRef
from parkfleet.vehicle import ModelSession, OrtCompute
from tests.integration.car_env import CarEnv, digits, digits_task, start_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class CountingCompute:
    """The real ONNX Runtime compute, counting the models it is asked to load."""

    def __init__(self) -> None:
        self.inner = OrtCompute()
        self.loaded: list[str] = []

    async def session(self, sha256: str, model: bytes) -> ModelSession:
        self.loaded.append(sha256)
        return await self.inner.session(sha256, model)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[CarEnv]:
    e = await start_env(tmp_path, car_wait_s=5.0)
    yield e
    await e.close()


async def test_hash_mismatch_fails_and_never_runs(env: CarEnv) -> None:
    model = digits()
    good = model.model_path.read_bytes()
    tampered = good.replace(b"label", b"lab3l")  # still a plausible model file
    assert tampered != good
    claimed = hashlib.sha256(good).hexdigest()
    # The store serves whatever the file holds; the car must catch it.
    (env.gateway.models.directory / claimed).write_bytes(tampered)
    ref = ModelRef(sha256=claimed, size_bytes=len(tampered))

    compute = CountingCompute()
    env.start_agent("car-1", compute=compute)
    await env.wait_eligible(1)
    x = model.test_inputs()[:50]
    sink = MemorySink()
    await env.gateway.submit(digits_task("bad", ref, ArrayInput(x), len(x), sink))

    # The car's word is a fact about its own attempt: the task moves on (never back to
    # that car), and with no other car it fails as any task no car takes.
    lost = await env.events.wait(lambda e: e.task_id == "bad" and e.kind == "lost")
    assert lost.reason == "ModelHashMismatch"
    assert claimed in lost.message
    end = await env.events.ended("bad")
    assert end.kind == "failed"
    assert end.reason == "NoEligibleCar"
    assert "ModelHashMismatch" in end.message
    assert compute.loaded == []  # never loaded, so never run
    assert sink.chunks == []
    assert not sink.completed.is_set()

"""A real agent runs a real task through the real gateway; outputs match local ONNX Runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from parkfleet.energymodel import CarPower
from parkfleet.gateway import ArrayInput, MemorySink
from parkfleet.policy import Policy
from parkfleet.vehicle import (
    Agent,
    AgentConfig,
    Credentials,
    LinkRefused,
    ModelSession,
    MutableSensors,
    OrtCompute,
)
from parkfleet.vehicle.link import capabilities
from tests.integration.car_env import CarEnv, digits, digits_task, start_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[CarEnv]:
    e = await start_env(tmp_path, car_wait_s=30.0)
    yield e
    await e.close()


async def test_outputs_equal_local_onnxruntime(env: CarEnv) -> None:
    model = digits()
    ref = env.gateway.models.add_file(model.model_path)
    x = model.test_inputs()
    agent = env.start_agent("car-1")
    await env.wait_eligible(1)

    sink = MemorySink()
    await env.gateway.submit(digits_task("digits", ref, ArrayInput(x), len(x), sink))
    end = await env.events.ended("digits")
    assert end.kind == "succeeded", end

    local = ort.InferenceSession(str(model.model_path), providers=["CPUExecutionProvider"])
    label, probs = local.run(["label", "probabilities"], {"input": x})
    assert sink.items() == list(range(len(x)))
    np.testing.assert_array_equal(sink.output("label"), label)
    np.testing.assert_array_equal(sink.output("probabilities").argmax(axis=1), probs.argmax(1))
    np.testing.assert_allclose(sink.output("probabilities"), probs, rtol=1e-5, atol=1e-6)
    assert (sink.output("label") == model.test_labels()).mean() > 0.9

    status = env.gateway.task("digits")
    assert status is not None
    assert status.cars == ("car-1",)
    assert status.energy_modelled  # no power sensor on this car: modelled and marked so
    assert env.events.of("log", "digits")  # the car's log lines reached the gateway
    assert agent.models.fetches == 1

    # A second task with the same model is served from the car's cache.
    sink2 = MemorySink()
    await env.gateway.submit(digits_task("again", ref, ArrayInput(x[:10]), 10, sink2))
    assert (await env.events.ended("again")).kind == "succeeded"
    assert agent.models.fetches == 1
    np.testing.assert_array_equal(sink2.output("label"), label[:10])


async def test_agent_claiming_another_id_is_refused_for_good(env: CarEnv) -> None:
    pair = env.pair("car-1")
    agent = Agent(
        AgentConfig(
            address=env.gateway.address,
            credentials=Credentials(env.ca.cert_pem, pair.cert_pem, pair.key_pem),
            car_id="car-2",  # not what the certificate says
            policy=Policy(),
            capabilities=capabilities("test-gpu", 8192, CarPower(), ["CPUExecutionProvider"]),
            max_reconnects=2,
            backoff_base_s=0.01,
        ),
        MutableSensors(),
        OrtCompute(),
    )
    with pytest.raises(LinkRefused) as refused:
        await agent.run()
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "car-1" in refused.value.details


class _BuggyCompute:
    """Fails as no runtime does (a KeyError): a bug in the agent's own code."""

    async def session(self, sha256: str, model: bytes) -> ModelSession:
        raise KeyError("a bug")


async def test_a_bug_in_the_agent_gives_the_task_back_and_is_logged_in_full(
    env: CarEnv, caplog: pytest.LogCaptureFixture
) -> None:
    model = digits()
    ref = env.gateway.models.add_file(model.model_path)
    env.start_agent("car-buggy", compute=_BuggyCompute())
    await env.wait_eligible(1)
    x = model.test_inputs()[:10]
    await env.gateway.submit(digits_task("bug", ref, ArrayInput(x), len(x), MemorySink()))
    # Not ModelLoadFailed (the user's fault, for good): retriable, so another car may take it.
    lost = await env.events.wait(lambda e: e.task_id == "bug" and e.kind == "lost")
    assert (lost.reason, lost.message) == ("AgentError", "KeyError: 'a bug'")
    logged = [r for r in caplog.records if "the agent failed" in r.getMessage()]
    assert logged
    assert logged[0].exc_info
    assert logged[0].exc_info[0] is KeyError  # with its traceback

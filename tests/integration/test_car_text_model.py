"""A text model of three int64 inputs through the real gateway and a real agent.

The pooled all-MiniLM-L6-v2 (``make model-minilm``) embeds tokenised texts on the car; the
embeddings match local ONNX Runtime plus numpy pooling (cosine >= 0.9999 for every item).
The encoder without pooling sends ``last_hidden_state``, padded per batch, which pools
to the same.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from parkfleet.gateway import MemorySink
from tests.integration.car_env import CarEnv, digits_task, start_env
from tests.minilm import TextInput, TextTokens, cosines, minilm, reference_embeddings, texts

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[CarEnv]:
    e = await start_env(tmp_path, car_wait_s=60.0)
    yield e
    await e.close()


async def run_texts(
    env: CarEnv, task_id: str, model_path: Path, batch: list[str], outputs: tuple[str, ...]
) -> MemorySink:
    ref = env.gateway.models.add_file(model_path)
    info = await env.gateway.resolve_model(sha256=ref.sha256)
    assert [i.name for i in info.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert {(i.dtype, i.item_shape) for i in info.inputs} == {("int64", (None,))}
    sink = MemorySink()
    spec = digits_task(
        task_id,
        info.ref,
        TextInput(batch, TextTokens(minilm().tokenizer_path)),
        len(batch),
        sink,
        input_name=info.input_name,
        input_specs=info.inputs,
        output_names=outputs,
        output_specs=tuple(o for o in info.outputs if o.name in outputs),
        batch_size=16,
    )
    await env.gateway.submit(spec)
    end = await env.events.ended(task_id, timeout_s=240)
    assert end.kind == "succeeded", end
    assert sink.items() == list(range(len(batch)))
    return sink


async def test_pooled_minilm_on_a_car_matches_local_onnxruntime(env: CarEnv) -> None:
    model = minilm()
    env.start_agent("car-1")
    await env.wait_eligible(1)
    batch = texts(300, seed=7)
    sink = await run_texts(env, "embed", model.pooled_path, batch, ("embedding",))
    got = sink.output("embedding")
    assert got.shape == (300, 384)
    assert got.dtype == np.float32
    want = reference_embeddings(model.model_path, TextTokens(model.tokenizer_path), batch)
    assert cosines(got, want).min() >= 0.9999


async def test_unpooled_outputs_come_back_padded_per_batch(env: CarEnv) -> None:
    model = minilm()
    env.start_agent("car-1")
    await env.wait_eligible(1)
    batch = texts(40, seed=3)
    sink = await run_texts(env, "hidden", model.model_path, batch, ("last_hidden_state",))
    tokens = TextTokens(model.tokenizer_path)
    pooled = []
    for first, outputs in sink.chunks:
        hidden = outputs["last_hidden_state"]
        mask = tokens.encode(batch[first : first + len(hidden)])["attention_mask"]
        assert hidden.shape[1] >= mask.shape[1]  # padded to the longest of its batch, or more
        m = np.zeros(hidden.shape[:2], np.float32)
        m[:, : mask.shape[1]] = mask
        mean = (hidden * m[..., None]).sum(axis=1) / m.sum(axis=1, keepdims=True)
        pooled.append(mean / np.linalg.norm(mean, axis=1, keepdims=True))
    want = reference_embeddings(model.model_path, tokens, batch)
    assert cosines(np.concatenate(pooled), want).min() >= 0.9999

"""Tasks of several named integer inputs of variable length: checked, padded per batch.

A real tiny model (ONNX Runtime): ``masked_sum = sum(ids * mask)`` and ``length =
sum(mask)`` per item, so zeros padded on the car change no result.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from parkfleet.energymodel import CarPower
from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol import limits
from parkfleet.protocol.chunks import InputData, decode_gateway_message, encode_input
from parkfleet.protocol.padding import pad_concat
from parkfleet.vehicle.compute import ModelSession, OrtCompute
from parkfleet.vehicle.energy import EnergyMeter
from parkfleet.vehicle.runner import TaskRunner

pytestmark = pytest.mark.timeout(30)

NAMES = ["ids", "mask"]
OUTPUTS = ["masked_sum", "length"]


def masked_sum_model() -> bytes:
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])
    mask = helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "seq"])
    out = helper.make_tensor_value_info("masked_sum", TensorProto.INT64, ["batch", 1])
    length = helper.make_tensor_value_info("length", TensorProto.INT64, ["batch", 1])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["ids", "mask"], ["kept"]),
            helper.make_node("ReduceSum", ["kept", "axes"], ["masked_sum"], keepdims=1),
            helper.make_node("ReduceSum", ["mask", "axes"], ["length"], keepdims=1),
        ],
        "masked_sum",
        [ids, mask],
        [out, length],
        [axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


class Recording:
    """The real session, recording the inputs' shapes of every slice handed to it."""

    def __init__(self, inner: ModelSession) -> None:
        self.inner = inner
        self.providers = inner.providers
        self.output_names = inner.output_names
        self.input_types = inner.input_types
        self.shapes: list[dict[str, tuple[int, ...]]] = []

    async def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], batch_size: int
    ) -> list[np.ndarray]:
        self.shapes.append({k: v.shape for k, v in inputs.items()})
        return await self.inner.infer(inputs, output_names, batch_size)


@pytest.fixture
async def session() -> AsyncIterator[Recording]:
    compute = OrtCompute(intra_op_threads=1)
    model = masked_sum_model()
    s = await compute.session(hashlib.sha256(model).hexdigest(), model)
    yield Recording(s)
    compute.close()


def offer(items: int, batch_size: int, names: Sequence[str] = NAMES) -> pb.TaskOffer:
    return pb.TaskOffer(
        task_id="t1",
        attempt=1,
        runtime="onnxruntime",
        input_name=names[0],
        input_names=list(names),
        output_names=OUTPUTS,
        batch_size=batch_size,
        item_start=0,
        item_end=items,
        resume_from=0,
        checkpoint_interval_s=60.0,
    )


def texts(lengths: Sequence[int], seed: int = 0) -> list[np.ndarray]:
    """Token ids of items of these lengths (never 0, which is padding)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 30000, size=n, dtype=np.int64) for n in lengths]


def padded_chunk(items: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """What a source gives for a run of items: padded to its longest item."""
    longest = max(len(t) for t in items)
    ids = np.zeros((len(items), longest), np.int64)
    mask = np.zeros((len(items), longest), np.int64)
    for i, t in enumerate(items):
        ids[i, : len(t)] = t
        mask[i, : len(t)] = 1
    return {"ids": ids, "mask": mask}


def wire_chunks(items: Sequence[np.ndarray], per_chunk: int) -> list[InputData]:
    out = []
    for start in range(0, len(items), per_chunk):
        part = padded_chunk(items[start : start + per_chunk])
        last = start + per_chunk >= len(items)
        wire = encode_input("t1", 1, start, last, "ids", part["ids"], [("mask", part["mask"])])
        decoded = decode_gateway_message(wire)
        assert isinstance(decoded, InputData)
        out.append(decoded)
    return out


def collected(sent: list[pb.CarMessage | bytes]) -> tuple[dict[str, np.ndarray], pb.CarMessage]:
    messages = [pb.CarMessage.FromString(m) if isinstance(m, bytes) else m for m in sent]
    outs: dict[str, list[np.ndarray]] = {name: [] for name in OUTPUTS}
    for m in messages:
        if m.WhichOneof("body") == "result":
            for t in m.result.outputs:
                outs[t.name].append(limits.tensor_from_proto(t))
    return {k: np.concatenate(v) if v else np.empty(0) for k, v in outs.items()}, messages[-1]


async def run(
    session: Recording, runner: TaskRunner, chunks: Sequence[InputData | pb.InputChunk]
) -> tuple[dict[str, np.ndarray], pb.CarMessage]:
    for c in chunks:
        await runner.feed(c)
    await runner.run(session, OUTPUTS)  # type: ignore[arg-type]
    return collected(sent_by[id(runner)])


sent_by: dict[int, list[pb.CarMessage | bytes]] = {}


def runner_for(o: pb.TaskOffer) -> TaskRunner:
    sent: list[pb.CarMessage | bytes] = []

    async def send(m: pb.CarMessage | bytes) -> None:
        sent.append(m)

    r = TaskRunner(o, send, EnergyMeter(CarPower(10.0)))
    sent_by[id(r)] = sent
    return r


async def test_chunks_of_one_batch_each_run_with_their_own_padding(session: Recording) -> None:
    lengths = [3, 9, 2, 5, 5, 1, 12, 4, 7, 6]
    items = texts(lengths)
    outs, last = await run(session, runner_for(offer(10, 3)), wire_chunks(items, 3))
    assert last.WhichOneof("body") == "done", last
    np.testing.assert_array_equal(outs["masked_sum"][:, 0], [t.sum() for t in items])
    np.testing.assert_array_equal(outs["length"][:, 0], lengths)
    # Each chunk is one model call, padded to its own longest item, never to another's.
    assert [s["ids"] for s in session.shapes] == [(3, 9), (3, 5), (3, 12), (1, 6)]
    assert all(s["mask"] == s["ids"] for s in session.shapes)


async def test_small_chunks_merged_into_one_call_are_padded_to_the_longest(
    session: Recording,
) -> None:
    lengths = [3, 2, 8, 1, 4, 4, 2, 6]
    items = texts(lengths, seed=1)
    # Chunks of 2 items, batch 4: two chunks make one model call, padded to the longer.
    outs, last = await run(session, runner_for(offer(8, 4)), wire_chunks(items, 2))
    assert last.WhichOneof("body") == "done", last
    np.testing.assert_array_equal(outs["masked_sum"][:, 0], [t.sum() for t in items])
    np.testing.assert_array_equal(outs["length"][:, 0], lengths)
    assert [s["ids"] for s in session.shapes] == [(4, 8), (4, 6)]


async def test_chunks_of_one_length_merge_as_before(session: Recording) -> None:
    items = texts([5] * 12, seed=2)
    outs, _ = await run(session, runner_for(offer(12, 2)), wire_chunks(items, 2))
    np.testing.assert_array_equal(outs["masked_sum"][:, 0], [t.sum() for t in items])
    assert [s["ids"] for s in session.shapes] == [(12, 5)]  # one slice: no padding needed


def chunk(first: int, last: bool, *tensors: tuple[str, np.ndarray]) -> pb.InputChunk:
    (name, array), *more = tensors
    return pb.InputChunk(
        task_id="t1",
        attempt=1,
        first_item=first,
        tensor=limits.tensor_to_proto(name, array),
        more=[limits.tensor_to_proto(n, a) for n, a in more],
        last=last,
    )


IDS = np.ones((2, 3), np.int64)


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ((("ids", IDS),), "input chunk carries 1 input(s), the offer's are 'ids', 'mask'"),
        ((("ids", IDS), ("maks", IDS)), "input chunk names tensor 'maks', the offer's inputs"),
        ((("ids", IDS), ("ids", IDS)), "input chunk names tensor 'ids' twice"),
        ((("ids", IDS), ("mask", IDS.astype(np.int32))), "input 'mask' is int32; the model"),
        ((("ids", IDS), ("mask", IDS[:1])), "disagree on the number of items: {'ids': 2, 'mask'"),
    ],
)
async def test_a_chunk_not_as_the_offer_and_the_model_say_fails_the_task_for_good(
    session: Recording, tensors: tuple[tuple[str, np.ndarray], ...], message: str
) -> None:
    runner = runner_for(offer(2, 2))
    _, last = await run(session, runner, [chunk(0, True, *tensors)])
    assert last.WhichOneof("body") == "failed"
    assert last.failed.reason == "InvalidInput"
    assert not last.failed.retriable
    assert message in last.failed.message
    assert not session.shapes  # nothing reached the model


async def test_inputs_may_come_in_any_order_and_are_fed_by_name(session: Recording) -> None:
    ids = np.array([[1, 2, 0], [4, 0, 0]], np.int64)
    mask = (ids != 0).astype(np.int64)
    outs, last = await run(
        session, runner_for(offer(2, 2)), [chunk(0, True, ("mask", mask), ("ids", ids))]
    )
    assert last.WhichOneof("body") == "done", last
    np.testing.assert_array_equal(outs["masked_sum"][:, 0], [3, 4])


def test_pad_concat_pads_every_dimension_past_the_first_with_zeros() -> None:
    a = np.ones((2, 3, 1), np.int64)
    b = np.full((1, 1, 2), 7, np.int64)
    got = pad_concat([a, b])
    assert got.shape == (3, 3, 2)
    np.testing.assert_array_equal(got[:2, :3, :1], a)
    np.testing.assert_array_equal(got[2, 0], [7, 7])
    assert got[:2, :, 1].sum() == 0
    assert got[2, 1:].sum() == 0
    same = [np.ones((2, 4)), np.ones((3, 4))]
    assert pad_concat(same).shape == (5, 4)
    assert pad_concat(same[:1]) is same[0]
    with pytest.raises(ValueError, match="one dtype"):
        pad_concat([np.ones((1, 2), np.int64), np.ones((1, 3), np.int32)])

"""The gateway's side of a task's inputs: named inputs checked, chunks sized per batch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from parkfleet.gateway import ArrayInput, MemorySink, ModelRef, TaskSpec, TensorSpec
from parkfleet.gateway.offers import InputError, read_items, stream_inputs
from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol.chunks import InputData, decode_gateway_message
from parkfleet.protocol.limits import MAX_TENSOR_BYTES, tensor_from_proto

TEXT = (
    TensorSpec("input_ids", "int64", (None,)),
    TensorSpec("attention_mask", "int64", (None,)),
)


def spec(inputs: Any, items: int, specs: tuple[TensorSpec, ...] = TEXT, batch: int = 4) -> TaskSpec:
    return TaskSpec(
        task_id="t",
        cell="c-0",
        runtime="onnxruntime",
        model=ModelRef("0" * 64),
        input_name=specs[0].name if specs else "input",
        output_names=("embedding",),
        batch_size=batch,
        item_start=0,
        item_end=items,
        inputs=inputs,
        sink=MemorySink(),
        input_specs=specs,
    )


IDS = np.arange(30, dtype=np.int64).reshape(10, 3)


async def test_named_inputs_come_in_the_models_order_and_only_those() -> None:
    source = ArrayInput({"attention_mask": np.ones_like(IDS), "input_ids": IDS, "x": IDS})
    got = await read_items(spec(source, 10), 2, 5)
    assert list(got) == ["input_ids", "attention_mask"]
    np.testing.assert_array_equal(got["input_ids"], IDS[2:5])


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (IDS, "input source returned one array; the model takes inputs input_ids, attention_mask"),
        ({"input_ids": IDS}, "input source gave no input 'attention_mask'"),
        ({"input_ids": IDS, "attention_mask": IDS[:4]}, "input 'attention_mask': the source"),
        ({"input_ids": IDS, "attention_mask": IDS.astype(np.int32)}, "is int32; the model takes"),
        ({"input_ids": IDS, "attention_mask": [1, 2]}, "input 'attention_mask': the source re"),
        ("text", "returned str, not an array or named arrays"),
    ],
)
async def test_a_source_not_giving_the_models_inputs_is_an_input_error(
    items: Any, message: str
) -> None:
    class Source:
        def read(self, start: int, end: int) -> Any:
            return items if isinstance(items, str) else ArrayInput(items).read(start, end)

    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        await read_items(spec(Source(), 10), 0, 5)


async def test_one_input_models_take_an_array_as_before() -> None:
    one = (TensorSpec("input", "float32", (64,)),)
    x = np.ones((6, 64), np.float32)
    got = await read_items(spec(ArrayInput(x), 6, one), 0, 6)
    assert list(got) == ["input"]
    with pytest.raises(InputError, match="is float64; the model takes float32"):
        await read_items(spec(ArrayInput(x.astype(np.float64)), 6, one), 0, 6)


class Car:
    """Collects what the gateway sends (the car's side of the stream, decoded)."""

    def __init__(self) -> None:
        self.sent: list[pb.GatewayMessage | InputData] = []

    async def send(self, message: pb.GatewayMessage | bytes) -> None:
        raw = message if isinstance(message, bytes) else message.SerializeToString()
        self.sent.append(decode_gateway_message(raw))


async def test_inputs_of_variable_length_go_one_batch_per_chunk_with_every_input() -> None:
    car = Car()
    source = ArrayInput({"input_ids": IDS, "attention_mask": np.ones_like(IDS)})
    await stream_inputs(car, spec(source, 10), 1, 0, lambda: True)  # type: ignore[arg-type]
    offer, *chunks = car.sent
    assert isinstance(offer, pb.GatewayMessage)
    assert list(offer.offer.input_names) == ["input_ids", "attention_mask"]
    assert offer.offer.input_name == "input_ids"
    assert all(isinstance(c, InputData) for c in chunks)
    sizes = [(c.first_item, c.tensor.dims[0], c.last) for c in chunks]  # type: ignore[union-attr]
    assert sizes == [(0, 4, False), (4, 4, False), (8, 2, True)]
    for c in chunks:
        assert isinstance(c, InputData)
        assert [t.name for t in (c.tensor, *c.more)] == ["input_ids", "attention_mask"]
        np.testing.assert_array_equal(
            tensor_from_proto(c.tensor), IDS[c.first_item : c.first_item + c.tensor.dims[0]]
        )


async def test_fixed_size_inputs_still_go_in_chunks_as_large_as_the_bound_allows() -> None:
    one = (TensorSpec("input", "float32", (64,)),)
    x = np.ones((20_000, 64), np.float32)
    car = Car()
    await stream_inputs(car, spec(ArrayInput(x), len(x), one, batch=16), 1, 0, lambda: True)  # type: ignore[arg-type]
    offer, *chunks = car.sent
    assert isinstance(offer, pb.GatewayMessage)
    assert list(offer.offer.input_names) == []  # one input: the offer older agents read
    counts = [c.tensor.dims[0] for c in chunks]  # type: ignore[union-attr]
    assert counts[0] == 16  # the first read is one batch, then sized to the bound
    assert counts[1] * 64 * 4 <= MAX_TENSOR_BYTES
    assert counts[1] % 16 == 0
    assert counts[1] > 1000
    assert sum(counts) == len(x)


async def test_a_read_larger_than_the_bound_is_split_into_chunks_that_fit() -> None:
    big = (TensorSpec("a", "float32", (None,)), TensorSpec("b", "float32", (None,)))
    n = 4
    per = MAX_TENSOR_BYTES // 4 // 3  # one item of both is two thirds of the bound
    source = ArrayInput({"a": np.ones((n, per), np.float32), "b": np.ones((n, per), np.float32)})
    car = Car()
    await stream_inputs(car, spec(source, n, big, batch=n), 1, 0, lambda: True)  # type: ignore[arg-type]
    chunks = car.sent[1:]
    assert [c.first_item for c in chunks] == [0, 1, 2, 3]  # type: ignore[union-attr]
    assert [c.last for c in chunks] == [False, False, False, True]  # type: ignore[union-attr]

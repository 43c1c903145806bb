"""Masked mean pooling and L2 normalisation appended to a text encoder's ONNX graph.

A sentence encoder (all-MiniLM-L6-v2 and its kin) gives ``last_hidden_state`` [batch,
sequence, hidden]: for an 11-token sentence 16.9 KB of float32 back over the car's link,
often cellular. Pooled in the graph, the car returns the embedding itself, [batch, hidden]
(1.5 KB for 384 floats): the mean of the token vectors whose ``attention_mask`` is 1 (so
that padding changes nothing), divided by its L2 norm — what sentence-transformers does
after the encoder. The new graph's only output is the embedding.

Needs the ``onnx`` package (a test extra; the operator's image does not carry it):
``parkfleet model pool`` says so when it is missing.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

__all__ = ["EMBEDDING", "append_mean_pooling", "pool_file", "register"]

EMBEDDING = "embedding"
# sentence-transformers clamps the token count at 1e-9 and torch's normalize the norm at 1e-12.
_MIN_COUNT = 1e-9
_MIN_NORM = 1e-12
# Opset 13 moved ReduceSum's and Unsqueeze's axes from an attribute to an input.
_AXES_AS_INPUT = 13


def _opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    raise ValueError("the model imports no version of the default ONNX operator set")


def _rank3_float_output(graph: onnx.GraphProto, name: str | None) -> onnx.ValueInfoProto:
    import onnx

    outputs = {o.name: o for o in graph.output}
    if name is not None:
        if name not in outputs:
            raise ValueError(f"the model has no output {name!r} (it has {', '.join(outputs)})")
        chosen = [outputs[name]]
    else:
        chosen = [o for o in graph.output if len(o.type.tensor_type.shape.dim) == 3]
        if len(chosen) != 1:
            raise ValueError(
                "name the [batch, sequence, hidden] output to pool (--hidden): the model's "
                f"outputs are {', '.join(outputs)}"
            )
    out = chosen[0]
    tensor = out.type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT or len(tensor.shape.dim) != 3:
        raise ValueError(f"output {out.name!r} is not a float32 [batch, sequence, hidden] tensor")
    return out


def _fresh(base: str, taken: set[str]) -> str:
    name, n = base, 0
    while name in taken:
        n += 1
        name = f"{base}{n}"
    return name


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Renames a value of the graph everywhere it appears (nodes, initializers, infos)."""
    for node in graph.node:
        node.input[:] = [new if v == old else v for v in node.input]
        node.output[:] = [new if v == old else v for v in node.output]
    for infos in (graph.initializer, graph.value_info, graph.output):
        for info in infos:
            if info.name == old:
                info.name = new


def append_mean_pooling(
    model: onnx.ModelProto,
    hidden: str | None = None,
    mask: str = "attention_mask",
    output: str = EMBEDDING,
) -> onnx.ModelProto:
    """A copy of ``model`` whose only output is the masked mean of ``hidden``, L2-normalised.

    Args:
        model: An encoder with a float32 [batch, sequence, hidden] output and a
            [batch, sequence] mask input (1 = a token, 0 = padding).
        hidden: The output to pool; None: the model's only rank-3 output.
        mask: The mask input's name.
        output: The new output's name: float32 [batch, hidden].

    Raises:
        ValueError: The model lacks such an output or input, or ``output`` is taken.
    """
    import onnx
    from onnx import TensorProto, helper

    pooled = onnx.ModelProto()
    pooled.CopyFrom(model)
    graph = pooled.graph
    if mask not in {i.name for i in graph.input}:
        raise ValueError(f"the model has no input {mask!r} to weigh the tokens with")
    taken = {v for node in graph.node for v in (*node.input, *node.output)}
    taken |= {i.name for i in graph.input} | {i.name for i in graph.initializer}
    if output in {i.name for i in graph.input}:
        raise ValueError(f"the model has an input named {output!r}: name the output otherwise")
    if output in taken:
        # An inner value of that name (an exporter's "embedding" lookup): renamed, so that
        # the new output can have the name asked for.
        fresh = _fresh(f"{output}_inner", taken)
        _rename(graph, output, fresh)
        taken |= {fresh}
        if hidden == output:
            hidden = fresh
    source = _rank3_float_output(graph, hidden)
    opset = _opset(pooled)

    def name(part: str) -> str:
        full = f"{output}/{part}"
        if full in taken:
            raise ValueError(f"the model already has a value named {full!r}")
        return full

    def reduce_sum(x: str, out: str, keepdims: int) -> list[Any]:
        if opset >= _AXES_AS_INPUT:
            return [helper.make_node("ReduceSum", [x, name("axis1")], [out], keepdims=keepdims)]
        return [helper.make_node("ReduceSum", [x], [out], axes=[1], keepdims=keepdims)]

    if opset >= _AXES_AS_INPUT:
        graph.initializer.append(helper.make_tensor(name("axis1"), TensorProto.INT64, [1], [1]))
        graph.initializer.append(helper.make_tensor(name("axis2"), TensorProto.INT64, [1], [2]))
        unsqueeze = helper.make_node("Unsqueeze", [name("mask"), name("axis2")], [name("mask3")])
    else:
        unsqueeze = helper.make_node("Unsqueeze", [name("mask")], [name("mask3")], axes=[2])
    graph.initializer.append(
        helper.make_tensor(name("min_count"), TensorProto.FLOAT, [], [_MIN_COUNT])
    )
    graph.initializer.append(
        helper.make_tensor(name("min_norm"), TensorProto.FLOAT, [], [_MIN_NORM])
    )
    graph.node.extend(
        [
            helper.make_node("Cast", [mask], [name("mask")], to=TensorProto.FLOAT),
            unsqueeze,
            helper.make_node("Mul", [source.name, name("mask3")], [name("masked")]),
            *reduce_sum(name("masked"), name("sum"), 0),
            *reduce_sum(name("mask3"), name("count"), 0),
            helper.make_node("Max", [name("count"), name("min_count")], [name("count1")]),
            helper.make_node("Div", [name("sum"), name("count1")], [name("mean")]),
            helper.make_node("Mul", [name("mean"), name("mean")], [name("square")]),
            *reduce_sum(name("square"), name("norm2"), 1),
            helper.make_node("Sqrt", [name("norm2")], [name("norm")]),
            helper.make_node("Max", [name("norm"), name("min_norm")], [name("norm1")]),
            helper.make_node("Div", [name("mean"), name("norm1")], [output]),
        ]
    )
    batch, _, width = source.type.tensor_type.shape.dim
    embedding = helper.make_tensor_value_info(output, TensorProto.FLOAT, [None, None])
    dims = embedding.type.tensor_type.shape.dim
    dims[0].CopyFrom(batch)
    dims[1].CopyFrom(width)
    del graph.output[:]
    graph.output.append(embedding)
    onnx.checker.check_model(pooled)
    return pooled


def pool_file(src: Path, dst: Path, hidden: str | None = None, output: str = EMBEDDING) -> str:
    """Writes ``src`` with pooling appended to ``dst`` (atomically) and returns its sha256.

    Raises:
        ValueError: As :func:`append_mean_pooling`.
    """
    import onnx

    from parkfleet.files import write_atomic

    data = append_mean_pooling(onnx.load(str(src)), hidden=hidden, output=output)
    serialized = data.SerializeToString()
    write_atomic(dst, serialized)
    return hashlib.sha256(serialized).hexdigest()


def _cmd_pool(args: argparse.Namespace) -> int:
    try:
        import onnx  # noqa: F401
    except ImportError:
        print(
            "parkfleet model pool needs the onnx package, which the operator's image does not "
            "carry: install it (pip install onnx, or parkfleet's test extras) and run it again"
        )
        return 2
    try:
        digest = pool_file(Path(args.src), Path(args.dst), args.hidden, args.output)
    except (ValueError, OSError) as exc:
        print(f"parkfleet model pool: {exc}")
        return 1
    print(digest)
    return 0


def register(actions: Any) -> None:
    """Adds ``parkfleet model pool IN.onnx OUT.onnx`` to the ``model`` command's actions."""
    pool = actions.add_parser(
        "pool",
        help="append masked mean pooling and L2 normalisation to a text encoder; "
        "prints the new file's sha256",
    )
    pool.add_argument(
        "src", metavar="IN.onnx", help="an encoder with a [batch, seq, hidden] output"
    )
    pool.add_argument("dst", metavar="OUT.onnx", help="where the pooled model goes")
    pool.add_argument(
        "--output", default=EMBEDDING, help=f"the new output's name (default {EMBEDDING})"
    )
    pool.add_argument(
        "--hidden", default=None, help="the output to pool (default: the only rank-3 one)"
    )
    pool.set_defaults(func=_cmd_pool)

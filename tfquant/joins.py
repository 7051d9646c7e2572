"""Joins of mismatched ranges, rewritten away in the float file before calibration.

A CONCATENATION puts all of its inputs on one int8 scale, sized for the widest: a learned
feature in 0..1 next to a raw statistic in 0..2000 keeps about one level of 256, and the model
falls to chance. Keeping the join in float (the ladder's float islands) costs the file its full
integer property. Rescaling the wide input and folding the factor into the weights that read it
only moves the imbalance: the reader's per-channel weight scale is then sized for the rescaled
column, and the other columns lose their resolution instead (on the zoo's mismatched model it
recovered 78 % of 84 %, and full equalization 23 %).

What works is not to join at all. A dense or conv op reading a concatenation along channels
computes the sum of the same op over each part with its slice of the weights:

    Dense(concat(a, b)) = Dense_a(a) + Dense_b(b)        (bias and activation once, at the end)

so every reader of a mismatched join is split into one op per part and ADDs: each part keeps a
scale of its own, and the sum of the readers' outputs (two contributions to the same logits or
features) has ranges that belong together. In float the outputs are the same up to rounding.
The join goes when nothing else reads it. Every rewrite is reported.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.tools import flatbuffer_utils

from .flatbuffer import drop_unused_opcodes, float_constant, opcode, read_model, text, write_model

_READERS = (schema.BuiltinOperator.FULLY_CONNECTED, schema.BuiltinOperator.CONV_2D)


@dataclass(frozen=True)
class Split:
    join: str  # the concatenation's output tensor
    readers: tuple[str, ...]  # the ops split, by output tensor
    parts: int

    def describe(self) -> str:
        return (f"split the {len(self.readers)} op(s) reading the join {self.join!r} into one op per input and "
                f"ADDs ({self.parts} parts), so that no int8 scale is shared across its mismatched inputs "
                "(the same function in float)")


def split_joins(float_tflite: bytes, joins: list[str]) -> tuple[bytes, list[Split]]:
    """The float file with the readers of these CONCATENATION ops (by output tensor name) split per input,
    where every reader is a dense or conv op taking the join's channels; returns it and what was split."""
    model = read_model(float_tflite)
    graph = model.subgraphs[0]
    codes = [flatbuffer_utils.get_builtin_code_from_operator_code(c) for c in model.operatorCodes]
    graph_outputs = {int(i) for i in graph.outputs}
    done: list[Split] = []
    for join in [op for op in list(graph.operators) if codes[op.opcodeIndex] == schema.BuiltinOperator.CONCATENATION]:
        out = int(join.outputs[0])
        name = text(graph.tensors[out].name)
        if name not in joins or out in graph_outputs:
            continue
        rank = len(graph.tensors[out].shape)
        if join.builtinOptions.axis not in (-1, rank - 1) or \
                join.builtinOptions.fusedActivationFunction != schema.ActivationFunctionType.NONE:
            continue  # only a plain join along channels maps onto the readers' input channels
        readers = [op for op in graph.operators if out in [int(i) for i in op.inputs]]
        widths = [int(graph.tensors[int(i)].shape[-1]) for i in join.inputs]
        if not readers or any(not _splittable(model, graph, codes, op, out, sum(widths)) for op in readers):
            continue
        split_names = []
        for reader in readers:
            split_names.append(text(graph.tensors[int(reader.outputs[0])].name))
            _split(model, graph, reader, [int(i) for i in join.inputs], widths)
        graph.operators.remove(join)
        done.append(Split(name, tuple(split_names), len(widths)))
    if not done:
        return float_tflite, []
    drop_unused_opcodes(model)  # the join's, when it was the last: an interpreter registers every listed code
    return write_model(model), done


def _splittable(model, graph, codes, op, join: int, width: int) -> bool:
    if codes[op.opcodeIndex] not in _READERS or int(op.inputs[0]) != join or list(op.inputs).count(join) != 1:
        return False
    weights = float_constant(model, graph, int(op.inputs[1]))
    return weights is not None and weights.shape[-1] == width


def _split(model, graph, reader, parts: list[int], widths: list[int]) -> None:
    """Replace `reader` by one op per part (the part's slice of the weights; the bias with the first) and ADDs."""
    weights = float_constant(model, graph, int(reader.inputs[1]))
    bias = int(reader.inputs[2]) if len(reader.inputs) > 2 else -1
    out = int(reader.outputs[0])
    activation = reader.builtinOptions.fusedActivationFunction
    position = graph.operators.index(reader)
    new_ops, partials, start = [], [], 0
    for number, (part, width) in enumerate(zip(parts, widths)):
        kernel = _add_tensor(model, graph, f"{text(graph.tensors[int(reader.inputs[1])].name)}/part{number}",
                             weights[..., start:start + width])
        partial = _add_tensor(model, graph, f"{text(graph.tensors[out].name)}/part{number}", None,
                              like=graph.tensors[out])
        op = copy.deepcopy(reader)
        op.inputs = [part, kernel, bias if number == 0 else -1]
        op.outputs = [partial]
        op.builtinOptions.fusedActivationFunction = schema.ActivationFunctionType.NONE
        new_ops.append(op)
        partials.append(partial)
        start += width
    total = partials[0]
    for number, partial in enumerate(partials[1:], start=1):
        last = number == len(partials) - 1
        result = out if last else _add_tensor(model, graph, f"{text(graph.tensors[out].name)}/sum{number}", None,
                                              like=graph.tensors[out])
        new_ops.append(_add_op(model, [total, partial], result, activation if last else
                               schema.ActivationFunctionType.NONE))
        total = result
    graph.operators[position:position + 1] = new_ops


def _add_tensor(model, graph, name: str, values, *, like=None) -> int:
    """A new tensor: a constant holding `values`, or an activation shaped like `like`."""
    tensor = schema.TensorT()
    tensor.name = name
    tensor.type = schema.TensorType.FLOAT32
    buffer = schema.BufferT()
    if values is not None:
        values = np.ascontiguousarray(values, np.float32)
        tensor.shape = np.array(values.shape, np.int32)
        buffer.data = values.tobytes()
    else:
        tensor.shape = np.array(like.shape, np.int32)
        if like.shapeSignature is not None:
            tensor.shapeSignature = np.array(like.shapeSignature, np.int32)
    model.buffers.append(buffer)
    tensor.buffer = len(model.buffers) - 1
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _add_op(model, inputs: list[int], output: int, activation: int):
    """An ADD of `inputs` into `output`."""
    op = schema.OperatorT()
    op.opcodeIndex = opcode(model, schema.BuiltinOperator.ADD)
    op.inputs = inputs
    op.outputs = [output]
    op.builtinOptionsType = schema.BuiltinOptions.AddOptions
    op.builtinOptions = schema.AddOptionsT()
    op.builtinOptions.fusedActivationFunction = activation
    return op

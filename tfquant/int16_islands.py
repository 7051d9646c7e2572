"""Ops with an int8 kernel and no int16 one, in an int16x8 file: run in int8 between two QUANTIZEs.

TFLite's int16x8 quantizer refuses L2_NORMALIZATION (tf_keras' `tf.math.l2_normalize`),
DEPTH_TO_SPACE and SPACE_TO_DEPTH (a super-resolution network's pixel shuffle) and SQRT:
"Quantization to 16x8-bit not yet supported for op". While it runs, a MUL(x, 1) stands in for each
(`put_stand_ins`, called by `int16.for_int16x8`), so that the op's output keeps its calibrated
range; after it, the op is put back on int8 between a QUANTIZE from the MUL's int16 input and one
to its int16 output (`int8_islands`).
"""

from __future__ import annotations

import copy as copy_module
from dataclasses import dataclass

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from .flatbuffer import (builtin_of, drop_unused_opcodes, new_op, opcode, ops_running, per_tensor, read_model,
                         scalar_constant, tensor_like, turn_into, write_model)

INT16_MAX = int(np.iinfo(np.int16).max)


# Ops with an int8 kernel and no int16 one: an int16x8 file runs them in int8, between two QUANTIZEs. Each with
# the int8 scale of its output: "fixed" (the kernel's own), "input" (a copy keeps its input's), "own" (its range).
_INT8_ONLY = {schema.BuiltinOperator.L2_NORMALIZATION: "fixed", schema.BuiltinOperator.DEPTH_TO_SPACE: "input",
              schema.BuiltinOperator.SPACE_TO_DEPTH: "input", schema.BuiltinOperator.SQRT: "own"}


@dataclass(frozen=True)
class StandIn:
    """An op of `_INT8_ONLY` that a MUL(x, 1) stood in for while TFLite's int16x8 quantizer ran."""

    output: bytes  # its output tensor's name
    builtin: int
    version: int
    op: object  # the op as it was, with its options (a block size)


def put_stand_ins(model) -> list[StandIn]:
    """Every op of `_INT8_ONLY` as MUL(x, 1), in place, for TFLite's int16x8 quantizer, which refused them
    ("Quantization to 16x8-bit not yet supported for op: 'L2_NORMALIZATION'", DEPTH_TO_SPACE, SPACE_TO_DEPTH,
    SQRT): tf_keras' `tf.math.l2_normalize`, a super-resolution network's pixel shuffle. The MUL's output
    keeps the op's calibrated range; `int8_islands` puts the op back."""
    found = []
    for graph, op in ops_running(model, *_INT8_ONLY):
        if graph is not model.subgraphs[0]:  # `int8_islands` puts them back in the main graph
            continue
        builtin = builtin_of(model, op)
        name = graph.tensors[int(op.outputs[0])].name
        found.append(StandIn(name, builtin, model.operatorCodes[op.opcodeIndex].version, copy_module.deepcopy(op)))
        op.inputs = [int(op.inputs[0]), scalar_constant(model, graph, 1.0, name, b"stand_in_one")]
        turn_into(model, op, schema.BuiltinOperator.MUL)
    return found


def int8_islands(quantized: bytes, stand_ins: list[StandIn]) -> bytes:
    """The int16x8 file with each op a MUL stood in for (`put_stand_ins`) run in int8: a QUANTIZE of the
    MUL's int16 input to int8 (the same span, zero point 0), the op on int8, and a QUANTIZE of its int8
    output to the MUL's int16 one."""
    if not stand_ins:
        return quantized
    model = read_model(quantized)
    graph = model.subgraphs[0]
    by_output = {int(op.outputs[0]): op for op in graph.operators}
    for stand_in in stand_ins:
        target = next(i for i, tensor in enumerate(graph.tensors) if tensor.name == stand_in.output)
        mul = by_output[target]
        source = int(mul.inputs[0])
        int8_in = _int8_span(graph.tensors[source])
        rule = _INT8_ONLY[stand_in.builtin]
        int8_out = per_tensor(1.0 / 128.0, 0) if rule == "fixed" else \
            copy_module.deepcopy(int8_in) if rule == "input" else _int8_span(graph.tensors[target])
        narrow_in = tensor_like(graph, source, graph.tensors[source].name + b"/int8", schema.TensorType.INT8, int8_in)
        narrow_out = tensor_like(graph, target, stand_in.output + b"/int8", schema.TensorType.INT8, int8_out)
        inner = copy_module.deepcopy(stand_in.op)
        inner.opcodeIndex = opcode(model, stand_in.builtin, at_least=max(stand_in.version, 2))  # the int8 kernel
        inner.inputs, inner.outputs = [narrow_in], [narrow_out]
        at = graph.operators.index(mul)
        graph.operators[at:at + 1] = [new_op(model, schema.BuiltinOperator.QUANTIZE, [source], [narrow_in]), inner,
                                      new_op(model, schema.BuiltinOperator.QUANTIZE, [narrow_out], [target])]
    drop_unused_opcodes(model)
    return write_model(model)


def _int8_span(int16_tensor):
    """int8 parameters (zero point 0) for the span of a symmetric int16 tensor."""
    return per_tensor(float(int16_tensor.quantization.scale[0]) * INT16_MAX / 127.0, 0)

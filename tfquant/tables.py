"""Per-token computations after an embedding lookup, folded into its table in the float file.

An Embedding is a GATHER of rows from a constant table, and int8 stores that table on one scale,
sized for its largest values. A row that is small everywhere (a rare token's) keeps few levels,
which costs little while the rows are summed or multiplied by weights; but a LayerNormalization
that reads them straight away divides each row by its own spread and blows its rounding up: a
token regression whose Embedding fed a LayerNormalization was 18.8 % of σ off float in int8.

Whatever is computed from each looked-up row alone (a LayerNormalization, an activation, a scale
and shift) gives the same result computed once on every row of the table: f(table)[ids] =
f(table[ids]). `fold` grows that region from the GATHER's output, op by op, while each op reads
only the region and constants that are the same for every row, computes it on the table with
NumPy, and where the region has one way out, the GATHER reads the computed table and writes that
tensor. The file then looks the normalized rows up, each on the scale of what is looked up. The
region's ops leave the file (they ran once here). `convert` keeps the rewrite only where the
float file's outputs stay those of the original.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from .flatbuffer import (array_constant, builtin_codes, builtin_of, constant, drop_unused_opcodes, float_constant,
                         read_model, readers_of, text, write_model)

_B = schema.BuiltinOperator
_UNARY: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    _B.RSQRT: lambda x: 1.0 / np.sqrt(x), _B.SQRT: np.sqrt, _B.TANH: np.tanh,
    _B.LOGISTIC: lambda x: 1.0 / (1.0 + np.exp(-x)), _B.RELU: lambda x: np.maximum(x, 0.0),
    _B.RELU6: lambda x: np.clip(x, 0.0, 6.0), _B.NEG: np.negative, _B.SQUARE: np.square, _B.EXP: np.exp,
    _B.ABS: np.abs,
}
_BINARY: dict[int, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    _B.ADD: np.add, _B.SUB: np.subtract, _B.MUL: np.multiply, _B.DIV: np.divide,
    _B.SQUARED_DIFFERENCE: lambda a, b: np.square(a - b), _B.MAXIMUM: np.maximum, _B.MINIMUM: np.minimum,
}
_REDUCE = {_B.MEAN: np.mean, _B.SUM: np.sum}
_FUSED = {schema.ActivationFunctionType.NONE: lambda x: x, schema.ActivationFunctionType.RELU: _UNARY[_B.RELU],
          schema.ActivationFunctionType.RELU6: _UNARY[_B.RELU6]}


@dataclass(frozen=True)
class Fold:
    table: str  # the GATHER's output tensor before the fold
    into: str  # the tensor it now writes
    ops: int  # ops folded

    def describe(self) -> str:
        return (f"the {self.ops} per-token op(s) between the lookup {self.table!r} and {self.into!r} computed once on "
                "every row of its table, so that int8 stores the rows as they are read (the same function in float)")


def fold(float_tflite: bytes) -> tuple[bytes, list[Fold]]:
    """The float file with the per-row computations after each embedding lookup folded into its table
    (see the module); returns it and the folds made. A file without a GATHER is not read into objects."""
    if _B.GATHER not in builtin_codes(schema.Model.GetRootAs(float_tflite, 0)):
        return float_tflite, []
    model = read_model(float_tflite)
    graph = model.subgraphs[0]
    done = []
    for gather in [op for op in graph.operators if builtin_of(model, op) == _B.GATHER]:
        found = _foldable(model, graph, gather)
        if found is None:
            continue
        region, table, exit_ = found
        name = graph.tensors[exit_].name
        gather.inputs = [array_constant(model, graph, table.astype(np.float32), name, b"folded_table"),
                         int(gather.inputs[1])]
        before = graph.tensors[int(gather.outputs[0])].name
        gather.outputs = [exit_]
        graph.operators = [op for op in graph.operators if id(op) not in region]
        done.append(Fold(text(before), text(name), len(region)))
    if not done:
        return float_tflite, []
    drop_unused_opcodes(model)
    return write_model(model), done


def _foldable(model, graph, gather) -> Optional[tuple[set, np.ndarray, int]]:
    """(the ids of the region's ops, the table computed through them, the tensor the region ends in) for a
    GATHER of rows (axis 0) from a constant 2-D float table, or None where nothing can be folded."""
    options = gather.builtinOptions
    table = float_constant(model, graph, int(gather.inputs[0]))
    if table is None or table.ndim != 2 or (options is not None and (options.axis != 0 or options.batchDims != 0)):
        return None
    start = int(gather.outputs[0])
    values = {start: table.astype(np.float64)}
    region: set = set()
    ends = {int(i) for i in graph.outputs}
    for op in graph.operators[graph.operators.index(gather) + 1:]:
        computed = _on_rows(model, graph, op, values)
        if computed is not None:
            values[int(op.outputs[0])] = computed
            region.add(id(op))
    if not region:
        return None
    readers = readers_of(graph)
    exits = {index for index in values
             if index in ends or any(id(r) not in region for r in readers.get(index, []))}
    if len(exits) != 1 or start in exits:
        return None
    (exit_,) = exits
    if values[exit_].shape[1] != graph.tensors[exit_].shape[-1] or not np.isfinite(values[exit_]).all():
        return None
    return region, values[exit_], exit_


def _on_rows(model, graph, op, values: dict) -> Optional[np.ndarray]:
    """`op` computed on every row of the table, where it reads only rows (`values`) and per-row constants;
    else None."""
    builtin = builtin_of(model, op)
    if len(op.outputs) != 1 or not any(int(i) in values for i in op.inputs):
        return None
    options = op.builtinOptions
    fused = _FUSED.get(getattr(options, "fusedActivationFunction", schema.ActivationFunctionType.NONE))
    if builtin in _UNARY and len(op.inputs) == 1:
        return _UNARY[builtin](values[int(op.inputs[0])])
    if builtin in _BINARY and len(op.inputs) == 2 and fused is not None:
        a, b = (_row_operand(model, graph, int(i), values) for i in op.inputs)
        return None if a is None or b is None else fused(_BINARY[builtin](a, b))
    if builtin in _REDUCE and int(op.inputs[0]) in values and options is not None and options.keepDims:
        axes = constant(model, graph, int(op.inputs[1]), schema.TensorType.INT32)
        rank = len(graph.tensors[int(op.inputs[0])].shape)
        if axes is None or {int(a) % rank for a in np.ravel(axes)} != {rank - 1}:
            return None
        return _REDUCE[builtin](values[int(op.inputs[0])], axis=1, keepdims=True)
    return None


def _row_operand(model, graph, index: int, values: dict) -> Optional[np.ndarray]:
    """A binary op's operand on the table's rows: a row value, or a constant that is the same for every row
    (a scalar, or a vector along the last axis), shaped to broadcast over them."""
    if index in values:
        return values[index]
    fixed = float_constant(model, graph, index)  # None for anything the graph computes or is fed
    if fixed is None or (fixed.ndim > 1 and any(d != 1 for d in fixed.shape[:-1])):
        return None
    return fixed.astype(np.float64).reshape(1, -1) if fixed.ndim else fixed.astype(np.float64)

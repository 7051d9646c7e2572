"""Per-token computations after an embedding lookup, folded into its table in the float file.

An Embedding is a GATHER of rows from a constant table, and int8 stores that table on one scale,
sized for its largest values. A row that is small everywhere (a rare token's) keeps few levels,
which costs little while the rows are summed or multiplied by weights; but a LayerNormalization
that reads them straight away divides each row by its own spread and blows its rounding up: a
token regression whose Embedding fed a LayerNormalization was 18.8 % of σ off float in int8.

Whatever is computed from each looked-up row alone (a LayerNormalization, an activation, a scale
and shift) gives the same result computed once on every row of the table: f(table)[ids] =
f(table[ids]). `fold` finds the ops that read the GATHER's output and constants only (elementwise
ops, reductions, and the reshapes, transposes and shape arithmetic tf_keras writes its
LayerNormalization with), runs them on the interpreter with the table's rows in place of the
looked-up ones, and keeps the largest such region with one way out whose every row comes out the
same whatever rows share its lookup (run twice, the rows in another order: a position embedding
or an average over tokens fails that). The GATHER then reads the computed table and writes the
region's output, so the file looks the normalized rows up, each on the scale of what is looked up,
and the region's ops leave the file (they ran once here). `convert` keeps the rewrite only where
the float file's outputs stay those of the original.
"""

from __future__ import annotations

import copy as copy_module
import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from .errors import one_line
from .flatbuffer import (array_constant, builtin_codes, builtin_of, drop_unused_opcodes, float_constant,
                         is_constant, is_float, read_model, readers_of, text, write_model)

log = logging.getLogger("tfquant")
_B = schema.BuiltinOperator
# Ops that compute a row from itself and constants when their axes are those of the row; the run on the
# table tells whether they are.
_PER_ROW = frozenset({
    _B.ADD, _B.SUB, _B.MUL, _B.DIV, _B.SQUARED_DIFFERENCE, _B.MAXIMUM, _B.MINIMUM, _B.POW,
    _B.RSQRT, _B.SQRT, _B.TANH, _B.LOGISTIC, _B.RELU, _B.RELU6, _B.RELU_N1_TO_1, _B.LEAKY_RELU, _B.ELU,
    _B.GELU, _B.HARD_SWISH, _B.NEG, _B.SQUARE, _B.EXP, _B.LOG, _B.ABS, _B.SIN, _B.COS,
    _B.MEAN, _B.SUM, _B.REDUCE_MAX, _B.REDUCE_MIN, _B.SOFTMAX, _B.L2_NORMALIZATION,
    _B.RESHAPE, _B.TRANSPOSE, _B.SQUEEZE, _B.EXPAND_DIMS, _B.SHAPE, _B.STRIDED_SLICE, _B.REDUCE_PROD,
    _B.PACK, _B.FILL, _B.CAST,
})
_RESHAPES = (_B.RESHAPE, _B.SQUEEZE, _B.EXPAND_DIMS)
SAME_ROW = 1e-6  # a row computed among other rows may differ by this much of the table's largest result


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
        region, table, exit_, reshapes = found
        for reader in reshapes:  # a reshape of the region's values before their last reshape reads them after it
            reader.inputs[0] = exit_
        name = graph.tensors[exit_].name
        gather.inputs = [array_constant(model, graph, table, name, b"folded_table"), int(gather.inputs[1])]
        before = graph.tensors[int(gather.outputs[0])].name
        gather.outputs = [exit_]
        graph.operators = [op for op in graph.operators if id(op) not in region]
        done.append(Fold(text(before), text(name), len(region)))
    if not done:
        return float_tflite, []
    drop_unused_opcodes(model)
    return write_model(model), done


def _foldable(model, graph, gather) -> Optional[tuple[set, np.ndarray, int, list]]:
    """(the ids of the region's ops, the table computed through them, the tensor the region ends in, the
    RESHAPEs outside the region that read it before its last reshapes) for a GATHER of rows (axis 0) from a
    constant 2-D float table, or None where nothing can be folded."""
    options = gather.builtinOptions
    table = float_constant(model, graph, int(gather.inputs[0]))
    if table is None or table.ndim != 2 or (options is not None and (options.axis != 0 or options.batchDims != 0)):
        return None
    start = int(gather.outputs[0])
    reach = _reach(model, graph, gather, start)
    readers = readers_of(graph)
    ends = {int(i) for i in graph.outputs}
    looked_up = list(graph.tensors[start].shape)
    for exit_ in reversed([int(op.outputs[0]) for op in reach]):
        shape = list(graph.tensors[exit_].shape)
        if not is_float(graph, exit_) or len(shape) != len(looked_up) or shape[:-1] != looked_up[:-1]:
            continue
        region = _feeding(graph, reach, exit_)
        inside = {id(op) for op in region}
        same_order = _reshaped_into(model, region, exit_)
        outside = {index: [r for r in readers.get(index, []) if id(r) not in inside]
                   for index in {start} | {int(i) for op in region for i in op.outputs} - {exit_}}
        if any(index in ends or any(not (index in same_order and _reshapes(model, r, index)) for r in ops)
               for index, ops in outside.items()):
            continue  # another tensor of the region is read outside it: the region does not end there
        rows = _rows_through(model, graph, region, start, exit_, table)
        if rows is not None:
            return inside, rows, exit_, [r for ops in outside.values() for r in ops]
    return None


def _reshaped_into(model, region: list, exit_: int) -> set:
    """The region's tensors that `exit_` is a reshape of (the same values in the same order)."""
    producers = {int(op.outputs[0]): op for op in region}
    found, index = set(), exit_
    while index in producers and builtin_of(model, producers[index]) in _RESHAPES:
        index = int(producers[index].inputs[0])
        found.add(index)
    return found


def _reshapes(model, op, index: int) -> bool:
    """Whether `op` only reshapes tensor `index` (the values in their order, whatever shape they had)."""
    return builtin_of(model, op) == _B.RESHAPE and int(op.inputs[0]) == index \
        and index not in [int(i) for i in op.inputs[1:]]


def _reach(model, graph, gather, start: int) -> list:
    """The ops, in order, that compute from the looked-up rows and constants only, by kinds that can be
    per-row."""
    known = {start}
    reach = []
    for op in graph.operators[graph.operators.index(gather) + 1:]:
        inputs = [int(i) for i in op.inputs if int(i) >= 0]
        if (builtin_of(model, op) in _PER_ROW and len(op.outputs) == 1 and any(i in known for i in inputs)
                and all(i in known or is_constant(model, graph, i) for i in inputs)):
            known.add(int(op.outputs[0]))
            reach.append(op)
    return reach


def _feeding(graph, reach: list, exit_: int) -> list:
    """The ops of `reach` that `exit_` is computed from, in order."""
    needed, region = {exit_}, []
    for op in reversed(reach):
        if int(op.outputs[0]) in needed:
            region.append(op)
            needed.update(int(i) for i in op.inputs)
    return region[::-1]


def _rows_through(model, graph, region: list, start: int, exit_: int, table: np.ndarray) -> Optional[np.ndarray]:
    """Every row of `table` run through `region` on the interpreter, as many at a time as one lookup
    reads; None unless each row comes out the same among other rows (run again, the rows shuffled)."""
    try:
        results = _run_rows(_region_model(model, graph, region, start, exit_), table)
    except (RuntimeError, ValueError) as exc:  # a region the interpreter does not run alone: not folded
        log.info("lookup %r not folded: %s", text(graph.tensors[start].name), one_line(exc, 160))
        return None
    if results is None:
        return None
    first, second = results
    if not np.isfinite(first).all() or \
            np.abs(first - second).max() > SAME_ROW * max(float(np.abs(first).max()), 1e-30):
        return None
    return first


def _run_rows(region_file: bytes, table: np.ndarray) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """The table's rows through the region's file, in their order and then shuffled; None where the file
    does not read rows of the table's width."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=region_file, num_threads=1)
    interpreter.allocate_tensors()
    (entry,), (way_out,) = interpreter.get_input_details(), interpreter.get_output_details()
    shape = tuple(entry["shape"])
    per_run = int(np.prod(shape[:-1]))
    if shape[-1] != table.shape[1] or per_run < 1:
        return None
    count = len(table)
    results = []
    for order in (np.arange(count), np.random.default_rng(0).permutation(count)):
        padded = np.resize(order, -(-count // per_run) * per_run)  # the last run filled with rows again
        out = None
        for chunk in padded.reshape(-1, per_run):
            interpreter.set_tensor(entry["index"], table[chunk].reshape(shape).astype(np.float32))
            interpreter.invoke()
            computed = interpreter.get_tensor(way_out["index"]).reshape(per_run, -1)
            if out is None:
                out = np.empty((count, computed.shape[1]), np.float32)
            out[chunk] = computed
        results.append(out)
    return results[0], results[1]


def _region_model(model, graph, region: list, start: int, exit_: int) -> bytes:
    """A file of the region's ops alone, from the looked-up rows to `exit_`: only the tensors and
    constants they read and write (a large model's other weights are not written out to run a few ops)."""
    part, sub = schema.ModelT(), schema.SubGraphT()
    part.version, part.operatorCodes = model.version, model.operatorCodes
    part.buffers = [schema.BufferT()]
    index: dict[int, int] = {}

    def tensor(old: int) -> int:
        if old < 0:
            return old
        if old not in index:
            copy = copy_module.copy(graph.tensors[old])
            if copy.buffer:
                buffer = schema.BufferT()
                buffer.data = model.buffers[copy.buffer].data
                part.buffers.append(buffer)
                copy.buffer = len(part.buffers) - 1
            index[old] = len(sub.tensors)
            sub.tensors.append(copy)
        return index[old]

    sub.tensors = []
    sub.operators = []
    for op in region:
        copy = copy_module.copy(op)
        copy.inputs = [tensor(int(i)) for i in op.inputs]
        copy.outputs = [tensor(int(i)) for i in op.outputs]
        sub.operators.append(copy)
    sub.inputs, sub.outputs = [tensor(start)], [tensor(exit_)]
    part.subgraphs = [sub]
    return write_model(part)

"""What TFLite's int16x8 quantizer needs around it: a file it can quantize, and the scales it gets wrong repaired.

It quantizes a constant once, for whichever op reads it, so each constant gets a buffer, and each
dense or convolution op a bias (each FILL a value), of its own before it runs (`for_int16x8`): an
unrolled recurrent layer reads one recurrent bias at every step, each step's state has its own
scale, and the bias scale is the input's times the weights'. The one bias had been stored for one step's scale (in
a 32-step GRU, that of the zero initial state: all zeros) and read wrongly by every step.

The zero initial state of a recurrent layer is `FILL(shape, 0.0)`. TFLite's int16x8 quantizer
gives a FILL's output its value's scale, and a constant 0.0 gets scale 0. A dense op that reads
that state then gets bias scale `0 × weight scale`: its bias is stored as zeros. In a GRU (whose
recurrent matmul carries the recurrent bias, `reset_after=True`, the Keras default) the first
step's gates then start from 0 instead of that bias, and the error runs through every step: a
token GRU regression missed its budget by 6×, at int16x8 worse than at int8.

The int8 quantizer takes the calibrated (floored, `limits.floor_model_ranges`) range of such a tensor;
this pass does the same for int16x8 after the fact: the zero-scale tensor gets the symmetric
int16 scale of its calibrated range (its values, zeros, stay zero), and the bias of every dense or
convolution op reading it is quantized again from the float bias with the input's new scale.

Where the quantizer or the interpreter has no int16 form of an op, the file is rewritten before it
runs: SQUARED_DIFFERENCE (LayerNormalization's variance) as SUB then MUL, HARD_SWISH (MobileNetV3)
as x * RELU6(x + 3) / 6, PRELU as RELU(x) - a * RELU(-x), SUM as MEAN times the count (the
quantizer gave a SUM its input's scale), a MINIMUM's or MAXIMUM's constant bound clipped to its
value's range (it wrapped around in int16), and SELECT_V2 (a causal or padding mask on attention
scores) as a sum of products with the mask as 0 and 1. An op with an int8 kernel and no int16 one
(L2_NORMALIZATION, DEPTH_TO_SPACE, SPACE_TO_DEPTH, SQRT) stands in as MUL(x, 1) and is put back in
int8 between two QUANTIZEs (`int16_islands`). The integer ops on token ids and masks are set aside
while it runs (`without_integer_ops`).
"""

from __future__ import annotations

import copy as copy_module
from dataclasses import dataclass
from typing import Optional

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from . import int16_islands as islands
from .limits import floor_model_ranges
from .flatbuffer import (array_constant, builtin_of, constant, drop_unused_opcodes, float_constant, has_range,
                         is_constant, is_float, new_op, opcode, ops_running, read_model, readers_of, scalar_constant,
                         tensor_like, turn_into, write_model)

_BIASED = {schema.BuiltinOperator.FULLY_CONNECTED, schema.BuiltinOperator.CONV_2D,
           schema.BuiltinOperator.DEPTHWISE_CONV_2D}
# The input whose scale the quantizer derives from the op's other tensors: a bias's is the input's
# times the weights'; a FILL's value has its output's.
_SCALED_BY_OP = {**{builtin: 2 for builtin in _BIASED}, schema.BuiltinOperator.FILL: 1}


def for_int16x8(calibrated: bytes) -> tuple[bytes, list[islands.StandIn]]:
    """`calibrated`, for TFLite's int16x8 quantizer, with its SQUARED_DIFFERENCEs, HARD_SWISHes, PRELUs, SUMs
    and SELECT_V2s spelled out, its MINIMUM/MAXIMUM bounds within range, a MUL standing in for each op with
    no int16 kernel, a bias tensor of its own for every dense and convolution op, a value of its own for
    every FILL, and a buffer of its own for every constant tensor; and the ops the MULs stand in for, which
    `int16_islands.int8_islands` puts back."""
    model = read_model(calibrated)
    changed = _squared_differences_spelled_out(model)
    changed = _hard_swishes_spelled_out(model) or changed
    changed = _prelus_spelled_out(model) or changed
    changed = _sums_as_means(model) or changed
    changed = _bounds_within_range(model) or changed
    changed = _selects_as_sums(model) or changed
    changed = bool(floor_model_ranges(model, sum_shift=15)) or changed  # int16 ADD and SUB shift by 15 bits
    stand_ins = islands.put_stand_ins(model)
    changed = _unshare_constants(model) or bool(stand_ins) or changed
    changed = _unshare_buffers(model) or changed
    drop_unused_opcodes(model)
    return (write_model(model) if changed else calibrated), stand_ins


@dataclass(frozen=True)
class _Hidden:
    """Integer ops taken out of a file for TFLite's int16x8 quantizer, by their tensors' names."""

    ops: list  # (builtin, its opcode version, the op, its input names (None for an absent one), its output
    # names), in graph order
    inputs: list  # names of the tensors that stood in as graph inputs for them


def without_integer_ops(data: bytes) -> tuple[bytes, Optional[_Hidden]]:
    """`data` without the integer ops that only read its inputs, constants and each other (token ids made
    valid indices, a padding mask); their outputs stand in as graph inputs. Returns it, and what
    `with_integer_ops` puts back (None when there was nothing to take out).

    TFLite's int16x8 quantizer treats an int32 ADD or comparison as an op to quantize: it asked for
    the calibrated range of an int32 token input ("Empty min/max for tensor tokens") and has no int16
    form of LESS or NOT_EQUAL, so Keras 3's Embedding (which wraps negative ids with LESS, ADD and
    SELECT_V2) and every padding mask were refused. The int8 quantizer leaves them as they are.

    A mask cast to float (CAST of a boolean) is taken out too: its output stands in with the range
    [0, 32767], whose int16 step is exactly 1, so the quantizer gives its readers that scale and the
    cast, put back, writes 0 and 1 as int16."""
    model = read_model(data)
    graph = model.subgraphs[0]
    names = [tensor.name for tensor in graph.tensors]
    available = {int(i) for i in graph.inputs} | {i for i in range(len(graph.tensors))
                                                  if is_constant(model, graph, i)}
    hidden = []
    ends = {int(i) for i in graph.outputs}
    for op in graph.operators:
        read, written = [int(i) for i in op.inputs if int(i) >= 0], [int(o) for o in op.outputs]
        if not all(i in available for i in read) or ends & set(written):
            continue
        mask = _bool_cast(model, graph, op)
        if mask or not any(is_float(graph, i) for i in (*read, *written)):
            hidden.append(op)
            available.update(written)
            if mask:  # an int16 step of exactly 1: the cast's 0 and 1 are its int16 values
                graph.tensors[written[0]].quantization = _range(0.0, float(islands.INT16_MAX))
    taken = {id(op) for op in hidden}
    read_after = {int(i) for op in graph.operators if id(op) not in taken for i in op.inputs}
    standing_in = [int(i) for op in hidden for i in op.outputs if int(i) in read_after]
    if not hidden or len(set(names)) != len(names):
        return data, None  # nothing to take out, or tensors the names could not find again
    record = _Hidden([(builtin_of(model, op), model.operatorCodes[op.opcodeIndex].version, copy_module.deepcopy(op),
                       [names[int(i)] if int(i) >= 0 else None for i in op.inputs],
                       [names[int(i)] for i in op.outputs]) for op in hidden],
                     [names[i] for i in standing_in])
    graph.operators = [op for op in graph.operators if id(op) not in taken]
    graph.inputs = [*graph.inputs, *standing_in]
    drop_unused_opcodes(model)
    return write_model(model), record


def _bool_cast(model, graph, op) -> bool:
    """Whether `op` casts a boolean (a mask) to float."""
    return (builtin_of(model, op) == schema.BuiltinOperator.CAST
            and graph.tensors[int(op.inputs[0])].type == schema.TensorType.BOOL and is_float(graph, int(op.outputs[0])))


def with_integer_ops(quantized: bytes, hidden: Optional[_Hidden]) -> bytes:
    """The int16x8 file with the ops `without_integer_ops` took out back in front, reading the same tensors."""
    if hidden is None:
        return quantized
    model = read_model(quantized)
    graph = model.subgraphs[0]
    index = {tensor.name: i for i, tensor in enumerate(graph.tensors)}
    ops = []
    for builtin, version, op, inputs, outputs in hidden.ops:
        op = copy_module.deepcopy(op)
        op.opcodeIndex = opcode(model, builtin, at_least=version)  # the converter's: BROADCAST_TO has no version 1
        op.inputs = [-1 if name is None else index[name] for name in inputs]
        op.outputs = [index[name] for name in outputs]
        ops.append(op)
    graph.operators = [*ops, *graph.operators]
    standing_in = {index[name] for name in hidden.inputs}
    graph.inputs = [i for i in graph.inputs if int(i) not in standing_in]
    return write_model(model)


def _squared_differences_spelled_out(model) -> bool:
    """Every SQUARED_DIFFERENCE(x, y) (LayerNormalization's variance) as t = SUB(x, y), MUL(t, t), in place;
    returns whether there was one.

    TFLite's int16x8 quantizer quantizes SQUARED_DIFFERENCE, but the interpreter has no int16 kernel
    for it and stops on the file. The calibrated file has no range for the new `t`; the square's
    has one, [0, m], and |t| <= sqrt(m) is the bound int16's symmetric scale takes."""
    changed = False
    for graph, op in ops_running(model, schema.BuiltinOperator.SQUARED_DIFFERENCE):
        out = int(op.outputs[0])
        square, span = graph.tensors[out], _calibrated(graph.tensors[out])
        if span is None:
            continue
        bound = float(np.sqrt(max(span[1], 0.0)))
        difference = tensor_like(graph, out, (square.name or b"squared_difference") + b"/difference",
                                 schema.TensorType.FLOAT32, _range(-bound, bound))
        at = graph.operators.index(op)
        graph.operators.insert(at, new_op(model, schema.BuiltinOperator.SUB, list(op.inputs), [difference]))
        op.inputs = [difference, difference]
        turn_into(model, op, schema.BuiltinOperator.MUL)
        changed = True
    return changed


def _hard_swishes_spelled_out(model) -> bool:
    """Every HARD_SWISH(x) (MobileNetV3's activation) as x * RELU6(x + 3) / 6, in place; returns whether
    there was one. TFLite's int16x8 quantizer has no int16 form of HARD_SWISH and refused MobileNetV3.
    The new tensors take their ranges from x's: x + 3 shifted, the gate within [0, 6], then [0, 1]."""
    changed = False
    for graph, op in ops_running(model, schema.BuiltinOperator.HARD_SWISH):
        x, out = int(op.inputs[0]), int(op.outputs[0])
        span = _calibrated(graph.tensors[x])
        if span is None:
            continue
        low, high = span
        name = graph.tensors[out].name or b"hard_swish"
        gate_low, gate_high = min(max(low + 3.0, 0.0), 6.0), min(max(high + 3.0, 0.0), 6.0)
        made = {
            b"shifted": tensor_like(graph, out, name + b"/shifted", schema.TensorType.FLOAT32,
                                    _range(min(low + 3.0, 0.0), max(high + 3.0, 0.0))),
            b"gate": tensor_like(graph, out, name + b"/gate", schema.TensorType.FLOAT32,
                                 _range(0.0, max(gate_high, gate_low, 1e-3))),
            b"scaled": tensor_like(graph, out, name + b"/scaled", schema.TensorType.FLOAT32,
                                   _range(0.0, max(gate_high / 6.0, 1e-3))),
        }
        ops = [
            new_op(model, schema.BuiltinOperator.ADD,
                   [x, scalar_constant(model, graph, 3.0, name, b"three")], [made[b"shifted"]]),
            new_op(model, schema.BuiltinOperator.RELU6, [made[b"shifted"]], [made[b"gate"]]),
            new_op(model, schema.BuiltinOperator.MUL,
                   [made[b"gate"], scalar_constant(model, graph, 1.0 / 6.0, name, b"sixth")], [made[b"scaled"]]),
        ]
        at = graph.operators.index(op)
        graph.operators[at:at] = ops
        op.inputs = [x, made[b"scaled"]]
        turn_into(model, op, schema.BuiltinOperator.MUL)
        changed = True
    return changed


def _prelus_spelled_out(model) -> bool:
    """Every PRELU(x, a) as RELU(x) - a * RELU(-x), in place; returns whether there was one. TFLite's int16x8
    quantizer has no int16 form of PRELU (super-resolution and face networks use it). The new tensors'
    ranges follow from x's and a's."""
    changed = False
    for graph, op in ops_running(model, schema.BuiltinOperator.PRELU):
        x, alpha, out = int(op.inputs[0]), int(op.inputs[1]), int(op.outputs[0])
        slopes, span = float_constant(model, graph, alpha), _calibrated(graph.tensors[x])
        if slopes is None or span is None:
            continue
        low, high = span
        name = graph.tensors[out].name or b"prelu"
        below = max(-low, 0.0)  # the largest value of RELU(-x)
        made = {part: tensor_like(graph, out, name + b"/" + part, schema.TensorType.FLOAT32, _range(lo, hi))
                for part, lo, hi in ((b"positive", 0.0, max(high, 1e-3)), (b"negated", -high, -low),
                                     (b"negative", 0.0, max(below, 1e-3)),
                                     (b"scaled", min(float(slopes.min()) * below, 0.0),
                                      max(float(slopes.max()) * below, 1e-3)))}
        ops = [
            new_op(model, schema.BuiltinOperator.RELU, [x], [made[b"positive"]]),
            new_op(model, schema.BuiltinOperator.MUL, [x, scalar_constant(model, graph, -1.0, name, b"minus_one")],
                   [made[b"negated"]]),
            new_op(model, schema.BuiltinOperator.RELU, [made[b"negated"]], [made[b"negative"]]),
            new_op(model, schema.BuiltinOperator.MUL, [made[b"negative"], alpha], [made[b"scaled"]]),
        ]
        at = graph.operators.index(op)
        graph.operators[at:at] = ops
        op.inputs = [made[b"positive"], made[b"scaled"]]
        turn_into(model, op, schema.BuiltinOperator.SUB)
        changed = True
    return changed


def _sums_as_means(model) -> bool:
    """Every SUM over axes of known length as MEAN times their count, in place; returns whether there was one.

    TFLite's int16x8 quantizer gives a SUM's output its input's scale, whatever the sum's range: the
    attention scores of `Attention(score_mode="concat")`, a sum of 16 TANH outputs in [-6.4, 9.4], were
    clipped to [-1, 1] (44 % agreement with float). A MEAN gets a scale of its own (the sum's calibrated
    range over the count), and the MUL by the count one of its own too."""
    changed = False
    for graph, op in ops_running(model, schema.BuiltinOperator.SUM):
        x, out = int(op.inputs[0]), int(op.outputs[0])
        axes = constant(model, graph, int(op.inputs[1]), schema.TensorType.INT32)
        shape, signature = graph.tensors[x].shape, graph.tensors[x].shapeSignature
        if not has_range(graph.tensors[out]) or shape is None or axes is None:
            continue
        summed = axes.reshape(-1) % len(shape)
        lengths = np.asarray(shape)[summed]
        if (lengths <= 0).any() or (signature is not None and (np.asarray(signature)[summed] < 0).any()):
            continue  # a length the file leaves open (-1 in its signature) has no count
        count = float(np.prod(lengths))
        low, high = (bound / count for bound in _calibrated(graph.tensors[out]))
        name = graph.tensors[out].name or b"sum"
        mean = tensor_like(graph, out, name + b"/mean", schema.TensorType.FLOAT32, _range(low, high))
        op.opcodeIndex = opcode(model, schema.BuiltinOperator.MEAN)
        op.outputs = [mean]
        graph.operators.insert(graph.operators.index(op) + 1, new_op(
            model, schema.BuiltinOperator.MUL, [mean, scalar_constant(model, graph, count, name, b"count")], [out]))
        changed = True
    return changed


def _bounds_within_range(model) -> bool:
    """Every constant bound of a MINIMUM or MAXIMUM clipped to the calibrated range of the value it bounds,
    in place; returns whether one changed.

    Such an op keeps one scale for its inputs and output, and TFLite's int16x8 quantizer stored a bound
    far outside the value's range by wrapping it around: Keras 3's UnitNormalization caps 1/‖x‖ at 1e12,
    which became -0.8, and every output with it (0 % agreement). Inside the value's calibrated range the
    clipped bound does the same."""
    changed = False
    for graph, op in ops_running(model, schema.BuiltinOperator.MINIMUM, schema.BuiltinOperator.MAXIMUM):
        inputs = [int(i) for i in op.inputs]
        bounds = [float_constant(model, graph, i) for i in inputs]
        if len(inputs) != 2 or sum(b is not None for b in bounds) != 1:
            continue
        at = 0 if bounds[0] is not None else 1
        span = _calibrated(graph.tensors[inputs[1 - at]])
        if span is None:
            continue
        clipped = np.clip(bounds[at], *span)
        if not np.array_equal(clipped, bounds[at]):
            op.inputs[at] = array_constant(model, graph, clipped, graph.tensors[inputs[at]].name, b"clipped")
            changed = True
    return changed


def _selects_as_sums(model) -> bool:
    """Every SELECT_V2(c, a, b) of float values as a * m + b * n, m and n the condition and its negation
    as 0 and 1, in place; returns whether there was one.

    TFLite's int16x8 quantizer has no int16 form of SELECT_V2 and refused every model with a causal or
    padding mask on its attention (the trace writes it as a select of each score or a floor under its
    row). A constant condition (a causal mask, folded) gives constant factors; a computed one (a padding
    mask) gives CASTs, which `without_integer_ops` takes out while the quantizer runs. The two products
    take the calibrated range of their value widened to 0; the sum keeps the select's."""
    changed = False
    for graph, op in ops_running(model, schema.BuiltinOperator.SELECT_V2):
        condition, *values = (int(i) for i in op.inputs)
        keep = constant(model, graph, condition, schema.TensorType.BOOL)
        out = int(op.outputs[0])
        spans = [_value_range(model, graph, value) for value in values]
        if None in spans or not has_range(graph.tensors[out]) or all(span == (0.0, 0.0) for span in spans) or \
                graph.tensors[condition].type != schema.TensorType.BOOL:
            continue
        name = graph.tensors[out].name or b"select"
        ops, products = [], []
        for value, (low, high), negated in zip(values, spans, (False, True)):
            if low == high == 0.0:  # a constant 0 (Keras 3 zeroes padded positions): no product to add
                continue
            factor = _mask_factor(model, graph, condition, keep, negated, name, ops)
            product = tensor_like(graph, out, graph.tensors[factor].name + b"_part", schema.TensorType.FLOAT32,
                                  _range(min(low, 0.0), max(high, 0.0)))
            ops.append(new_op(model, schema.BuiltinOperator.MUL, [value, factor], [product]))
            products.append(product)
        if len(products) == 1:  # the one product is the select's value
            ops[-1].outputs = [out]
            graph.operators[graph.operators.index(op)] = ops.pop()
        else:
            op.inputs = products
            turn_into(model, op, schema.BuiltinOperator.ADD)
        at = next(i for i, o in enumerate(graph.operators) if out in map(int, o.outputs))
        graph.operators[at:at] = ops
        changed = True
    return changed


def _value_range(model, graph, index: int) -> Optional[tuple[float, float]]:
    """A float tensor's calibrated range, or a float constant's (the 0 Keras 3 writes at padded positions)."""
    span = _calibrated(graph.tensors[index])
    if span is not None:
        return span
    values = float_constant(model, graph, index)
    return None if values is None or not values.size else (float(values.min()), float(values.max()))


def _mask_factor(model, graph, condition: int, keep: Optional[np.ndarray], negated: bool, name: bytes,
                 ops: list) -> int:
    """The condition (or its negation) as 0 and 1: a constant for a constant condition, else a CAST of it
    (of its LOGICAL_NOT), appended to `ops`."""
    suffix = b"where_false" if negated else b"where_true"
    if keep is not None:
        return array_constant(model, graph, (~keep if negated else keep).astype(np.float32), name, suffix)
    mask = condition
    if negated:
        mask = tensor_like(graph, condition, name + b"/where_false_mask", schema.TensorType.BOOL)
        ops.append(new_op(model, schema.BuiltinOperator.LOGICAL_NOT, [condition], [mask]))
    factor = tensor_like(graph, condition, name + b"/" + suffix, schema.TensorType.FLOAT32, _range(0.0, 1.0))
    cast = new_op(model, schema.BuiltinOperator.CAST, [mask], [factor])
    cast.builtinOptionsType, cast.builtinOptions = schema.BuiltinOptions.CastOptions, schema.CastOptionsT()
    cast.builtinOptions.inDataType, cast.builtinOptions.outDataType = schema.TensorType.BOOL, schema.TensorType.FLOAT32
    ops.append(cast)
    return factor


def _calibrated(tensor) -> Optional[tuple[float, float]]:
    """A float tensor's calibrated [min, max], or None."""
    return (float(tensor.quantization.min[0]), float(tensor.quantization.max[0])) if has_range(tensor) else None


def _range(low: float, high: float):
    quantization = schema.QuantizationParametersT()
    quantization.min, quantization.max = [low], [high]
    return quantization


def _unshare_constants(model) -> bool:
    """Give each op whose input takes a scale from its other tensors (`_SCALED_BY_OP`: a bias, a FILL's
    value) its own copy of a constant that another op reads too, in place; returns whether it did."""
    changed = False
    for graph in model.subgraphs:
        readers = readers_of(graph)
        for op in graph.operators:
            position = _SCALED_BY_OP.get(builtin_of(model, op))
            if position is None or len(op.inputs) <= position or int(op.inputs[position]) < 0:
                continue
            constant = int(op.inputs[position])
            if len(readers.get(constant, [])) > 1 and readers[constant][0] is not op:
                op.inputs = [*op.inputs[:position], _copy_tensor(graph, constant), *op.inputs[position + 1:]]
                changed = True
    return changed


def _copy_tensor(graph, index: int) -> int:
    """A second tensor for the constant `index` (same buffer; `_unshare_buffers` gives it its own)."""
    copy = copy_module.deepcopy(graph.tensors[index])
    copy.name = graph.tensors[index].name + b"/" + str(len(graph.tensors)).encode()
    graph.tensors.append(copy)
    return len(graph.tensors) - 1


def _unshare_buffers(model) -> bool:
    """Give every constant tensor a buffer of its own, in place; returns whether any was shared.

    The converter shares one buffer between constants whose bytes are equal, whatever their types
    (a float32 0.0 and an int32 0); TFLite's int16x8 quantizer then rewrites the shared bytes as
    int16 for the float one and leaves the int32 one reading 2 bytes where it needs 4, a file the
    interpreter refuses. Identical buffers are merged again when the file is written
    (`convert.deduplicated`)."""
    changed = False
    for graph in model.subgraphs:
        seen: set[int] = set()
        for tensor in graph.tensors:
            index = int(tensor.buffer)
            source = model.buffers[index] if 0 < index < len(model.buffers) else None
            if source is None or source.data is None or len(source.data) == 0:
                continue
            if index in seen:
                copy = schema.BufferT()
                copy.data = bytes(source.data)
                model.buffers.append(copy)
                tensor.buffer = len(model.buffers) - 1
                changed = True
            seen.add(index)
    return changed


def repair_zero_scales(quantized: bytes, calibrated: bytes) -> tuple[bytes, int]:
    """`quantized` with its zero-scale int16 tensors given a scale; returns it and how many were repaired.

    `quantized` is the int16x8 file made from `calibrated`, as `for_int16x8` left it.
    """
    model, source = read_model(quantized), read_model(calibrated)
    repaired = 0
    for graph, float_graph in zip(model.subgraphs, source.subgraphs):
        by_name = {tensor.name: index for index, tensor in enumerate(float_graph.tensors)}
        scales = {}
        for index, tensor in enumerate(graph.tensors):
            scale = _calibrated_scale(float_graph, by_name.get(tensor.name)) if _zero_scale(tensor) else None
            if scale is not None:
                tensor.quantization.scale, tensor.quantization.zeroPoint = [scale], [0]
                scales[index] = scale
        for op in graph.operators:
            builtin = builtin_of(model, op)
            if builtin == schema.BuiltinOperator.FILL and int(op.outputs[0]) in scales:
                value = graph.tensors[int(op.inputs[1])]  # FILL keeps its value's scale
                value.quantization.scale, value.quantization.zeroPoint = [scales[int(op.outputs[0])]], [0]
            if builtin in _BIASED and len(op.inputs) > 2 and int(op.inputs[2]) >= 0 and int(op.inputs[0]) in scales:
                _requantize_bias(model, graph, op, scales[int(op.inputs[0])], source, float_graph, by_name)
        repaired += len(scales)
    return (write_model(model), repaired) if repaired else (quantized, 0)


def _zero_scale(tensor) -> bool:
    q = tensor.quantization
    return (tensor.type == schema.TensorType.INT16 and q is not None and q.scale is not None
            and len(q.scale) == 1 and float(q.scale[0]) == 0.0)


def _calibrated_scale(float_graph, index):
    """The symmetric int16 scale of a tensor's calibrated range, or None when it has none."""
    q = None if index is None else float_graph.tensors[index].quantization
    if q is None or q.min is None or q.max is None or len(q.min) != 1:
        return None
    bound = max(abs(float(q.min[0])), abs(float(q.max[0])))
    return bound / islands.INT16_MAX if bound > 0 else None


def _requantize_bias(model, graph, op, input_scale: float, source, float_graph, by_name) -> None:
    bias, weights = graph.tensors[int(op.inputs[2])], graph.tensors[int(op.inputs[1])]
    float_index = by_name.get(bias.name)
    values = None if float_index is None else float_constant(source, float_graph, float_index)
    if values is None or weights.quantization is None or weights.quantization.scale is None:
        return
    scales = input_scale * np.asarray(weights.quantization.scale, np.float64)  # one, or one per channel
    dtype = np.int64 if bias.type == schema.TensorType.INT64 else np.int32
    limit = np.iinfo(dtype)
    quantized = np.clip(np.round(values / np.broadcast_to(scales, values.shape)), limit.min, limit.max).astype(dtype)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(quantized.tobytes(), np.uint8)
    model.buffers.append(buffer)
    bias.buffer = len(model.buffers) - 1
    bias.quantization.scale = [float(s) for s in scales]
    bias.quantization.zeroPoint = [0] * len(scales)

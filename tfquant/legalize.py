"""Edits of the float32 `.tflite` file, before calibration: a signature that names the IO, and ops made quantizable.

The converter emits a few float ops that TFLite's int8 quantizer cannot make integer although
an equivalent integer form exists: `NEG` (Keras 3's LayerNormalization, ConvNeXt), `SQUARE`
(Keras 3's UnitNormalization and `ops.normalize`), `ZEROS_LIKE` (the state a masked recurrent
step keeps), `ELU` (the activation, in both Keras versions). Left alone, each stays float between
a DEQUANTIZE and a QUANTIZE. Rewritten on the float file — `NEG(x)` as `MUL(x, -1)`, `SQUARE(x)`
as `MUL(x, x)`, `ZEROS_LIKE(x)` as `MUL(x, 0)`, `ELU(x)` as `x + EXP(m) - 1 - m` with `m = -RELU(-x)` —
they compute the same values in float and quantize like any MUL, ADD or EXP. Softplus, which
converts as `LOG(EXP(x) + 1)` (integer, but with EXP's int8 scale spanning e^max), becomes
`RELU(x) + LOG(EXP(-|x|) + 1)`, and SELU's `EXP(x)`, read only where x <= 0, becomes
`EXP(min(x, 0))`. Every rewrite is listed in the export's notes.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.tools import flatbuffer_utils

from .flatbuffer import (builtin_of, drop_unused_opcodes, float_constant, float_tensor_like, is_float, new_op,
                         producers_of, read_model, readers_of, replace_constant, scalar_constant, turn_into,
                         write_model)

SIGNATURE = "serving_default"
_Rewrite = Callable[[object, object, object], bool]
_REWRITES: dict[int, list[tuple[str, _Rewrite, bool]]] = {}


def _registers(op: int, description: str, *, changes_weights: bool = False):
    def wrap(func: _Rewrite) -> _Rewrite:
        _REWRITES.setdefault(op, []).append((description, func, changes_weights))
        return func

    return wrap


def name_signature(data: bytes, inputs: list[str], outputs: list[str]) -> bytes:
    """Give the file a `serving_default` signature: the main graph's inputs and outputs, in order, by these names."""
    model = read_model(data)
    graph = model.subgraphs[0]
    if len(graph.inputs) != len(inputs) or len(graph.outputs) != len(outputs):
        raise ValueError(f"the file has {len(graph.inputs)} inputs and {len(graph.outputs)} outputs, "
                         f"the model {len(inputs)} and {len(outputs)}")
    signature = schema.SignatureDefT()
    signature.signatureKey = SIGNATURE
    signature.subgraphIndex = 0
    signature.inputs = [_tensor_map(name, index) for name, index in zip(inputs, graph.inputs)]
    signature.outputs = [_tensor_map(name, index) for name, index in zip(outputs, graph.outputs)]
    model.signatureDefs = [signature]
    return write_model(model)


def _tensor_map(name: str, index: int):
    entry = schema.TensorMapT()
    entry.name = name
    entry.tensorIndex = int(index)
    return entry


def make_quantizable(data: bytes, *, keep_weights: bool = False) -> tuple[bytes, list[str]]:
    """Rewrite float ops the int8 quantizer cannot handle into equivalent ones it can; returns the notes.

    `keep_weights` leaves every weight value as it is (a pruned or clustered model, whose zeros and
    shared values are the point): rewrites that change weights are skipped."""
    model = read_model(data)
    codes = [flatbuffer_utils.get_builtin_code_from_operator_code(c) for c in model.operatorCodes]
    counts: dict[str, int] = {}
    for graph in model.subgraphs:
        for op in list(graph.operators):  # a rewrite may insert ops (and operator codes) before `op`
            for description, rewrite, changes_weights in _REWRITES.get(codes[op.opcodeIndex], []):
                if not (keep_weights and changes_weights) and rewrite(model, graph, op):
                    counts[description] = counts.get(description, 0) + 1
                    break
    if not counts:
        return data, []
    drop_unused_opcodes(model)
    return write_model(model), [f"{description} ({count}×), so that int8 covers it" for description, count in counts.items()]


@_registers(schema.BuiltinOperator.NEG, "NEG(x) as MUL(x, -1)")
def _neg(model, graph, op) -> bool:
    if not is_float(graph, op.inputs[0]):
        return False
    op.inputs = [op.inputs[0], scalar_constant(model, graph, -1.0, graph.tensors[op.outputs[0]].name, b"minus_one")]
    turn_into(model, op, schema.BuiltinOperator.MUL)
    return True


@_registers(schema.BuiltinOperator.ZEROS_LIKE, "ZEROS_LIKE(x) as MUL(x, 0)")
def _zeros_like(model, graph, op) -> bool:
    if not is_float(graph, op.inputs[0]):
        return False
    op.inputs = [op.inputs[0], scalar_constant(model, graph, 0.0, graph.tensors[op.outputs[0]].name, b"zero")]
    turn_into(model, op, schema.BuiltinOperator.MUL)
    return True


@_registers(schema.BuiltinOperator.SQUARE, "SQUARE(x) as MUL(x, x)")
def _square(model, graph, op) -> bool:
    if not is_float(graph, op.inputs[0]):
        return False
    op.inputs = [op.inputs[0], op.inputs[0]]
    turn_into(model, op, schema.BuiltinOperator.MUL)
    return True


@_registers(schema.BuiltinOperator.ELU, "ELU(x) as x + EXP(m) - 1 - m, m = -RELU(-x)")
def _elu(model, graph, op) -> bool:
    """TFLite's int8 quantizer leaves ELU float. Spelled with MUL, RELU, EXP and ADD, each int8,
    and none that ties its input's scale to its output's: with MINIMUM(x, 0), the quantizer gave
    x the scale of the negative half and clipped every positive value."""
    x, out = int(op.inputs[0]), int(op.outputs[0])
    if not is_float(graph, x):
        return False
    name = graph.tensors[out].name or b"elu"
    negative, relu_neg, min0 = _negative_part(model, graph, x, name)
    made = {part: float_tensor_like(graph, x, name + b"/" + part) for part in (b"exp", b"exp_minus_one", b"rest")}
    ops = negative + [
        new_op(model, schema.BuiltinOperator.EXP, [min0], [made[b"exp"]]),
        new_op(model, schema.BuiltinOperator.ADD, [made[b"exp"], scalar_constant(model, graph, -1.0, name, b"minus_one_c")],
            [made[b"exp_minus_one"]]),
        new_op(model, schema.BuiltinOperator.ADD, [made[b"exp_minus_one"], relu_neg], [made[b"rest"]]),
    ]
    at = graph.operators.index(op)
    graph.operators[at:at] = ops  # before the op that becomes the sum: the graph runs in list order
    op.inputs = [x, made[b"rest"]]
    turn_into(model, op, schema.BuiltinOperator.ADD)
    return True


def _negative_part(model, graph, x: int, name: bytes) -> tuple[list, int, int]:
    """Ops that make RELU(-x) and min(x, 0) = -RELU(-x) of `x`, and those two tensors."""
    made = {part: float_tensor_like(graph, x, name + b"/" + part) for part in (b"neg", b"relu_neg", b"min0")}
    ops = [
        new_op(model, schema.BuiltinOperator.MUL, [x, scalar_constant(model, graph, -1.0, name, b"minus_one_a")], [made[b"neg"]]),
        new_op(model, schema.BuiltinOperator.RELU, [made[b"neg"]], [made[b"relu_neg"]]),
        new_op(model, schema.BuiltinOperator.MUL, [made[b"relu_neg"], scalar_constant(model, graph, -1.0, name, b"minus_one_b")],
            [made[b"min0"]]),
    ]
    return ops, made[b"relu_neg"], made[b"min0"]


# A comparison of x with 0, and which SELECT_V2 input (1: where true, 2: where false) takes x <= 0.
_AT_OR_BELOW_ZERO = {schema.BuiltinOperator.GREATER: 2, schema.BuiltinOperator.GREATER_EQUAL: 2,
                     schema.BuiltinOperator.LESS: 1, schema.BuiltinOperator.LESS_EQUAL: 1}
_BY_A_CONSTANT = (schema.BuiltinOperator.ADD, schema.BuiltinOperator.SUB, schema.BuiltinOperator.MUL)


@_registers(schema.BuiltinOperator.EXP, "the EXP of an x <= 0 branch (SELU) read at min(x, 0)")
def _exp_of_the_negative_branch(model, graph, op) -> bool:
    """SELU converts as SELECT_V2(x > 0, λx, λα(EXP(x) - 1)): the EXP's value is used only where x <= 0,
    but its int8 scale spans e^max, which rounds every e^x of the negative half to 0 (a Conv1D with a
    SELU head lost 2.2 points). EXP(min(x, 0)) is the same where it is used and stays in (0, 1]."""
    x = int(op.inputs[0])
    if not is_float(graph, x):
        return False
    producer, readers = producers_of(graph), readers_of(graph)
    outputs = {int(o) for o in graph.outputs}
    tensor = int(op.outputs[0])
    while True:  # through ops that add, subtract or multiply a constant, to the SELECT_V2
        found = readers.get(tensor, [])
        if len(found) != 1 or tensor in outputs:
            return False
        reader = found[0]
        code = builtin_of(model, reader)
        if code == schema.BuiltinOperator.SELECT_V2:
            break
        others = [int(i) for i in reader.inputs if int(i) != tensor]
        fused = getattr(reader.builtinOptions, "fusedActivationFunction", schema.ActivationFunctionType.NONE)
        if code not in _BY_A_CONSTANT or len(others) != 1 or float_constant(model, graph, others[0]) is None or \
                fused != schema.ActivationFunctionType.NONE:
            return False
        tensor = int(reader.outputs[0])
    compare = producer.get(int(reader.inputs[0]))
    branch = None if compare is None else _AT_OR_BELOW_ZERO.get(builtin_of(model, compare))
    if branch is None or int(compare.inputs[0]) != x or int(reader.inputs[branch]) != tensor:
        return False
    zero = float_constant(model, graph, int(compare.inputs[1]))
    if zero is None or np.any(zero != 0):
        return False
    negative, _, min0 = _negative_part(model, graph, x, graph.tensors[int(op.outputs[0])].name or b"exp")
    at = graph.operators.index(op)
    graph.operators[at:at] = negative
    op.inputs = [min0]
    return True


@_registers(schema.BuiltinOperator.LOG, "softplus LOG(EXP(x) + 1) as RELU(x) + LOG(EXP(-|x|) + 1)")
def _softplus(model, graph, op) -> bool:
    """The converter spells softplus LOG(EXP(x) + 1). In int8 EXP(x) spans [0, e^max]: its scale rounds
    every value below a few units to 0 or 1, and LOG then returns a handful of levels (a Dense with
    softplus lost 11 points of 92). RELU(x) + LOG(EXP(-|x|) + 1) is the same function whose EXP
    stays in (0, 1] and whose LOG in (0, ln 2], each with a scale of its own."""
    producer, readers = producers_of(graph), readers_of(graph)
    add = producer.get(int(op.inputs[0]))
    if add is None or builtin_of(model, add) != schema.BuiltinOperator.ADD or add.builtinOptions is None or \
            add.builtinOptions.fusedActivationFunction != schema.ActivationFunctionType.NONE:
        return False
    exp = next((producer.get(int(i)) for i in add.inputs if producer.get(int(i)) is not None), None)
    one = [float_constant(model, graph, int(i)) for i in add.inputs if producer.get(int(i)) is None]
    if exp is None or builtin_of(model, exp) != schema.BuiltinOperator.EXP or len(one) != 1 or one[0] is None or \
            one[0].size != 1 or float(one[0].reshape(-1)[0]) != 1.0:
        return False
    outputs = {int(o) for o in graph.outputs}
    if any(len(readers.get(t, [])) != 1 or t in outputs for t in (int(exp.outputs[0]), int(add.outputs[0]))):
        return False
    x, out = int(exp.inputs[0]), int(op.outputs[0])
    if not is_float(graph, x):
        return False
    name = graph.tensors[out].name or b"softplus"
    made = {part: float_tensor_like(graph, x, name + b"/" + part) for part in (b"neg", b"relu_neg", b"relu", b"abs", b"minus_abs",
                                                                   b"log1p")}
    before_exp = [
        new_op(model, schema.BuiltinOperator.MUL, [x, scalar_constant(model, graph, -1.0, name, b"minus_one_a")], [made[b"neg"]]),
        new_op(model, schema.BuiltinOperator.RELU, [made[b"neg"]], [made[b"relu_neg"]]),
        new_op(model, schema.BuiltinOperator.RELU, [x], [made[b"relu"]]),
        new_op(model, schema.BuiltinOperator.ADD, [made[b"relu"], made[b"relu_neg"]], [made[b"abs"]]),
        new_op(model, schema.BuiltinOperator.MUL, [made[b"abs"], scalar_constant(model, graph, -1.0, name, b"minus_one_b")],
            [made[b"minus_abs"]]),
    ]
    exp.inputs = [made[b"minus_abs"]]
    op.outputs = [made[b"log1p"]]
    at = graph.operators.index(exp)
    graph.operators[at:at] = before_exp
    graph.operators.insert(graph.operators.index(op) + 1,
                           new_op(model, schema.BuiltinOperator.ADD, [made[b"relu"], made[b"log1p"]], [out]))
    return True


@_registers(schema.BuiltinOperator.CAST, "the mask multiply of Masking(0) as MUL(x, 1)")
def _masking_multiply(model, graph, op) -> bool:
    """tf_keras' Masking(mask_value=0) returns x * CAST(REDUCE_ANY(NOT_EQUAL(x, 0))): where the mask is
    0 every feature of x already is 0, so the product is x. The CAST (bool to float) has no int8
    form; MUL(x, 1) has, and the CAST is dropped."""
    cast_out = int(op.outputs[0])
    if graph.tensors[int(op.inputs[0])].type != schema.TensorType.BOOL or not is_float(graph, cast_out):
        return False
    producer = producers_of(graph)
    reduce_any = producer.get(int(op.inputs[0]))
    if reduce_any is None or builtin_of(model, reduce_any) != schema.BuiltinOperator.REDUCE_ANY:
        return False
    compare = producer.get(int(reduce_any.inputs[0]))
    if compare is None or builtin_of(model, compare) != schema.BuiltinOperator.NOT_EQUAL:
        return False
    x, mask_value = (int(i) for i in compare.inputs)
    values = float_constant(model, graph, mask_value)
    if values is None or np.any(values != 0):
        return False
    readers = readers_of(graph).get(cast_out, [])
    if not readers or cast_out in [int(i) for i in graph.outputs] or any(
            builtin_of(model, r) != schema.BuiltinOperator.MUL or sorted(int(i) for i in r.inputs) != sorted([x, cast_out])
            or (r.builtinOptions is not None and r.builtinOptions.fusedActivationFunction
                != schema.ActivationFunctionType.NONE) for r in readers):
        return False
    one = scalar_constant(model, graph, 1.0, graph.tensors[cast_out].name, b"one")
    for reader in readers:
        reader.inputs = [x, one]
    graph.operators.remove(op)
    return True


_OTHER_FLOATS = (schema.TensorType.FLOAT64, schema.TensorType.FLOAT16, schema.TensorType.BFLOAT16)


@_registers(schema.BuiltinOperator.CAST, "float32 cast to float64 or float16 and back as the float32 tensor")
def _float_round_trip(model, graph, op) -> bool:
    """A model whose Input is declared float64 or float16 (its layers compute in float32) traces, fed
    float32, to CAST(float32 -> float64) and CAST back: no TFLite kernel computes in float64, and in
    an int8 file both CASTs stay float. The layers read the float32 tensor itself (for float16 that
    skips a rounding to half precision, 2^-11 of the value, far inside an int8 step)."""
    inner = _round_trip(model, graph, op, _OTHER_FLOATS, (schema.TensorType.FLOAT32,))
    if inner is None:
        return False
    _read_around(graph, op, inner)
    return True


_IDS = (schema.TensorType.INT32, schema.TensorType.INT64)


@_registers(schema.BuiltinOperator.CAST, "integer ids cast to float and back read as integers")
def _ids_round_trip(model, graph, op) -> bool:
    """Token ids fed to an Embedding whose Input is declared float (Keras' default), or cast by a layer of
    float policy on the way: CAST(int -> float32) then CAST back to int, both float ops in an int8 file.
    The ids are read as they are (exact below 2^24, as float32 holds them)."""
    inner = _round_trip(model, graph, op, (schema.TensorType.FLOAT32, schema.TensorType.FLOAT64), _IDS)
    if inner is None:
        return False
    if graph.tensors[int(inner.inputs[0])].type == graph.tensors[int(op.outputs[0])].type:
        _read_around(graph, op, inner)
    else:  # int32 -> float -> int64 (or back): one integer CAST
        op.inputs = [int(inner.inputs[0])]
        _drop_if_unread(graph, inner)
    return True


def _round_trip(model, graph, op, middle_types, end_types):
    """The CAST before `op` (a CAST) when the pair takes a type in `end_types` through one in `middle_types`
    to a type in `end_types`, and `op`'s output is not a graph output; else None."""
    inner = producers_of(graph).get(int(op.inputs[0]))
    if inner is None or builtin_of(model, inner) != schema.BuiltinOperator.CAST or \
            graph.tensors[int(op.inputs[0])].type not in middle_types or \
            graph.tensors[int(op.outputs[0])].type not in end_types or \
            graph.tensors[int(inner.inputs[0])].type not in end_types or \
            int(op.outputs[0]) in [int(o) for o in graph.outputs]:
        return None
    return inner


def _read_around(graph, op, inner) -> None:
    """The readers of `op`'s output read `inner`'s input instead; `op` goes, and `inner` when nothing else reads it."""
    source, out = int(inner.inputs[0]), int(op.outputs[0])
    for reader in readers_of(graph).get(out, []):
        reader.inputs = [source if int(i) == out else int(i) for i in reader.inputs]
    graph.operators.remove(op)
    _drop_if_unread(graph, inner)


def _drop_if_unread(graph, op) -> None:
    middle = int(op.outputs[0])
    if not readers_of(graph).get(middle) and middle not in [int(o) for o in graph.outputs]:
        graph.operators.remove(op)


@_registers(schema.BuiltinOperator.SOFTMAX, "dense weights before a SOFTMAX centered across its classes",
            changes_weights=True)
def _center_logits(model, graph, op) -> bool:
    """Softmax is blind to a shift every logit of a sample shares; int8 is not: what every class's
    logit gets alike (an unnormalized feature weighed alike by every class, and the sum of many
    small common parts) spends the logits' 256 levels on an offset. Subtracting each input
    column's mean weight over the classes (and the mean bias) removes it and leaves the softmax's
    output as it was."""
    logits = int(op.inputs[0])
    producer = producers_of(graph).get(logits)
    readers = readers_of(graph).get(logits, [])
    if producer is None or len(readers) != 1 or logits in [int(o) for o in graph.outputs] or \
            builtin_of(model, producer) != schema.BuiltinOperator.FULLY_CONNECTED or producer.builtinOptions is None or \
            producer.builtinOptions.fusedActivationFunction != schema.ActivationFunctionType.NONE:
        return False
    weights = float_constant(model, graph, int(producer.inputs[1]))
    if weights is None or weights.ndim != 2 or weights.shape[0] < 2:
        return False
    centered = weights - weights.mean(axis=0, keepdims=True)
    if np.allclose(centered, weights):
        return False
    replace_constant(model, graph, int(producer.inputs[1]), centered)
    bias = int(producer.inputs[2]) if len(producer.inputs) > 2 else -1
    values = float_constant(model, graph, bias) if bias >= 0 else None
    if values is not None:
        replace_constant(model, graph, bias, values - values.mean())
    return True


def shapes_read_integers(data: bytes) -> tuple[bytes, int]:
    """Let SHAPE read the integer tensor behind a DEQUANTIZE: a shape does not depend on the dtype.

    LiteRT Quantizer leaves SHAPE (the batch size of a Flatten or Reshape with an open batch) on a
    float copy of its integer input; reading the integer tensor instead gives the same shape and
    makes the DEQUANTIZE, and so the file's last float ops, go away. Returns the file and how
    many SHAPE ops were re-pointed.
    """
    model = read_model(data)
    codes = [flatbuffer_utils.get_builtin_code_from_operator_code(c) for c in model.operatorCodes]
    integer = {schema.TensorType.INT8, schema.TensorType.UINT8, schema.TensorType.INT16}
    moved = 0
    for graph in model.subgraphs:
        dequantized = {int(op.outputs[0]): int(op.inputs[0]) for op in graph.operators
                       if codes[op.opcodeIndex] == schema.BuiltinOperator.DEQUANTIZE
                       and graph.tensors[int(op.inputs[0])].type in integer}
        for op in graph.operators:
            if codes[op.opcodeIndex] == schema.BuiltinOperator.SHAPE and int(op.inputs[0]) in dequantized:
                op.inputs = [dequantized[int(op.inputs[0])]]
                moved += 1
        read = {int(i) for op in graph.operators for i in op.inputs} | {int(i) for i in graph.outputs}
        graph.operators = [op for op in graph.operators
                           if not (codes[op.opcodeIndex] == schema.BuiltinOperator.DEQUANTIZE
                                   and int(op.outputs[0]) in dequantized and int(op.outputs[0]) not in read)]
    if not moved:
        return data, 0
    drop_unused_opcodes(model)
    return write_model(model), moved

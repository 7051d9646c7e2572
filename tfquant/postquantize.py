"""Passes over the quantized file, where TFLite's quantizer leaves an op float or stores it wrong.

`after_quantizer` runs them on every int8 and int16x8 file `convert.quantize_calibrated` makes:
comparisons that read int8, a uint8 or int8 input read as it is, boolean masks selected straight
into int8, ONE_HOT with its values on its output's scale, ops that copy values (REVERSE_V2) on
their input's scale, copies between float ops (a float island's) left float, and BATCH_MATMUL's
right operand on a symmetric scale, which every runtime reads alike. The float file's rewrites,
before calibration, are in `legalize`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.tools import flatbuffer_utils

from .flatbuffer import (COPIES, array_constant, builtin_codes, builtin_of, drop_unused_opcodes, float_constant,
                         is_constant, is_float, new_op, opcode, per_tensor, producers_of, read_model, readers_of,
                         tensor_like, write_model)


def after_quantizer(data: bytes, *, int8: bool) -> bytes:
    """The quantized file with what TFLite's quantizer leaves float or wrong mended: in an int8 file,
    comparisons (`_integer_comparisons`), uint8 or int8 inputs (`_integer_inputs`), boolean masks
    (`_integer_masks`), copies between float ops (`_float_copies`) and the right operands of
    BATCH_MATMUL (`_symmetric_products`); in any quantized file, ONE_HOT (`_integer_one_hot`) and ops
    that copy values (`_copies_requantized`). The file is read and written once, and not read into objects at all
    when it holds none of the ops these passes look for."""
    passes = [(_integer_one_hot, {schema.BuiltinOperator.ONE_HOT}), (_integer_copies, set(COPIES)),
              (_copies_requantized, set(COPIES))]
    if int8:
        passes += [(_integer_comparisons, _COMPARISONS), (_integer_inputs, {schema.BuiltinOperator.CAST}),
                   (_integer_masks, {schema.BuiltinOperator.CAST}), (_float_copies, set(COPIES)),
                   (_symmetric_products, {schema.BuiltinOperator.BATCH_MATMUL})]
    present = set(builtin_codes(schema.Model.GetRootAs(data, 0)))
    wanted = [mend for mend, ops in passes if present & ops]
    if not wanted:
        return data
    model = read_model(data)
    codes = [flatbuffer_utils.get_builtin_code_from_operator_code(c) for c in model.operatorCodes]
    changed = False
    for mend in wanted:
        changed = mend(model, codes) or changed
    if not changed:
        return data
    drop_unused_opcodes(model)
    return write_model(model)


def _integer_comparisons(model, codes: list[int]) -> bool:
    """In an int8 file, a comparison (EQUAL, NOT_EQUAL, LESS, ...) still reads a DEQUANTIZE of an
    int8 tensor and a float constant (Masking's NOT_EQUAL(x, 0) on a float sequence) compares the
    int8 tensor with the constant in its scale instead: TFLite's comparison kernels take int8, its
    quantizer leaves them float. Only where every constant value lies on the int8 grid, so that
    every answer is the float comparison's. In place; returns whether anything changed."""
    changed = False
    for graph in model.subgraphs:
        producer = producers_of(graph)
        for op in list(graph.operators):
            if codes[op.opcodeIndex] not in _COMPARISONS or len(op.inputs) != 2:
                continue
            sources = [producer.get(int(i)) for i in op.inputs]
            at = next((k for k, p in enumerate(sources) if p is not None and codes[p.opcodeIndex] ==
                       schema.BuiltinOperator.DEQUANTIZE and graph.tensors[int(p.inputs[0])].type ==
                       schema.TensorType.INT8), None)
            if at is None:
                continue
            quantized = int(sources[at].inputs[0])
            q = graph.tensors[quantized].quantization
            if q is None or q.scale is None or len(q.scale) != 1:
                continue
            scale, zero = float(q.scale[0]), int(q.zeroPoint[0])
            other = int(op.inputs[1 - at])
            values = float_constant(model, graph, other)
            if values is None:
                continue
            levels = np.round(values / scale) + zero
            if np.any(levels < -128) or np.any(levels > 127) or \
                    not np.allclose((levels - zero) * scale, values, rtol=0, atol=1e-6 * max(scale, 1e-12)):
                continue
            inputs = list(op.inputs)
            inputs[at], inputs[1 - at] = quantized, _int8_constant(model, graph, levels, scale, zero,
                                                                   graph.tensors[other].name)
            op.inputs = inputs
            op.opcodeIndex = opcode(model, codes[op.opcodeIndex], at_least=2)  # the int8 version of every comparison
            changed = True
        _drop_unread(graph, codes, schema.BuiltinOperator.DEQUANTIZE)
    return changed


def _integer_inputs(model, codes: list[int]) -> bool:
    """In an int8 file, an integer input CAST to float only to be quantized again is read as it is:
    its QUANTIZE ops take the integer values (scale 1, zero point 0: each value is the number
    itself) and requantize them to int8, and the float CAST goes. A uint8, int8 or int16 input
    (raw image bytes, as a camera hands them over) is read directly; an int32 or int64 one (a
    numeric column of tabular data, an age or a count, that a Normalization reads), or int32 or
    int64 values the graph computed (ids a lookup made, fed to a dense layer), is first
    clamped to the int8 range's ends, which QUANTIZE saturates to anyway, and CAST to int16, where
    those ends fit in int16. The same values reach the int8 graph, and the file is integer
    throughout. In place (`codes` grows with any opcode added); returns whether anything changed."""
    changed = False
    for graph in model.subgraphs:
        readers = readers_of(graph)
        ends = {int(i) for i in graph.outputs}
        inputs = [int(i) for i in graph.inputs]
        computed = [int(o.inputs[0]) for o in graph.operators if codes[o.opcodeIndex] == schema.BuiltinOperator.CAST
                    and graph.tensors[int(o.inputs[0])].type in _INTEGER_IDS]  # ids a lookup made, say
        for index in dict.fromkeys(inputs + computed):
            tensor = graph.tensors[index]
            casts = readers.get(index, [])
            if tensor.type not in _READ_AS_IT_IS + _INTEGER_IDS or not casts or any(
                    codes[c.opcodeIndex] != schema.BuiltinOperator.CAST or not is_float(graph, int(c.outputs[0]))
                    or int(c.outputs[0]) in ends for c in casts):
                continue
            quantizes = [q for c in casts for q in readers.get(int(c.outputs[0]), [])]
            if not quantizes or not all(_quantizes_to_int8(graph, codes, q) for q in quantizes):
                continue
            read = index
            if tensor.type in _INTEGER_IDS:
                low, high = _int8_span(graph, quantizes)
                if low < np.iinfo(np.int16).min or high > np.iinfo(np.int16).max:
                    continue
                read, ops = _clamped_to_int16(model, graph, codes, index, low, high)
                at = min(k for k, o in enumerate(graph.operators) if any(o is c for c in casts))
                graph.operators[at:at] = ops
            graph.tensors[read].quantization = per_tensor(1.0, 0)
            for q in quantizes:
                q.inputs = [read]
            graph.operators = [o for o in graph.operators if not any(o is c for c in casts)]
            changed = True
    return changed


_READ_AS_IT_IS = (schema.TensorType.UINT8, schema.TensorType.INT8, schema.TensorType.INT16)


def _int8_span(graph, quantizes) -> tuple[int, int]:
    """The whole numbers at or beyond the ends of what the QUANTIZEs' int8 outputs can hold."""
    lows, highs = [], []
    for q in quantizes:
        params = graph.tensors[int(q.outputs[0])].quantization
        scale, zero = float(params.scale[0]), int(params.zeroPoint[0])
        lows.append((-128 - zero) * scale)
        highs.append((127 - zero) * scale)
    return int(np.floor(min(lows))), int(np.ceil(max(highs)))


def _clamped_to_int16(model, graph, codes: list[int], index: int, low: int, high: int) -> tuple[int, list]:
    """MINIMUM(MAXIMUM(x, low), high) CAST to int16: (the int16 tensor's index, the three new ops)."""
    source = graph.tensors[index]
    name = source.name
    floor = tensor_like(graph, index, name + b"/at_least", source.type)
    ceiling = tensor_like(graph, index, name + b"/at_most", source.type)
    narrow = tensor_like(graph, index, name + b"/int16", schema.TensorType.INT16)
    low_c, high_c = (array_constant(model, graph, np.array(v), name, str(v).encode(), tensor_type=source.type)
                     for v in (low, high))
    ops = [new_op(model, schema.BuiltinOperator.MAXIMUM, [index, low_c], [floor]),
           new_op(model, schema.BuiltinOperator.MINIMUM, [floor, high_c], [ceiling]),
           new_op(model, schema.BuiltinOperator.CAST, [ceiling], [narrow])]
    codes += [flatbuffer_utils.get_builtin_code_from_operator_code(c) for c in model.operatorCodes[len(codes):]]
    return narrow, ops


def _quantizes_to_int8(graph, codes: list[int], op) -> bool:
    return codes[op.opcodeIndex] == schema.BuiltinOperator.QUANTIZE and \
        graph.tensors[int(op.outputs[0])].type == schema.TensorType.INT8


def _integer_masks(model, codes: list[int]) -> bool:
    """In an int8 file, a boolean mask CAST to float only to be quantized is selected straight into
    int8: SELECT_V2(mask, 1, 0), with 1 and 0 stored on the QUANTIZE's output scale, writes what the
    QUANTIZE wrote, and the float CAST goes. A masked average (Embedding(mask_zero=True) and then
    GlobalAveragePooling1D) counts its tokens this way; the quantizer leaves that CAST float. In
    place (`codes` grows with any opcode added); returns whether anything changed."""
    changed = False
    for graph in model.subgraphs:
        readers = readers_of(graph)
        ends = {int(i) for i in graph.outputs}
        for cast in [o for o in graph.operators if codes[o.opcodeIndex] == schema.BuiltinOperator.CAST]:
            mask, middle = int(cast.inputs[0]), int(cast.outputs[0])
            quantizes = readers.get(middle, [])
            if graph.tensors[mask].type != schema.TensorType.BOOL or not is_float(graph, middle) or middle in ends \
                    or not quantizes or not all(_quantizes_to_int8(graph, codes, q) for q in quantizes):
                continue
            for quantize in quantizes:
                output = int(quantize.outputs[0])
                q = graph.tensors[output].quantization
                scale, zero = float(q.scale[0]), int(q.zeroPoint[0])
                name = graph.tensors[output].name
                on = _int8_constant(model, graph, _on_grid(np.array(1.0), scale, zero, np.int8), scale, zero,
                                    name + b"/true")
                off = _int8_constant(model, graph, _on_grid(np.array(0.0), scale, zero, np.int8), scale, zero,
                                     name + b"/false")
                select = _added(model, codes, schema.BuiltinOperator.SELECT_V2, [mask, on, off], [output])
                graph.operators[next(i for i, o in enumerate(graph.operators) if o is quantize)] = select
            graph.operators = [o for o in graph.operators if o is not cast]
            changed = True
    return changed


def _integer_copies(model, codes: list[int]) -> bool:
    """An op that copies values, left float between a DEQUANTIZE and the QUANTIZEs after it, copies the
    int8 tensor instead: its outputs are on its input's scale, and the QUANTIZEs that read them
    requantize int8 to int8 (int8 only: in 16x8 files some copies have no int16 kernel). tf_keras'
    `GRU(reset_after=False)` splits its recurrent product in three and reads two parts, and the
    quantizer left some of those SPLIT_Vs float. In place; returns whether anything changed."""
    changed = False
    for graph in model.subgraphs:
        producers, readers = producers_of(graph), readers_of(graph)
        kept = {int(i) for i in graph.outputs}
        rewired = False
        for op in graph.operators:
            at = COPIES.get(codes[op.opcodeIndex])
            if at is None or len(op.inputs) <= at or not is_float(graph, int(op.inputs[at])):
                continue
            before = producers.get(int(op.inputs[at]))
            if before is None or codes[before.opcodeIndex] != schema.BuiltinOperator.DEQUANTIZE:
                continue
            source = int(before.inputs[0])
            on_source = _scale(graph.tensors[source])
            outputs = [int(o) for o in op.outputs]
            requantized = all(o not in kept and all(codes[r.opcodeIndex] == schema.BuiltinOperator.QUANTIZE
                                                    for r in readers.get(o, [])) for o in outputs)
            if on_source is None or graph.tensors[source].type != schema.TensorType.INT8 or not requantized:
                continue
            inputs = [int(i) for i in op.inputs]
            inputs[at] = source
            op.inputs = inputs
            op.opcodeIndex = opcode(model, codes[op.opcodeIndex])  # int8 kernels need a later version
            copies = [tensor_like(graph, o, graph.tensors[o].name + b"/integer", graph.tensors[source].type,
                                  per_tensor(*on_source)) for o in outputs]
            op.outputs = copies
            for old, new in zip(outputs, copies):
                for reader in readers.get(old, []):
                    reader.inputs = [new if int(i) == old else int(i) for i in reader.inputs]
            rewired = True
        if rewired:  # the DEQUANTIZEs nothing reads any more
            _drop_unread(graph, codes, schema.BuiltinOperator.DEQUANTIZE)
            changed = True
    return changed


def _float_copies(model, codes: list[int]) -> bool:
    """An op that copies values, left int8 between a QUANTIZE of a float tensor and DEQUANTIZEs that
    only give its outputs back to float ops, copies the float tensor instead: rounding there buys no
    integer op, only error. The quantizer keeps SPLIT and UNPACK int8 even when they are denylisted,
    so in a file with float islands an unrolled LSTM's four gates were still rounded together on one
    scale between float products and float activations. In place; returns whether anything changed."""
    changed = False
    for graph in model.subgraphs:
        producers, readers = producers_of(graph), readers_of(graph)
        kept = {int(i) for i in graph.outputs}
        dropped = set()
        for op in graph.operators:
            at = COPIES.get(codes[op.opcodeIndex])
            if at is None or len(op.inputs) <= at:
                continue
            before = producers.get(int(op.inputs[at]))
            if before is None or codes[before.opcodeIndex] != schema.BuiltinOperator.QUANTIZE or \
                    not is_float(graph, int(before.inputs[0])):
                continue
            outputs = [int(o) for o in op.outputs]
            if any(o in kept or not readers.get(o) or not all(
                    codes[r.opcodeIndex] == schema.BuiltinOperator.DEQUANTIZE for r in readers[o]) for o in outputs):
                continue
            inputs = [int(i) for i in op.inputs]
            inputs[at] = int(before.inputs[0])
            op.inputs = inputs
            floats = []
            for o in outputs:
                first, *others = readers[o]
                floats.append(int(first.outputs[0]))
                for other in others:  # the same value given back twice: its readers read the first
                    for reader in readers.get(int(other.outputs[0]), []):
                        reader.inputs = [floats[-1] if int(i) == int(other.outputs[0]) else int(i)
                                         for i in reader.inputs]
                dropped.update(id(r) for r in readers[o])
            op.outputs = floats
            changed = True
        if dropped:
            graph.operators = [o for o in graph.operators if id(o) not in dropped]
            _drop_unread(graph, codes, schema.BuiltinOperator.QUANTIZE)
    return changed


def _symmetric_products(model, codes: list[int]) -> bool:
    """A BATCH_MATMUL whose right operand is an int8 activation with a zero point other than 0 reads it
    through a QUANTIZE to the same span on a symmetric scale (zero point 0). TFLite runtimes disagree
    on that operand's zero point: LiteRT 2.3 subtracts it, the interpreter TensorFlow 2.21 bundles
    does not. Attention's probabilities times its values (tf_keras MultiHeadAttention, the values'
    zero point -18) came out 61 int8 steps apart on the two for the same file. With zero point 0
    every runtime computes the same product; the values keep at least half their levels (an
    asymmetric span widened to its larger side). In place; returns whether anything changed."""
    changed = False
    for graph in model.subgraphs:
        ordered = []
        for op in graph.operators:
            if codes[op.opcodeIndex] == schema.BuiltinOperator.BATCH_MATMUL and len(op.inputs) > 1:
                index = int(op.inputs[1])
                tensor = graph.tensors[index]
                on = _scale(tensor)
                if tensor.type == schema.TensorType.INT8 and on is not None and on[1] != 0 and \
                        not is_constant(model, graph, index):
                    scale, zero = on
                    span = max(abs(-128 - zero), abs(127 - zero)) * scale
                    symmetric = tensor_like(graph, index, tensor.name + b"/symmetric", schema.TensorType.INT8,
                                            per_tensor(span / 127.0, 0))
                    ordered.append(_added(model, codes, schema.BuiltinOperator.QUANTIZE, [index], [symmetric]))
                    op.inputs = [int(op.inputs[0]), symmetric, *[int(i) for i in op.inputs[2:]]]
                    changed = True
            ordered.append(op)
        graph.operators = ordered
    return changed


def _copies_requantized(model, codes: list[int]) -> bool:
    """An op that copies stored values (REVERSE_V2, TRANSPOSE, SLICE, GATHER, ...) writes a tensor on
    its input's scale, then a QUANTIZE requantizes it to the output's own, wherever the quantizer
    gave the two different scales. TFLite's kernels copy the bytes as they are, so the output read
    them on the wrong scale: the quantizer does so for REVERSE_V2, which reverses the backward half
    of a Bidirectional layer with return_sequences, and a Bidirectional GRU regression read its
    backward features 1.3 times too large and shifted (int8 RMSE 113 % of the outputs' spread). In
    place (`codes` grows with any opcode added); returns whether anything changed."""
    changed = False
    for graph in model.subgraphs:
        ordered = []
        for op in graph.operators:
            ordered.append(op)
            at = COPIES.get(codes[op.opcodeIndex])
            if at is None or len(op.inputs) <= at:
                continue
            source = graph.tensors[int(op.inputs[at])]
            on_source = _scale(source)
            for position, index in enumerate(int(o) for o in op.outputs):
                output = graph.tensors[index]
                if output.type != source.type or output.type not in _LEVELS or on_source is None or \
                        _scale(output) in (None, on_source):
                    continue
                copied = tensor_like(graph, index, output.name + b"/copied", output.type, per_tensor(*on_source))
                outputs = [int(o) for o in op.outputs]
                outputs[position] = copied
                op.outputs = outputs
                ordered.append(_added(model, codes, schema.BuiltinOperator.QUANTIZE, [copied], [index]))
                changed = True
        graph.operators = ordered
    return changed


def _added(model, codes: list[int], builtin: int, inputs: list[int], outputs: list[int]):
    """A new op (`flatbuffer.new_op`), with `codes` grown by any operator code it added."""
    op = new_op(model, builtin, inputs, outputs)
    codes += [flatbuffer_utils.get_builtin_code_from_operator_code(c) for c in model.operatorCodes[len(codes):]]
    return op


def _scale(tensor) -> Optional[tuple[float, int]]:
    """A per-tensor quantized tensor's (scale, zero point), else None."""
    q = tensor.quantization
    if q is None or q.scale is None or len(q.scale) != 1 or q.zeroPoint is None or len(q.zeroPoint) != 1:
        return None
    return float(q.scale[0]), int(q.zeroPoint[0])


_INTEGER_IDS = (schema.TensorType.INT32, schema.TensorType.INT64)
_LEVELS = {schema.TensorType.INT8: np.int8, schema.TensorType.INT16: np.int16}


def _integer_one_hot(model, codes: list[int]) -> bool:
    """In a quantized file, ONE_HOT computes what the float file's does.

    TFLite's ONE_HOT copies its on and off values into its output as they are stored, so they must
    be stored on the output's scale; the quantizer gives each constant a scale of its own (off =
    0.0 then reads back as 0.5 on a [0, 1] output: a Keras 3 CategoryEncoding classifier fell from
    87.5 to 15.3 %). They are put on the output's scale here. Keras 3 also reaches ONE_HOT through
    CAST int -> float -> int of its integer ids, two float ops: ONE_HOT reads the ids themselves
    (the round trip is exact for ids below 2^24), and the CASTs go. In place; returns whether
    anything changed.
    """
    changed = False
    for graph in model.subgraphs:
        producer = producers_of(graph)
        for op in [o for o in graph.operators if codes[o.opcodeIndex] == schema.BuiltinOperator.ONE_HOT]:
            inputs = [int(i) for i in op.inputs]
            back = producer.get(inputs[0])
            cast_back = back is not None and codes[back.opcodeIndex] == schema.BuiltinOperator.CAST
            there = producer.get(int(back.inputs[0])) if cast_back and is_float(graph, int(back.inputs[0])) else None
            if there is not None and codes[there.opcodeIndex] == schema.BuiltinOperator.CAST and \
                    graph.tensors[int(there.inputs[0])].type in _INTEGER_IDS:
                inputs[0] = int(there.inputs[0])
                op.inputs = inputs
                changed = True
            output = graph.tensors[int(op.outputs[0])]
            q = output.quantization
            if output.type not in _LEVELS or len(inputs) != 4 or q is None or q.scale is None or len(q.scale) != 1:
                continue
            for index in inputs[2:]:
                changed |= _on_scale_of(model, graph.tensors[index], output)
        for _ in range(2):  # the CAST back to integers, then the CAST to float it read
            _drop_unread(graph, codes, schema.BuiltinOperator.CAST)
    return changed


def _on_scale_of(model, constant, output) -> bool:
    """Store a quantized scalar constant on `output`'s scale and zero point (a buffer of its own)."""
    q, mine = output.quantization, constant.quantization
    buffer = model.buffers[constant.buffer].data if 0 < constant.buffer < len(model.buffers) else None
    if constant.type != output.type or mine is None or mine.scale is None or len(mine.scale) != 1 or buffer is None \
            or not len(buffer):
        return False
    scale, zero = float(q.scale[0]), int(q.zeroPoint[0])
    if (float(mine.scale[0]), int(mine.zeroPoint[0])) == (scale, zero):
        return False
    dtype = _LEVELS[output.type]
    value = (np.frombuffer(bytes(buffer), dtype).astype(np.float64) - int(mine.zeroPoint[0])) * float(mine.scale[0])
    fresh = schema.BufferT()
    fresh.data = _on_grid(value, scale, zero, dtype).tobytes()
    model.buffers.append(fresh)
    constant.buffer = len(model.buffers) - 1
    constant.quantization = per_tensor(scale, zero)
    return True


def _on_grid(values: np.ndarray, scale: float, zero: int, dtype) -> np.ndarray:
    """Float values as the `dtype` levels of this scale and zero point (rounded, clipped)."""
    return np.clip(np.round(values / scale) + zero, np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)


_COMPARISONS = {schema.BuiltinOperator.EQUAL, schema.BuiltinOperator.NOT_EQUAL, schema.BuiltinOperator.LESS,
                schema.BuiltinOperator.LESS_EQUAL, schema.BuiltinOperator.GREATER, schema.BuiltinOperator.GREATER_EQUAL}


def _int8_constant(model, graph, levels: np.ndarray, scale: float, zero: int, near: bytes) -> int:
    return array_constant(model, graph, levels, near, b"int8", tensor_type=schema.TensorType.INT8,
                          quantization=per_tensor(scale, zero))


def _drop_unread(graph, codes: list[int], builtin: int) -> None:
    """Remove the `builtin` ops whose outputs nothing reads any more."""
    read = {int(i) for o in graph.operators for i in o.inputs} | {int(i) for i in graph.outputs}
    graph.operators = [o for o in graph.operators
                       if codes[o.opcodeIndex] != builtin or any(int(out) in read for out in o.outputs)]


def fuse_requantize(tflite: bytes) -> bytes:
    """Replace DEQUANTIZE(int) -> QUANTIZE(int) pairs by one int -> int QUANTIZE (a requantize).

    Two fake-quant ranges in a row (an input followed by an affine layer the converter folds
    into scales, such as Rescaling or Normalization) come out of the converter as a round trip
    through float. TFLite's QUANTIZE op requantizes between integer types directly.
    """
    model = read_model(tflite)
    integer = {schema.TensorType.INT8, schema.TensorType.UINT8, schema.TensorType.INT16}
    changed = False
    for subgraph in model.subgraphs:
        operators = list(subgraph.operators or [])
        readers = readers_of(subgraph)
        outputs = {int(i) for i in subgraph.outputs}
        for op in list(operators):
            if builtin_of(model, op) != schema.BuiltinOperator.DEQUANTIZE:
                continue
            source, middle = int(op.inputs[0]), int(op.outputs[0])
            following = readers.get(middle, [])
            if (subgraph.tensors[source].type not in integer or middle in outputs or len(following) != 1
                    or builtin_of(model, following[0]) != schema.BuiltinOperator.QUANTIZE
                    or subgraph.tensors[int(following[0].outputs[0])].type not in integer):
                continue
            following[0].inputs = [source]
            operators.remove(op)
            changed = True
        subgraph.operators = operators
    return write_model(model) if changed else tflite

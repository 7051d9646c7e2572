"""Bias correction: undo the mean shift that rounding the weights to int8 puts on each output channel.

A weight op computes `y = W x + b`. With int8 weights `W_q`, the expected output moves by
`(W_q - W) E[x]` per output channel — small per weight, but not zero on average for narrow
layers (depthwise convolutions above all), and it adds up layer after layer. With `E[x]` per
input channel measured on the calibration samples (`tfquant.statistics`), the shift is folded
into each op's int32 bias. The weights and every scale stay as they are.
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from .statistics import WEIGHT_OPS

_DTYPES = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT8: np.int8, schema.TensorType.INT32: np.int32}


def correct(quantized: bytes, float_tflite: bytes, input_means: dict[str, np.ndarray]) -> tuple[bytes, int]:
    """The quantized file with each int8 weight op's bias corrected; returns it and how many ops changed.

    The corrected int32 values overwrite the bias buffers in place (same length, same layout), read
    with the flatbuffer's own accessors: no unpacking and repacking of the whole model. A bias
    buffer shared by several tensors (after buffer deduplication) is left alone.
    """
    reference = schema.Model.GetRootAs(float_tflite, 0)
    float_graph = reference.Subgraphs(0)
    float_codes = _codes(reference)
    float_weights = {}
    for i in range(float_graph.OperatorsLength()):
        op = float_graph.Operators(i)
        if float_codes[op.OpcodeIndex()] in WEIGHT_OPS and op.InputsLength() > 1:
            float_weights[_name(float_graph.Tensors(op.Outputs(0)))] = float_graph.Tensors(op.Inputs(1))
    data = bytearray(quantized)
    model = schema.Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    codes = _codes(model)
    uses: dict[int, int] = {}
    for t in range(graph.TensorsLength()):
        uses[graph.Tensors(t).Buffer()] = uses.get(graph.Tensors(t).Buffer(), 0) + 1
    changed = 0
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = codes[op.OpcodeIndex()]
        if code not in WEIGHT_OPS or op.InputsLength() < 3 or op.Inputs(2) < 0:
            continue
        name = _name(graph.Tensors(op.Outputs(0)))
        exact_tensor, means = float_weights.get(name), input_means.get(name)
        weights, bias = graph.Tensors(op.Inputs(1)), graph.Tensors(op.Inputs(2))
        if exact_tensor is None or means is None or weights.Type() != schema.TensorType.INT8 or \
                bias.Type() != schema.TensorType.INT32 or weights.Quantization() is None or \
                bias.Quantization() is None or uses.get(bias.Buffer(), 0) != 1:
            continue
        exact = _values(reference, exact_tensor)
        shape = tuple(weights.ShapeAsNumpy())
        if exact is None or exact.shape != shape:
            continue
        scales = weights.Quantization().ScaleAsNumpy().astype(np.float64)
        axis = [1] * len(shape)
        axis[weights.Quantization().QuantizedDimension()] = -1
        delta = _values(model, weights).astype(np.float64) * scales.reshape(axis) - exact
        shift = _shift(code, delta, means)
        values = _values(model, bias)
        if shift is None or values is None or shift.shape != values.shape:
            continue
        bias_scales = bias.Quantization().ScaleAsNumpy().astype(np.float64)
        corrected = np.clip(values.astype(np.int64) - np.round(shift / bias_scales), -2**31, 2**31 - 1).astype(np.int32)
        start, length = _location(model, bias.Buffer())
        data[start:start + length] = corrected.astype("<i4").tobytes()
        changed += 1
    return (bytes(data), changed) if changed else (quantized, 0)


def _codes(model) -> list[int]:
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        codes.append(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
    return codes


def _location(model, index: int) -> tuple[int, int]:
    """Where buffer `index`'s bytes lie in the file: (start, length)."""
    buffer = model.Buffers(index)
    if buffer.DataLength():
        return buffer._tab.Vector(buffer._tab.Offset(4)), buffer.DataLength()
    return buffer.Offset(), buffer.Size()  # stored after the flatbuffer (files over 2 GB)


def _shift(code: int, delta: np.ndarray, means: np.ndarray):
    """(W_q - W) E[x] per output channel, the input taken constant over space."""
    if code == schema.BuiltinOperator.DEPTHWISE_CONV_2D:  # [1, kh, kw, C]
        return (delta[0] * means.reshape(1, 1, -1)).sum(axis=(0, 1)) if delta.shape[-1] == means.size else None
    if code == schema.BuiltinOperator.CONV_2D:  # [out, kh, kw, in]
        return (delta * means.reshape(1, 1, 1, -1)).sum(axis=(1, 2, 3)) if delta.shape[-1] == means.size else None
    if delta.ndim == 2 and delta.shape[1] == means.size:  # FULLY_CONNECTED [out, in]
        return delta @ means
    return None


def _values(model, tensor):
    """A constant tensor's values (a read-only view of the file's bytes), or None."""
    dtype = _DTYPES.get(tensor.Type())
    if dtype is None or tensor.Buffer() <= 0 or tensor.Buffer() >= model.BuffersLength():
        return None
    start, length = _location(model, tensor.Buffer())
    if length <= 0:
        return None
    raw = np.frombuffer(model._tab.Bytes, np.uint8, count=length, offset=start)
    return raw.view(dtype).reshape(tuple(tensor.ShapeAsNumpy()))


def _name(tensor) -> str:
    name = tensor.Name()
    return name.decode() if isinstance(name, bytes) else str(name)

"""Bias correction: undo the mean shift that rounding the weights to int8 puts on each output channel.

A weight op computes `y = W x + b`. With int8 weights `W_q`, the expected output moves by
`(W_q - W) E[x]` per output channel — small per weight, but not zero on average for narrow
layers (depthwise convolutions above all), and it adds up layer after layer. With `E[x]` per
input channel measured on the calibration samples (`tfquant.statistics`), the shift is folded
into each op's int32 bias. The weights and every scale stay as they are.
"""

from __future__ import annotations

import functools

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.tools import flatbuffer_utils

from .statistics import WEIGHT_OPS

_DTYPES = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT8: np.int8, schema.TensorType.INT32: np.int32}


def correct(quantized: bytes, float_tflite: bytes, input_means: dict[str, np.ndarray]) -> tuple[bytes, int]:
    """The quantized file with each int8 weight op's bias corrected; returns it and how many ops changed."""
    float_weights = _float_weights(float_tflite)
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(quantized))
    graph = model.subgraphs[0]
    codes = [flatbuffer_utils.get_builtin_code_from_operator_code(c) for c in model.operatorCodes]
    changed = 0
    for op in graph.operators:
        code = codes[op.opcodeIndex]
        if code not in WEIGHT_OPS or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        name = _name(graph.tensors[op.outputs[0]])
        exact, means = float_weights.get(name), input_means.get(name)
        weights, bias = graph.tensors[op.inputs[1]], graph.tensors[op.inputs[2]]
        if exact is None or means is None or weights.type != schema.TensorType.INT8 or \
                bias.type != schema.TensorType.INT32 or weights.quantization is None or exact.shape != tuple(weights.shape):
            continue
        scales = np.asarray(weights.quantization.scale, np.float64)
        shape = [1] * len(weights.shape)
        shape[weights.quantization.quantizedDimension] = -1
        delta = _values(model, weights).astype(np.float64) * scales.reshape(shape) - exact
        shift = _shift(code, delta, means)
        values = _values(model, bias)
        bias_scales = np.asarray(bias.quantization.scale, np.float64)
        if shift is None or values is None or shift.shape != values.shape:
            continue
        corrected = np.clip(values.astype(np.int64) - np.round(shift / bias_scales), -2**31, 2**31 - 1).astype(np.int32)
        buffer = schema.BufferT()  # a buffer of its own: biases may share one after deduplication
        buffer.data = corrected.tobytes()
        model.buffers.append(buffer)
        bias.buffer = len(model.buffers) - 1
        changed += 1
    if not changed:
        return quantized, 0
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), changed


@functools.lru_cache(maxsize=2)
def _float_weights(float_tflite: bytes) -> dict[str, np.ndarray]:
    """Per weight op of the float file (by output tensor name), its float weights. Read once: auto
    range selection corrects a handful of candidates against the same float file."""
    reference = flatbuffer_utils.read_model_from_bytearray(bytearray(float_tflite))
    graph = reference.subgraphs[0]
    codes = [flatbuffer_utils.get_builtin_code_from_operator_code(c) for c in reference.operatorCodes]
    weights = {}
    for op in graph.operators:
        if codes[op.opcodeIndex] in WEIGHT_OPS and len(op.inputs) > 1:
            values = _values(reference, graph.tensors[op.inputs[1]])
            if values is not None:
                weights[_name(graph.tensors[op.outputs[0]])] = values
    return weights


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
    dtype = _DTYPES.get(tensor.type)
    buffer = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
    if dtype is None or buffer is None or buffer.data is None or not len(buffer.data):
        return None
    return np.frombuffer(bytes(buffer.data), dtype).reshape(tensor.shape)


def _name(tensor) -> str:
    return tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)

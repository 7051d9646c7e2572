"""Cross-layer equalization of the float file, before calibration.

Two weighted ops in a row, where the second alone reads the first's output and the activation
between them commutes with a positive per-channel scale (none, or RELU: relu(x / s) = relu(x) / s
for s > 0), compute the same function when output channel i of the first (its weights and bias)
is divided by s_i and every weight the second applies to input channel i is multiplied by s_i.
With s_i = sqrt(r1_i / r2_i), where r1_i is the largest |weight| of the first op's channel i and
r2_i the largest |weight| the second applies to it, both ranges become sqrt(r1_i * r2_i): one
channel no longer sets the int8 scale for all the others (Nagel et al., "Data-Free Quantization
through Weight Equalization and Bias Correction", 2019). Chains (conv -> depthwise -> conv) are
equalized pair by pair, a few sweeps until the scales settle.

It matters most where one weight scale serves a whole tensor (`per_channel=False`, which some
accelerators require); with per-channel weight scales it moves channels' activation ranges
closer together. RELU6 and the smooth activations (swish, GELU) do not commute with a scale and
are left alone: a rewrite here never changes the float function (checked on the interpreter).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.tools import flatbuffer_utils

from .flatbuffer import float_constant, read_model, readers_of, replace_constant, write_model

_CONV = schema.BuiltinOperator.CONV_2D
_DEPTHWISE = schema.BuiltinOperator.DEPTHWISE_CONV_2D
_DENSE = schema.BuiltinOperator.FULLY_CONNECTED
_WEIGHTED = (_CONV, _DEPTHWISE, _DENSE)
_HOMOGENEOUS = (schema.ActivationFunctionType.NONE, schema.ActivationFunctionType.RELU)
SWEEPS = 8
LIMIT = 1e3  # no channel is scaled by more than this (or less than its inverse)


@dataclass(frozen=True)
class Equalized:
    pairs: int  # pairs of ops equalized
    before: float  # the largest over those ops' weights of widest channel's max|w| / median channel's max|w|
    after: float

    def describe(self) -> str:
        return (f"equalized {self.pairs} pair(s) of conv/dense ops across their channels: the most unbalanced weight "
                f"tensor's widest channel went from {self.before:.1f}x to {self.after:.1f}x its median channel "
                "(the same function in float)")


@dataclass
class _Pair:
    first: object
    second: object
    depth_multiplier: int  # the second op's, when it is a depthwise conv (input channel i feeds i*m .. i*m+m-1)


def equalize(float_tflite: bytes) -> tuple[bytes, list[Equalized]]:
    """The float file with every equalizable pair of weighted ops rescaled; returns it and what was done."""
    model = read_model(float_tflite)
    graph = model.subgraphs[0]
    codes = [flatbuffer_utils.get_builtin_code_from_operator_code(c) for c in model.operatorCodes]
    pairs = _pairs(model, graph, codes)
    if not pairs:
        return float_tflite, []
    weights, kinds, biases = {}, {}, {}  # by tensor index: the weights, their op's code; the nonzero biases
    for op in (op for pair in pairs for op in (pair.first, pair.second)):
        weights[int(op.inputs[1])] = float_constant(model, graph, int(op.inputs[1])).copy()
        kinds[int(op.inputs[1])] = codes[op.opcodeIndex]
    for pair in pairs:
        bias = _bias(model, graph, pair.first)
        if bias is not None and bias.any():  # a zero bias stays zero
            biases[int(pair.first.inputs[2])] = bias.copy()
    before = _spread(weights, kinds)
    for _ in range(SWEEPS):
        largest = 0.0
        for pair in pairs:
            first_code, second_code = codes[pair.first.opcodeIndex], codes[pair.second.opcodeIndex]
            w1, w2 = weights[int(pair.first.inputs[1])], weights[int(pair.second.inputs[1])]
            r1 = _output_ranges(w1, first_code)
            r2 = _input_ranges(w2, second_code, pair.depth_multiplier)
            scale = np.ones_like(r1)
            ok = (r1 > 0) & (r2 > 0)
            scale[ok] = np.clip(np.sqrt(r1[ok] / r2[ok]), 1 / LIMIT, LIMIT)
            weights[int(pair.first.inputs[1])] = _scale_outputs(w1, first_code, 1 / scale)
            weights[int(pair.second.inputs[1])] = _scale_inputs(w2, second_code, scale, pair.depth_multiplier)
            bias = int(pair.first.inputs[2]) if len(pair.first.inputs) > 2 else -1
            if bias in biases:
                biases[bias] = biases[bias] / scale
            largest = max(largest, float(np.max(np.abs(np.log(scale)))))
        if largest < 1e-3:
            break
    for index, values in {**weights, **biases}.items():
        replace_constant(model, graph, index, values)
    return write_model(model), [Equalized(len(pairs), before, _spread(weights, kinds))]


def _pairs(model, graph, codes) -> list[_Pair]:
    readers = readers_of(graph)
    outputs = {int(i) for i in graph.outputs}
    pairs = []
    for first in graph.operators:
        if codes[first.opcodeIndex] not in _WEIGHTED or not _owned(model, graph, first, readers):
            continue
        if first.builtinOptions.fusedActivationFunction not in _HOMOGENEOUS:
            continue
        out = int(first.outputs[0])
        if out in outputs or len(readers.get(out, [])) != 1:
            continue
        second = readers[out][0]
        code = codes[second.opcodeIndex]
        if code not in _WEIGHTED or int(second.inputs[0]) != out or list(second.inputs).count(out) != 1:
            continue
        if not _owned(model, graph, second, readers):
            continue
        channels = int(graph.tensors[out].shape[-1])
        if _output_ranges(float_constant(model, graph, int(first.inputs[1])), codes[first.opcodeIndex]).size != channels:
            continue
        w2 = float_constant(model, graph, int(second.inputs[1]))
        if code == _DEPTHWISE:
            if w2.shape[-1] % channels:
                continue
            multiplier = w2.shape[-1] // channels
        else:
            if w2.shape[-1] != channels:  # a dense op over flattened features, or a grouped conv
                continue
            multiplier = 1
        pairs.append(_Pair(first, second, multiplier))
    return pairs


def _owned(model, graph, op, readers) -> bool:
    """Whether the op's weights (and bias) are float constants that no other op reads."""
    weights = int(op.inputs[1])
    if float_constant(model, graph, weights) is None or len(readers.get(weights, [])) != 1:
        return False
    values = _bias(model, graph, op)
    if values is None:
        return int(op.inputs[2]) < 0 if len(op.inputs) > 2 else True
    # A zero bias stays zero when scaled: the converter's one zero tensor may serve several ops.
    return len(readers.get(int(op.inputs[2]), [])) == 1 or not values.any()


def _bias(model, graph, op):
    bias = int(op.inputs[2]) if len(op.inputs) > 2 else -1
    return None if bias < 0 else float_constant(model, graph, bias)


def _output_ranges(w: np.ndarray, code: int) -> np.ndarray:
    """max|w| per output channel: conv [O,kh,kw,I] and dense [O,I] on axis 0, depthwise [1,kh,kw,O] on the last."""
    w = np.abs(w)
    return w.reshape(-1, w.shape[-1]).max(axis=0) if code == _DEPTHWISE else w.reshape(w.shape[0], -1).max(axis=1)


def _input_ranges(w: np.ndarray, code: int, multiplier: int) -> np.ndarray:
    """max|w| per input channel: the last axis of conv and dense; a depthwise conv's channel i*m .. i*m+m-1."""
    w = np.abs(w).reshape(-1, w.shape[-1]).max(axis=0)
    return w.reshape(-1, multiplier).max(axis=1) if code == _DEPTHWISE else w


def _scale_outputs(w: np.ndarray, code: int, factor: np.ndarray) -> np.ndarray:
    if code == _DEPTHWISE:
        return w * factor
    return w * factor.reshape((-1,) + (1,) * (w.ndim - 1))


def _scale_inputs(w: np.ndarray, code: int, factor: np.ndarray, multiplier: int) -> np.ndarray:
    return w * (np.repeat(factor, multiplier) if code == _DEPTHWISE else factor)


def _spread(weights: dict[int, np.ndarray], kinds: dict[int, int]) -> float:
    """The largest over tensors of (widest channel's max|w|) / (median channel's max|w|), per output channel."""
    ratios = []
    for index, w in weights.items():
        ranges = _output_ranges(w, kinds[index])
        middle = float(np.median(ranges))
        if middle > 0:
            ratios.append(float(ranges.max()) / middle)
    return max(ratios, default=1.0)

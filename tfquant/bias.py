"""Bias correction: undo the mean shift that rounding the weights to int8 puts on each output channel.

A weight op computes `y = W x + b`. With int8 weights `W_q`, the expected output moves by
`(W_q - W) E[x]` per output channel — small per weight, but not zero on average for narrow
layers (depthwise convolutions above all), and it adds up layer after layer. With `E[x]`
measured on the calibration samples (`tfquant.statistics`), the shift is folded into each op's
int32 bias (int64 at int16x8, whose weights are int8 too). The weights and every scale stay as they are.

For a convolution, `E[x]` is kept per position: the shift of one output channel is its mean
over the output positions, where each tap of the kernel reads the mean input it actually reads
there, the padding's zeros included. On the small feature maps at the end of a mobile network
(2×2 or 1×1 under a 5×5 depthwise kernel) most taps read padding, and a shift computed as if
every tap saw the channel's mean would add an error instead of removing one.
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from .flatbuffer import WEIGHT_OPS, builtin_codes, text

_DTYPES = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT8: np.int8, schema.TensorType.INT32: np.int32,
           schema.TensorType.INT64: np.int64}
_BIAS_TYPES = {schema.TensorType.INT32: "<i4", schema.TensorType.INT64: "<i8"}  # int8 and int16x8 files


def correct(quantized: bytes, float_tflite: bytes, input_means: dict[str, np.ndarray]) -> tuple[bytes, int]:
    """The quantized file with each int8 weight op's bias corrected; returns it and how many ops changed.

    The corrected int32 (int64) values overwrite the bias buffers in place (same length, same layout), read
    with the flatbuffer's own accessors: no unpacking and repacking of the whole model. A bias
    buffer shared by several tensors (after buffer deduplication) is left alone.
    """
    rewrite = WeightOps(quantized, float_tflite)
    for op, code, name, exact_tensor in rewrite:
        means = input_means.get(name)
        found = rewrite.int8_weights(op, exact_tensor, rewritten=False)
        if op.InputsLength() < 3 or op.Inputs(2) < 0 or means is None or found is None:
            continue
        (weights, exact, scales), bias = found, rewrite.graph.Tensors(op.Inputs(2))
        if bias.Type() not in _BIAS_TYPES or bias.Quantization() is None or not rewrite.own(bias):
            continue
        shape = exact.shape
        axis = [1] * len(shape)
        axis[weights.Quantization().QuantizedDimension()] = -1
        delta = _values(rewrite.model, weights).astype(np.float64) * scales.reshape(axis) - exact
        shift = _shift(code, delta, means, _conv_options(code, op))
        values = _values(rewrite.model, bias)
        if shift is None or values is None or shift.shape != values.shape:
            continue
        bias_scales = bias.Quantization().ScaleAsNumpy().astype(np.float64)
        dtype = np.dtype(_BIAS_TYPES[bias.Type()])
        limits = np.iinfo(dtype)
        rewrite.write(bias, np.clip(values.astype(np.int64) - np.round(shift / bias_scales), limits.min, limits.max)
                      .astype(dtype))
    return rewrite.result(quantized)


class WeightOps:
    """An int8 file opened for rewriting its weight ops' constants in place (same length, same
    layout), beside the float file it was quantized from. Iterating gives each weight op with its
    code, its output tensor's name and the float file's weights tensor of the same op (or None)."""

    def __init__(self, quantized: bytes, float_tflite: bytes):
        self.reference = schema.Model.GetRootAs(float_tflite, 0)
        reference_graph, reference_codes = self.reference.Subgraphs(0), builtin_codes(self.reference)
        self._float_weights = {}
        for i in range(reference_graph.OperatorsLength()):
            op = reference_graph.Operators(i)
            if reference_codes[op.OpcodeIndex()] in WEIGHT_OPS and op.InputsLength() > 1:
                self._float_weights[text(reference_graph.Tensors(op.Outputs(0)).Name())] = reference_graph.Tensors(op.Inputs(1))
        self.data = bytearray(quantized)
        self.model = schema.Model.GetRootAs(self.data, 0)
        self.graph = self.model.Subgraphs(0)
        self._codes = builtin_codes(self.model)
        self._uses: dict[int, int] = {}
        for t in range(self.graph.TensorsLength()):
            buffer = self.graph.Tensors(t).Buffer()
            self._uses[buffer] = self._uses.get(buffer, 0) + 1
        self.changed: set[int] = set()

    def __iter__(self):
        for i in range(self.graph.OperatorsLength()):
            op = self.graph.Operators(i)
            code = self._codes[op.OpcodeIndex()]
            if code in WEIGHT_OPS and op.InputsLength() > 1:
                name = text(self.graph.Tensors(op.Outputs(0)).Name())
                yield op, code, name, self._float_weights.get(name)

    def int8_weights(self, op, exact_tensor, *, rewritten: bool = True):
        """(the op's int8 weights tensor, the float file's weights, their scales as float64), where the
        weights are int8 with scales (and, if they are to be `rewritten`, a buffer of their own) and the float
        weights have their shape; else None."""
        weights = self.graph.Tensors(op.Inputs(1))
        quantization = weights.Quantization()
        if exact_tensor is None or weights.Type() != schema.TensorType.INT8 or quantization is None or \
                not quantization.ScaleLength() or (rewritten and not self.own(weights)):
            return None
        exact = _values(self.reference, exact_tensor)
        if exact is None or exact.shape != tuple(weights.ShapeAsNumpy()):
            return None
        return weights, exact, quantization.ScaleAsNumpy().astype(np.float64)

    def own(self, tensor) -> bool:
        """Whether the tensor's buffer is its own (a shared one, after deduplication, is not rewritten)."""
        return self._uses.get(tensor.Buffer(), 0) == 1

    def write(self, tensor, values: np.ndarray) -> None:
        """Overwrite the tensor's buffer with `values` (their bytes are as long as the buffer's)."""
        start, length = _location(self.model, tensor.Buffer())
        raw = values.tobytes()
        assert len(raw) == length, (len(raw), length)
        self.data[start:start + length] = raw
        self.changed.add(tensor.Buffer())

    def result(self, unchanged: bytes) -> tuple[bytes, int]:
        """The rewritten file and how many buffers changed (the file as it was when none did)."""
        return (bytes(self.data), len(self.changed)) if self.changed else (unchanged, 0)


def _location(model, index: int) -> tuple[int, int]:
    """Where buffer `index`'s bytes lie in the file: (start, length)."""
    buffer = model.Buffers(index)
    if buffer.DataLength():
        return buffer._tab.Vector(buffer._tab.Offset(4)), buffer.DataLength()
    return buffer.Offset(), buffer.Size()  # stored after the flatbuffer (files over 2 GB)


def _shift(code: int, delta: np.ndarray, means: np.ndarray, options=(True, 1, 1, 1, 1)):
    """(W_q - W) E[x] per output channel, averaged over the output positions of a convolution."""
    if code in (schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D):
        taps = _tap_means(means, delta.shape[1:3], options) if means.ndim == 3 else \
            np.broadcast_to(means.reshape(1, 1, -1), delta.shape[1:3] + (means.shape[-1],))
        if code == schema.BuiltinOperator.DEPTHWISE_CONV_2D:  # [1, kh, kw, C * multiplier]
            if delta.shape[-1] % taps.shape[-1]:
                return None
            return (delta[0] * np.repeat(taps, delta.shape[-1] // taps.shape[-1], axis=-1)).sum(axis=(0, 1))
        if delta.shape[-1] != taps.shape[-1]:  # CONV_2D [out, kh, kw, in]
            return None
        return (delta * taps[None]).sum(axis=(1, 2, 3))
    if delta.ndim == 2 and delta.shape[1] == means.size:  # FULLY_CONNECTED [out, in]
        return delta @ means
    return None


def _conv_options(code: int, op) -> tuple[bool, int, int, int, int]:
    """(same padding, stride h, stride w, dilation h, dilation w) of a CONV_2D or DEPTHWISE_CONV_2D."""
    table = op.BuiltinOptions() if code in (schema.BuiltinOperator.CONV_2D,
                                            schema.BuiltinOperator.DEPTHWISE_CONV_2D) else None
    if table is None:
        return True, 1, 1, 1, 1
    options = schema.Conv2DOptions() if code == schema.BuiltinOperator.CONV_2D else schema.DepthwiseConv2DOptions()
    options.Init(table.Bytes, table.Pos)
    return (options.Padding() == schema.Padding.SAME, options.StrideH(), options.StrideW(),
            options.DilationHFactor(), options.DilationWFactor())


def _tap_means(means: np.ndarray, kernel: tuple[int, int], options: tuple[bool, int, int, int, int]) -> np.ndarray:
    """[kh, kw, C]: for each tap, the mean over output positions of the input it reads (zero in the padding)."""
    padded, (out_h, out_w) = conv_geometry(means.shape[:2], kernel, options)
    _, stride_h, stride_w, dilation_h, dilation_w = options
    grid = np.pad(means, padded + [(0, 0)])
    taps = np.empty(tuple(kernel) + (means.shape[-1],))
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            top, left = i * dilation_h, j * dilation_w
            window = grid[top:top + (out_h - 1) * stride_h + 1:stride_h, left:left + (out_w - 1) * stride_w + 1:stride_w]
            taps[i, j] = window.mean(axis=(0, 1))
    return taps


def conv_geometry(size: tuple[int, int], kernel: tuple[int, int], options: tuple[bool, int, int, int, int]):
    """A convolution's padding ([(top, bottom), (left, right)]) and output size (h, w) for an input of
    `size` (h, w), by TFLite's rule for SAME and VALID."""
    same, *steps = options
    pads, outs = [], []
    for axis, (length, k) in enumerate(zip(size, kernel)):
        stride, dilation = steps[axis], steps[axis + 2]
        span = (k - 1) * dilation + 1
        out = -(-length // stride) if same else (length - span) // stride + 1
        pad = max((out - 1) * stride + span - length, 0) if same else 0
        pads.append((pad // 2, pad - pad // 2))
        outs.append(out)
    return pads, tuple(outs)


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

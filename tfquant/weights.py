"""Weight scales: per output channel, the int8 scale of least rounding-plus-clipping error.

The quantizer sizes each channel's scale by its largest weight (`max|w| / 127`, symmetric), so a
few far-out weights set the grid every other weight of the channel is rounded on. `mse_scales`
searches, per channel, the clipping factor `alpha` in [`LOWEST`, 1] whose scale
`alpha * max|w| / 127` gives the least squared error between the float weights and their int8
values. It is data free: only the weights are looked at.

At 8 bits the gain is small and only for long channels. A long-tailed channel of 8,192 weights
gets 5.6 % less squared error. A channel of a few dozen weights with one outlier keeps its max
scale: clipping the outlier costs more than the finer grid saves. On the zoo CNNs, top-1 agreement
with float moved both ways by up to 2.2 points, so `weight_scales="mse"` is asked for, not the
default (`bench/accuracy.py`).

The rewrite is in place: the int8 values, the channel scales and the int32 bias (whose scale is
the input scale times the weight scale) keep their length and layout.
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from .bias import WeightOps, _values

LOWEST = 0.5  # the smallest share of max|w| a channel's range is clipped to
STEPS = 51  # clipping factors tried per channel, evenly spaced in [LOWEST, 1]
GAIN = 0.98  # a channel's scale changes only where its squared error falls below this share of max|w|'s
_SCALE_FIELD = 8  # QuantizationParameters.scale in the flatbuffer's vtable


def best_scales(weights: np.ndarray, axis: int) -> np.ndarray:
    """Per channel along `axis`, the scale of least squared int8 error for these float weights."""
    channels = np.moveaxis(weights.astype(np.float64), axis, 0).reshape(weights.shape[axis], -1)
    largest = np.abs(channels).max(axis=1)
    largest[largest == 0] = 1.0
    plain = largest / 127.0
    best, best_error = plain, _squared_error(channels, plain)
    threshold = best_error * GAIN
    for alpha in np.linspace(LOWEST, 1.0, STEPS)[:-1]:
        scale = plain * alpha
        error = _squared_error(channels, scale)
        better = error < np.minimum(threshold, best_error)
        best, best_error = np.where(better, scale, best), np.where(better, error, best_error)
    return best


def _squared_error(channels: np.ndarray, scales: np.ndarray) -> np.ndarray:
    step = scales[:, None]
    return np.sum((np.clip(np.round(channels / step), -127, 127) * step - channels) ** 2, axis=1)


def mse_scales(quantized: bytes, float_tflite: bytes) -> tuple[bytes, int]:
    """The int8 file with each weight op's per-channel scales chosen by `best_scales`, its int8
    weights rounded again on them from the float file's weights and its bias put on the new scale;
    returns it and how many ops changed. A weight or bias buffer shared by several tensors is left
    alone, and so is an op whose weights are not symmetric int8 with one scale per channel (or one)."""
    rewrite = WeightOps(quantized, float_tflite)
    graph, changed = rewrite.graph, 0
    for op, _, _, exact_tensor in rewrite:
        found = rewrite.int8_weights(op, exact_tensor)
        bias = graph.Tensors(op.Inputs(2)) if op.InputsLength() > 2 and op.Inputs(2) >= 0 else None
        if found is None or (bias is not None and not _rewritable(rewrite, bias, schema.TensorType.INT32)):
            continue
        weights, exact, scales = found
        quantization = weights.Quantization()
        zero_points = quantization.ZeroPointAsNumpy() if quantization.ZeroPointLength() else np.zeros(1)
        source = graph.Tensors(op.Inputs(0)).Quantization()
        if np.any(zero_points) or (bias is not None and (bias.Quantization().ScaleLength() != scales.size
                                                          or source is None or source.ScaleLength() != 1)):
            continue
        axis = quantization.QuantizedDimension() if scales.size > 1 else None
        if axis is not None and exact.shape[axis] != scales.size:
            continue
        new = best_scales(exact, axis) if axis is not None else best_scales(exact.reshape(1, -1), 0)
        new = new.astype(np.float32).astype(np.float64)  # as the file stores it
        if np.array_equal(new, scales):
            continue
        shape = [1] * exact.ndim
        if axis is not None:
            shape[axis] = -1
        rewrite.write(weights, np.clip(np.round(exact / new.reshape(shape)), -127, 127).astype(np.int8))
        _write_scales(rewrite.data, quantization, new)
        if bias is not None:  # on the input's scale times the weights'
            old_bias_scales = bias.Quantization().ScaleAsNumpy().astype(np.float64)
            new_bias_scales = (np.float32(source.Scale(0)) * new.astype(np.float32)).astype(np.float64)
            exact_bias = _values(rewrite.model, bias).astype(np.float64) * old_bias_scales
            rewrite.write(bias, np.clip(np.round(exact_bias / new_bias_scales), -2**31, 2**31 - 1).astype("<i4"))
            _write_scales(rewrite.data, bias.Quantization(), new_bias_scales)
        changed += 1
    return rewrite.result(quantized)[0], changed


def _rewritable(rewrite: WeightOps, tensor, dtype: int) -> bool:
    quantization = tensor.Quantization()
    return tensor.Type() == dtype and quantization is not None and quantization.ScaleLength() > 0 and rewrite.own(tensor)


def _write_scales(data: bytearray, quantization, scales: np.ndarray) -> None:
    """Overwrite a tensor's float32 scale vector in place (same length)."""
    start = quantization._tab.Vector(quantization._tab.Offset(_SCALE_FIELD))
    data[start:start + 4 * scales.size] = scales.astype("<f4").tobytes()

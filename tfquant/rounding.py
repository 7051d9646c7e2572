"""Weight rounding by the error it causes on the op's output (GPTQ), not weight by weight.

Rounding each int8 weight to its nearest step minimizes each weight's own error, but what the
model feels is an op's output error, `(W_q - W) x`, over the inputs `x` it actually reads. With
`H = E[x xᵀ]` (the second moments of the op's input, gathered on the calibration samples,
`tfquant.statistics`) that error is `(W_q - W) H (W_q - W)ᵀ` per output channel. GPTQ (Frantar et
al., 2022, the second-order step of Optimal Brain Quantization) rounds one input column at a time
and moves the columns not yet rounded to cancel the error just made, weighted by the inverse of `H`:
inputs that move together with the rounded one absorb its error. The scales stay the quantizer's,
so does every other byte of the file; only the int8 weights change.

Per op, the input is what its weights multiply: the whole input row of a dense op, the taps of a
convolution's window over every input channel (`kh·kw·C`, in the weights' own order), and for a
depthwise convolution each channel's own taps (one `H` per channel). An op whose row is longer
than `MAX_COLUMNS` keeps nearest rounding: its `H` alone would hold millions of numbers.

It is an option (`weight_rounding="gptq"`), not the default: at 8 bits a weight's rounding error
is small beside an activation's. Over five calibration draws it raised NASNetMobile's top-1
agreement with float from 97.4 to 98.1 % in Keras 3 (96.8 to 97.0 % in Keras 2), but took six of
eight Transformer regressions further from float (the README; `bench/accuracy.py` per CNN).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from .bias import WeightOps, _conv_options, conv_geometry

MAX_COLUMNS = 2304  # the longest weight row rounded by GPTQ (3×3 taps over 256 channels)
BLOCK = 128  # columns rounded before the columns after them are updated (one matrix product per block)
DAMPING = 0.01  # added to H's diagonal, as a share of its mean: H of few or correlated inputs is near singular


class Moments:
    """Gathers `E[x xᵀ]` of one weight op's input over calibration samples (`add` each sample's input
    tensor). Samples are taken `BATCH` at a time, so that each product is one large matrix product."""

    BATCH = 32

    def __init__(self, code: int, weights_shape: tuple[int, ...], options: tuple[bool, int, int, int, int]):
        self.code, self.shape, self.options = code, tuple(weights_shape), options
        self.total: Optional[np.ndarray] = None
        self.rows = 0
        self._pending: list[np.ndarray] = []

    @classmethod
    def of(cls, code: int, op, graph) -> Optional["Moments"]:
        """For a weight op (`WEIGHT_OPS`) of the float file (flatbuffer accessors), or None where its rows are
        too long."""
        shape = tuple(graph.Tensors(op.Inputs(1)).ShapeAsNumpy())
        if len(shape) not in (2, 4):
            return None
        columns = shape[1] * shape[2] if code == schema.BuiltinOperator.DEPTHWISE_CONV_2D else int(np.prod(shape[1:]))
        return cls(code, shape, _conv_options(code, op)) if columns <= MAX_COLUMNS else None

    def add(self, x: np.ndarray) -> None:
        if self.code == schema.BuiltinOperator.FULLY_CONNECTED:
            if x.size % self.shape[1]:
                return
        elif x.ndim != 4 or (self.code == schema.BuiltinOperator.CONV_2D and x.shape[-1] != self.shape[3]):
            return
        self._pending.append(x.astype(np.float32))
        if len(self._pending) >= self.BATCH:
            self._flush()

    def value(self) -> Optional[np.ndarray]:
        self._flush()
        return None if self.total is None or not self.rows else self.total / self.rows

    def _flush(self) -> None:
        if not self._pending:
            return
        if self.code == schema.BuiltinOperator.FULLY_CONNECTED:
            rows = np.concatenate([x.reshape(-1, self.shape[1]) for x in self._pending])
        else:
            x = np.concatenate(self._pending)
            pointwise = self.shape[1:3] == (1, 1) and self.options[1:3] == (1, 1)
            rows = x.reshape(-1, x.shape[-1]) if pointwise else windows(x, self.shape[1:3], self.options)
        self._pending = []
        if self.code == schema.BuiltinOperator.DEPTHWISE_CONV_2D:  # per input channel, its own taps
            taps = rows.transpose(2, 1, 0)  # [C, kh·kw, positions]
            moment = np.matmul(taps, taps.transpose(0, 2, 1))
        else:
            rows = rows.reshape(len(rows), -1)
            moment = rows.T @ rows
        self.total = moment.astype(np.float64) if self.total is None else self.total + moment
        self.rows += len(rows)


def windows(x: np.ndarray, kernel: tuple[int, int], options: tuple[bool, int, int, int, int]) -> np.ndarray:
    """[positions, kh·kw, C]: what each output position of a convolution reads of `x` ([N, H, W, C]), tap
    by tap in the weights' order, with the padding's zeros; positions run over the samples too."""
    pads, (out_h, out_w) = conv_geometry(x.shape[1:3], kernel, options)
    grid = np.pad(x, [(0, 0)] + pads + [(0, 0)])
    _, stride_h, stride_w, dilation_h, dilation_w = options
    taps = [grid[:, i * dilation_h:i * dilation_h + (out_h - 1) * stride_h + 1:stride_h,
                 j * dilation_w:j * dilation_w + (out_w - 1) * stride_w + 1:stride_w]
            for i in range(kernel[0]) for j in range(kernel[1])]
    return np.stack(taps, axis=3).reshape(len(x) * out_h * out_w, kernel[0] * kernel[1], x.shape[-1])


def round_weights(quantized: bytes, float_tflite: bytes, moments: dict[str, np.ndarray]) -> tuple[bytes, int]:
    """The int8 file with each weight op's int8 weights rounded by GPTQ on its input's moments (by the
    op's output name), on the file's own scales; returns it and how many ops changed. A weights buffer
    shared by several tensors, or whose moments do not fit its shape, keeps its nearest rounding."""
    rewrite = WeightOps(quantized, float_tflite)
    for op, code, name, exact_tensor in rewrite:
        h, found = moments.get(name), rewrite.int8_weights(op, exact_tensor)
        if h is None or found is None:
            continue
        weights, exact, scales = found
        shape = exact.shape
        depthwise = code == schema.BuiltinOperator.DEPTHWISE_CONV_2D
        channels = shape[3] if depthwise else shape[0]
        scales = np.broadcast_to(scales, (channels,)) if scales.size in (1, channels) else None
        if scales is None:
            continue
        if depthwise:  # one row per output channel, each with its input channel's H
            if h.ndim != 3 or shape[3] % len(h) or h.shape[1] != shape[1] * shape[2]:
                continue
            rows = exact.reshape(-1, shape[3]).T[:, None, :]
            rounded = gptq(rows, np.repeat(h, shape[3] // len(h), axis=0), scales[:, None])
            values = rounded[:, 0, :].T.reshape(shape)
        else:
            rows = exact.reshape(shape[0], -1)
            if h.shape != (rows.shape[1],) * 2:
                continue
            values = gptq(rows[None], h[None], scales[None])[0].reshape(shape)
        if values is not None:
            rewrite.write(weights, values.astype(np.int8))
    return rewrite.result(quantized)


def gptq(rows: np.ndarray, h: np.ndarray, scales: np.ndarray) -> Optional[np.ndarray]:
    """int8 values of `rows` ([groups, rows, columns], float) on `scales` ([groups, rows]), rounded column by
    column against each group's `h` ([groups, columns, columns]); None where H cannot be inverted."""
    w = rows.astype(np.float64).copy()
    h = h.astype(np.float64).copy()
    scales = np.where(scales > 0, scales, 1.0)  # a channel of zeros (its scale may be 0) stays zeros
    columns = w.shape[-1]
    diagonal = np.einsum("gii->gi", h).copy()
    live = diagonal > 0  # an input that was zero on every sample: nearest rounding, nothing to carry
    typical = np.where(live.any(axis=1), np.sum(np.where(live, diagonal, 0), axis=1) / np.maximum(live.sum(axis=1), 1),
                       1.0)[:, None]
    diagonal = np.where(live, diagonal, typical) + DAMPING * typical
    h[:, np.arange(columns), np.arange(columns)] = diagonal
    try:
        upper = np.linalg.cholesky(np.linalg.inv(h)).transpose(0, 2, 1)  # H⁻¹ = Uᵀ U
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(upper)):
        return None
    values = np.empty_like(w)
    # In blocks of columns: within a block each rounding error moves the block's later columns at once;
    # the columns after the block take the whole block's errors in one matrix product.
    for start in range(0, columns, BLOCK):
        end = min(start + BLOCK, columns)
        errors = np.empty(w.shape[:2] + (end - start,))
        for i in range(start, end):
            values[:, :, i] = np.clip(np.round(w[:, :, i] / scales), -127, 127)
            errors[:, :, i - start] = (w[:, :, i] - values[:, :, i] * scales) / upper[:, i, i][:, None]
            w[:, :, i + 1:end] -= errors[:, :, i - start, None] * upper[:, None, i, i + 1:end]
        w[:, :, end:] -= np.matmul(errors, upper[:, start:end, end:])
    return values

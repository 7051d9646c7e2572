"""Conv3D, Conv3DTranspose and 3D pooling traced as 2D ops for the export (`planar_volumes`), so that a
video or volume model converts and its file is integer."""

from __future__ import annotations

import contextlib

from . import _keras
from .tracing import patched_calls


@contextlib.contextmanager
def planar_volumes(model):
    """Conv3D, Conv3DTranspose and 3D pooling traced as their 2D counterparts, for the export.

    TFLite's CONV_3D and CONV_3D_TRANSPOSE have float kernels only, and MaxPool3D and AvgPool3D have
    no builtin at all, so a video or volume model did not convert. For the trace, a Conv3D reads its
    `kd` depth-shifted slices of the input side by side on the channel axis and convolves them with
    one CONV_2D whose kernel is the 3D kernel laid out the same way, every output frame a batch
    entry: the same sums, on one int8 convolution with per-channel scales. A Conv3DTranspose is one
    TRANSPOSE_CONV per depth tap over every frame, spread and summed (`_conv3d_transpose_as_2d`).
    A 3D pool is a 2D pool over each frame's rows and columns, then one over frames (a max or a mean
    over a box is the max or mean of the per-axis ones, 'same' windows included). Channels-last layers only; grouped convolutions, and transposed
    ones with output padding or dilation, are left as they are.
    """
    with patched_calls(model, lambda layer: _planar_call(layer, _keras.tf)) as patched:
        yield [f"{layer.name} ({type(layer).__name__}): traced as its 2D counterpart over frames (TFLite has no "
               "integer 3D convolution or pool)" for layer in patched]


def _planar_call(layer, tf):
    """The call that spells `layer` with 2D ops, or None where this cannot."""
    kind = type(layer).__name__
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return None
    if kind == "Conv3D" and getattr(layer, "groups", 1) == 1:
        return _conv3d_as_2d(layer, tf)
    if kind == "Conv3DTranspose" and getattr(layer, "output_padding", None) is None \
            and tuple(layer.dilation_rate) == (1, 1, 1):
        return _conv3d_transpose_as_2d(layer, tf)
    if kind in ("MaxPooling3D", "AveragePooling3D", "MaxPool3D", "AvgPool3D", "AveragePool3D"):
        return _pool3d_as_2d(layer, tf, "MAX" if kind.startswith("Max") else "AVG")
    return None


def _depth_padding(size: int, window: int, stride: int, dilation: int, padding: str) -> tuple[int, int]:
    """TensorFlow's padding of one axis: ('same') as much as the strided windows need, more after than before."""
    if padding != "same":
        return 0, 0
    extent = (window - 1) * dilation + 1
    total = max((-(-size // stride) - 1) * stride + extent - size, 0)
    return total // 2, total - total // 2


def _frames_as_batch(x, tf):
    """(batch, frames, h, w, c) -> (batch * frames, h, w, c), and the function that puts the frames back."""
    shape = tf.shape(x)

    def back(y):
        return tf.reshape(y, tf.concat([shape[:2], tf.shape(y)[1:]], axis=0))

    return tf.reshape(x, tf.concat([[-1], shape[2:]], axis=0)), back


def _conv3d_as_2d(layer, tf):
    kd, kh, kw = layer.kernel_size
    sd, sh, sw = layer.strides
    dd, dh, dw = layer.dilation_rate
    padding = layer.padding.lower()

    def call(inputs, *args, **kwargs):
        x = tf.convert_to_tensor(inputs)
        before, after = _depth_padding(x.shape[1], kd, sd, dd, padding)
        if before or after:
            x = tf.pad(x, [[0, 0], [before, after], [0, 0], [0, 0], [0, 0]])
        frames = (x.shape[1] - (kd - 1) * dd - 1) // sd + 1
        stacked = tf.concat([x[:, i * dd: i * dd + (frames - 1) * sd + 1: sd] for i in range(kd)], axis=-1)
        kernel = tf.convert_to_tensor(layer.kernel)  # (kd, kh, kw, cin, cout)
        cin, cout = kernel.shape[3], kernel.shape[4]
        kernel = tf.reshape(tf.transpose(kernel, [1, 2, 0, 3, 4]), [kh, kw, kd * cin, cout])
        flat, back = _frames_as_batch(stacked, tf)
        y = tf.nn.conv2d(flat, kernel, strides=[1, sh, sw, 1], padding=padding.upper(), dilations=[1, dh, dw, 1])
        if layer.use_bias:
            y = tf.nn.bias_add(y, tf.convert_to_tensor(layer.bias))
        y = back(y)
        return layer.activation(y) if layer.activation is not None else y

    return call


def _transposed_length(size: int, window: int, stride: int, padding: str) -> int:
    """Keras' output length of a transposed convolution along one axis (no output padding or dilation)."""
    return size * stride if padding == "same" else size * stride + max(window - stride, 0)


def _conv3d_transpose_as_2d(layer, tf):
    """A Conv3DTranspose as one TRANSPOSE_CONV per depth tap of its kernel over every frame, each result
    spread over the output frames at the stride (zeros between) and shifted by its tap, then summed, and
    cut to Keras' output length ('same': the full length less max(kd - sd, 0), half of that from the
    front)."""
    kd, kh, kw = layer.kernel_size
    sd, sh, sw = layer.strides
    padding = layer.padding.lower()

    def call(inputs, *args, **kwargs):
        x = tf.convert_to_tensor(inputs)
        frames, height, width = x.shape[1], x.shape[2], x.shape[3]
        kernel = tf.convert_to_tensor(layer.kernel)  # (kd, kh, kw, filters, in_channels)
        flat, back = _frames_as_batch(x, tf)
        size = [_transposed_length(height, kh, sh, padding), _transposed_length(width, kw, sw, padding)]
        full = (frames - 1) * sd + kd
        total = 0
        for tap in range(kd):
            shape = tf.stack([tf.shape(flat)[0], size[0], size[1], kernel.shape[3]])
            y = back(tf.nn.conv2d_transpose(flat, kernel[tap], shape, [1, sh, sw, 1], padding.upper()))
            if sd > 1:  # frame f goes to f * sd: stride-1 zero frames after each, the last ones cut
                spread = tf.stack([y] + [tf.zeros_like(y)] * (sd - 1), axis=2)
                y = tf.reshape(spread, tf.concat([tf.shape(y)[:1], [frames * sd], tf.shape(y)[2:]], axis=0))
                y = y[:, :(frames - 1) * sd + 1]
            total = total + tf.pad(y, [[0, 0], [tap, kd - 1 - tap], [0, 0], [0, 0], [0, 0]])
        length = _transposed_length(frames, kd, sd, padding)
        start = max(kd - sd, 0) // 2 if padding == "same" else 0
        if full - start < length:  # a window shorter than the stride: zero frames at the end
            total = tf.pad(total, [[0, 0], [0, length - (full - start)], [0, 0], [0, 0], [0, 0]])
        y = total[:, start:start + length]
        if layer.use_bias:
            y = tf.nn.bias_add(y, tf.convert_to_tensor(layer.bias))
        return layer.activation(y) if layer.activation is not None else y

    return call


def _pool3d_as_2d(layer, tf, kind: str):
    pd, ph, pw = layer.pool_size
    sd, sh, sw = layer.strides
    padding = layer.padding.upper()
    pool = tf.nn.max_pool2d if kind == "MAX" else tf.nn.avg_pool2d

    def call(inputs, *args, **kwargs):
        x = tf.convert_to_tensor(inputs)
        if (ph, pw, sh, sw) != (1, 1, 1, 1):
            flat, back = _frames_as_batch(x, tf)
            x = back(pool(flat, [ph, pw], [sh, sw], padding))
        if (pd, sd) == (1, 1):
            return x
        shape = tf.shape(x)
        # frames as rows, each frame's pixels as columns: a (pd x 1) pool over frames
        rows = tf.reshape(x, tf.stack([shape[0], shape[1], shape[2] * shape[3], shape[4]]))
        pooled = pool(rows, [pd, 1], [sd, 1], padding)
        return tf.reshape(pooled, tf.concat([shape[:1], tf.shape(pooled)[1:2], shape[2:]], axis=0))

    return call

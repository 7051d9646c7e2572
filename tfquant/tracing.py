"""How Keras layers are traced for the export, so that the converter emits ops that quantize to int8.

Recurrent layers (LSTM, GRU, SimpleRNN, ConvLSTM, and those inside Bidirectional or stacked) are unrolled
over their fixed sequence length for the export: the converter then emits plain FULLY_CONNECTED,
LOGISTIC, TANH, MUL and ADD ops, which quantize to int8 as accurately as any dense layer, where
the fused or looped forms either do not convert or lose accuracy in int8. Masked softmaxes, argmax,
integer lookups, category encodings, buckets and 3D convolutions and pools are traced in forms TFLite
has integer kernels for. Each is a context manager that puts
the model back as it was.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Optional

from . import _keras
from .errors import DataError, called, problem
from .types import TensorSpec


# --- recurrent layers -----------------------------------------------------------------------


def recurrent_layers(model) -> Iterator[Any]:
    """Every recurrent layer of `model`, at any depth (inside Bidirectional, Sequential, wrappers)."""
    seen = set()
    for layer in _keras.all_layers(model):
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if hasattr(layer, "cell") and hasattr(layer, "unroll"):
            yield layer


@contextlib.contextmanager
def unrolled(model, inputs: list[TensorSpec]):
    """Unroll every recurrent layer for the trace, then put each back as it was.

    Yields the notes for the report ("lstm (LSTM): unrolled over 20 steps").
    """
    layers = list(recurrent_layers(model))
    saved = [(layer, layer.unroll, getattr(layer, "_could_use_gpu_kernel", None)) for layer in layers]
    notes: list[str] = []
    stack = contextlib.ExitStack()
    try:
        if any(_loops_regardless(layer) for layer in layers):
            stack.enter_context(_conv_rnn_unrolled())
        stack.enter_context(_without_dropout([cell for layer in layers for cell in _cells(layer)]))
        for layer in layers:
            steps = _steps(layer, inputs)
            layer.unroll = True
            if hasattr(layer, "_could_use_gpu_kernel"):  # tf_keras picks its fused loop from this flag
                layer._could_use_gpu_kernel = False
            notes.append(f"{layer.name} ({type(layer).__name__}): unrolled over {steps} steps")
        yield notes
    finally:
        stack.close()
        for layer, unroll, gpu in saved:
            layer.unroll = unroll
            if gpu is not None:
                layer._could_use_gpu_kernel = gpu


def _cells(layer) -> list:
    cell = layer.cell
    return list(getattr(cell, "cells", None) or [cell])


@contextlib.contextmanager
def _without_dropout(cells: list):
    """Recurrent cells traced with their dropout rates at zero, then put back.

    Keras 3's cells draw their dropout masks on every call, training or not (a seed generator's
    state assigned in the graph, which a frozen graph cannot hold: `recurrent_dropout=0.1` made an
    LSTM unconvertible); at inference the masks are never applied, so the function is the same.
    """
    saved = [(cell, name, getattr(cell, name)) for cell in cells for name in ("dropout", "recurrent_dropout")
             if isinstance(getattr(cell, name, None), float) and getattr(cell, name) > 0]
    try:
        for cell, name, _ in saved:
            setattr(cell, name, 0.0)
        yield
    finally:
        for cell, name, rate in saved:
            setattr(cell, name, rate)


def _loops_regardless(layer) -> bool:
    """A tf_keras convolutional recurrent layer (ConvLSTM1D/2D/3D): its call runs the loop with the
    backend's default, whatever its `unroll` says, and that loop's tensor lists do not convert."""
    from tf_keras.src.layers.rnn.base_conv_rnn import ConvRNN

    return isinstance(layer, ConvRNN)


@contextlib.contextmanager
def _conv_rnn_unrolled():
    """tf_keras' ConvRNN calls `backend.rnn` without `unroll`: for the trace, its module sees a
    backend whose `rnn` unrolls (every recurrent layer is unrolled for the export anyway)."""
    from tf_keras.src.layers.rnn import base_conv_rnn as module

    backend = module.backend

    class Unrolling:
        def __getattr__(self, name):
            return getattr(backend, name)

        @staticmethod
        def rnn(*args, **kwargs):
            kwargs["unroll"] = True
            return backend.rnn(*args, **kwargs)

    module.backend = Unrolling()
    try:
        yield
    finally:
        module.backend = backend


def _steps(layer, inputs: list[TensorSpec]) -> int:
    shape = _input_shape(layer)
    steps = shape[1] if shape is not None and len(shape) >= 2 else None
    if steps is None:
        # The layer sees the data's length only through the model inputs: take it from a
        # sequence-shaped input whose length the data fixed.
        fixed = [s.shape[1] for s in inputs if len(s.shape) >= 2 and s.shape[1] is not None]
        steps = fixed[0] if len(set(fixed)) == 1 else None
    if steps is None:
        names = ", ".join(repr(s.name) for s in inputs)
        raise DataError(problem(
            f"recurrent layer {layer.name!r} ({type(layer).__name__})",
            "a fixed sequence length to unroll it over (int8 needs the unrolled form)",
            f"none in the model's inputs {names}; give calibration data of shape (N, steps, ...) or set "
            f"the length with {called('input_shapes')} NAME=STEPS,...",
        ))
    return int(steps)


def _input_shape(layer) -> Optional[tuple]:
    try:
        shape = layer.input_shape if hasattr(layer, "input_shape") else None
    except (AttributeError, RuntimeError, ValueError):
        shape = None
    if shape is None:
        try:
            shape = tuple(layer.input.shape)
        except (AttributeError, RuntimeError, ValueError):
            return None
    if isinstance(shape, list):
        shape = shape[0]
    return tuple(shape) if shape is not None else None


# --- masked softmax ---------------------------------------------------------------------------


@contextlib.contextmanager
def quantizable_masking(model):
    """Mask attention after the softmax instead of before it, for the trace.

    Keras masks a softmax (MultiHeadAttention's, any Softmax layer given a mask, and the scores of
    Attention and AdditiveAttention under a padding or causal mask) by setting the masked scores
    to -1e9 or subtracting 1e9 from them. In int8 that one tensor then spans [-1e9, 10]: its scale
    rounds every real score to zero and attention becomes uniform. Here a masked score is set to
    `MASK_MARGIN` below the smallest score of its row instead: its weight after the softmax is
    below 1e-6 as before, and the tensor spans only the scores' own range plus the margin.
    """
    tf = _keras.tf
    patched, fused, scored = [], [], []
    for layer in _keras.all_layers(model):
        if type(layer).__name__ == "Softmax" and "call" not in vars(layer):
            patched.append(layer)
        elif hasattr(layer, "_masked_softmax"):
            # Keras 3's MultiHeadAttention (`_dropout`) and GroupQueryAttention (`dropout`) take a fused path
            # (ops.dot_product_attention, which masks the logits the same way) unless they have dropout; a
            # rate that inference ignores sends them through their own Softmax layer, patched like any other.
            rate = "_dropout" if hasattr(layer, "_dropout") else "dropout"
            if getattr(layer, rate, None) == 0.0:
                fused.append((layer, rate))
        elif hasattr(layer, "_apply_scores") and hasattr(layer, "_calculate_scores") \
                and "_apply_scores" not in vars(layer):
            scored.append(layer)  # Attention and AdditiveAttention subtract 1e9 from masked scores here
    for layer in patched:
        layer.call = _masked_softmax(layer, tf)
    for layer, name in fused:
        setattr(layer, name, 1e-12)
    for layer in scored:
        layer._apply_scores = _floored_scores(layer._apply_scores, tf)
    try:
        count = len(patched) + len(scored)
        yield [f"{count} masked softmax(es): masked scores set {MASK_MARGIN:g} below the row's smallest, "
               "not to -1e9, so int8 keeps the scores"] if count else []
    finally:
        for layer in patched:
            del layer.call
        for layer, name in fused:
            setattr(layer, name, 0.0)
        for layer in scored:
            del layer._apply_scores


@contextlib.contextmanager
def builtin_argmax():
    """Keras 3's `ops.argmax`/`argmin` as plain `tf.argmax`/`tf.argmin`, for the trace.

    Keras 3 first maps -0.0 to the smallest negative float, finding -0.0 by its sign bit through a
    bitcast and a BitwiseAnd that TFLite has no builtin for; TFLite's ARG_MAX does not tell -0.0
    from 0.0, and a model's class ids do not depend on it.
    """
    import sys

    numpy_ops = sys.modules.get("keras.src.backend.tensorflow.numpy")
    if numpy_ops is None:
        yield
        return
    tf = _keras.tf
    originals = {"argmax": numpy_ops.argmax, "argmin": numpy_ops.argmin}

    def plain(reduce):
        def arg(x, axis=None, keepdims=False):
            x = tf.convert_to_tensor(x)
            y = reduce(tf.reshape(x, [-1]) if axis is None else x, axis=0 if axis is None else axis,
                       output_type="int32")
            return numpy_ops._keepdims(x, y, axis) if keepdims else y
        return arg

    numpy_ops.argmax, numpy_ops.argmin = plain(tf.argmax), plain(tf.argmin)
    try:
        yield
    finally:
        numpy_ops.argmax, numpy_ops.argmin = originals["argmax"], originals["argmin"]


MASK_MARGIN = 16.0  # masked logits sit this far below the smallest real one: exp(-16) < 1e-6


def _floored(scores, mask, axis, tf):
    """`scores` where `mask` keeps them, elsewhere `MASK_MARGIN` below the smallest score along `axis`."""
    keep = tf.cast(mask, tf.bool) if mask.dtype != tf.bool else mask
    return tf.where(keep, scores, tf.reduce_min(scores, axis=axis, keepdims=True) - MASK_MARGIN)


def _floored_scores(apply_scores, tf):
    """An attention layer's `_apply_scores` with its mask applied as a floor under each row, not as -1e9."""

    def call(scores, value, scores_mask=None, training=False):
        if scores_mask is not None:
            if len(scores_mask.shape) == 2:  # a value mask (batch, Tv), as Keras reads it: the same for every query
                scores_mask = tf.expand_dims(scores_mask, axis=-2)
            scores = _floored(scores, scores_mask, -1, tf)
        return apply_scores(scores=scores, value=value, scores_mask=None, training=training)

    return call


def _masked_softmax(layer, tf):
    axis = layer.axis
    if isinstance(axis, (list, tuple)) and len(axis) == 1:
        axis = axis[0]

    def call(inputs, mask=None):
        if mask is not None:
            inputs = _floored(inputs, mask, axis, tf)
        if isinstance(axis, (list, tuple)):
            return _softmax_over(inputs, axis, tf)
        return tf.nn.softmax(inputs, axis=axis)

    return call


def _softmax_over(inputs, axes, tf):
    """A softmax over several axes (MultiHeadAttention with `attention_axes`) as one SOFTMAX over their
    merged length, which has an int8 kernel; Keras writes it as exp(x - logsumexp(x)), whose EXP, SUM
    and LOG each round in int8. The axes are moved last, merged, and put back."""
    rank = inputs.shape.rank
    axes = sorted({a % rank for a in axes})
    rest = [a for a in range(rank) if a not in axes]
    order = rest + axes
    in_place = order == list(range(rank))  # the axes are already the last ones
    moved = inputs if in_place else tf.transpose(inputs, order)
    shape = tf.shape(moved)
    merged = tf.reshape(moved, tf.concat([shape[:len(rest)], [-1]], axis=0))
    out = tf.reshape(tf.nn.softmax(merged, axis=-1), shape)
    return out if in_place else tf.transpose(out, [order.index(a) for a in range(rank)])


# --- integer lookups and category encodings ---------------------------------------------------


ENCODINGS = ("one_hot", "multi_hot", "count")


@contextlib.contextmanager
def comparable_lookups(model):
    """IntegerLookup, CategoryEncoding and Discretization traced as comparisons, for the export.

    Keras looks integer values up in a hash table (IntegerLookup) and encodes ids with a bincount
    (CategoryEncoding in tf_keras); TFLite has a builtin for neither, so a model of tabular data
    with a categorical column did not convert. Discretization's BUCKETIZE converts but has no
    integer kernel: the bucket of `x` is the number of boundaries at or below it (GREATER_EQUAL on
    the int8 input, then a SUM). A vocabulary is a short list of known values: the
    index of `x` is where `x` equals a value (EQUAL, SELECT_V2, SUM on integers), the out-of-vocabulary
    index where it equals none, and the one-hot, multi-hot or count encoding compares the ids with
    each index. The function is the same for every input; the file's ops stay integer. Layers this
    cannot spell (several OOV buckets, which hash; inverse lookups; TF-IDF; count weights) are left
    as they are, and the converter's error names them.
    """
    tf = _keras.tf
    patched = []
    for layer in _keras.all_layers(model):
        kind = type(layer).__name__
        if "call" in vars(layer):
            continue
        if kind == "IntegerLookup" and _spellable_lookup(layer):
            layer.call = _compared_lookup(layer, tf)
        elif kind == "CategoryEncoding" and getattr(layer, "output_mode", None) in ENCODINGS \
                and not getattr(layer, "sparse", False):
            layer.call = _compared_encoding(layer, tf)
        elif kind == "Discretization" and getattr(layer, "output_mode", None) in ("int", *ENCODINGS) \
                and _boundaries(layer) and not getattr(layer, "sparse", False):
            layer.call = _compared_buckets(layer, tf)
        else:
            continue
        patched.append(layer)
    policies = [(layer, layer.dtype_policy) for layer in patched if _casts_ids_to_float(layer)]
    for layer, _ in policies:
        layer.dtype_policy = _keras.keras3().DTypePolicy(_input_dtype(layer))
    try:
        yield [f"{layer.name} ({type(layer).__name__}): {_compared(layer)} (TFLite has no integer hash table, "
               "bincount or bucketize)" for layer in patched]
    finally:
        for layer in patched:
            del layer.call
        for layer, policy in policies:
            layer.dtype_policy = policy


def _input_dtype(layer) -> str:
    try:
        dtype = layer.input.dtype
    except (AttributeError, RuntimeError, ValueError):
        return "float32"
    return str(getattr(dtype, "name", dtype))


def _casts_ids_to_float(layer) -> bool:
    """A Keras 3 preprocessing layer (a DataLayer) casts its input to its compute dtype in a graph, before
    its call: integer ids would enter the file through a CAST to float, which stays float in int8. For
    the trace its policy is its input's dtype; its call still returns the dtype it did."""
    integer = _input_dtype(layer).startswith(("int", "uint"))
    return integer and any(c.__name__ == "DataLayer" for c in type(layer).__mro__) \
        and not str(layer.compute_dtype).startswith(("int", "uint"))


def _spellable_lookup(layer) -> bool:
    return (not getattr(layer, "invert", False) and getattr(layer, "num_oov_indices", 1) <= 1
            and getattr(layer, "output_mode", None) in ("int", *ENCODINGS) and not getattr(layer, "sparse", False)
            and not getattr(layer, "pad_to_max_tokens", False))


def _compared(layer) -> str:
    kind = type(layer).__name__
    if kind == "Discretization":
        return f"bucketed by comparing with its {len(_boundaries(layer))} boundaries"
    if kind == "CategoryEncoding":
        return f"encoded by comparing with its {int(layer.num_tokens)} indices"
    return f"looked up by comparing with its vocabulary of {int(layer.vocabulary_size())} indices"


def _boundaries(layer) -> list[float]:
    return [float(b) for b in (getattr(layer, "bin_boundaries", None) or [])]


def _output_dtype(layer, default: str) -> str:
    try:
        return str(layer.output.dtype.name if hasattr(layer.output.dtype, "name") else layer.output.dtype)
    except (AttributeError, RuntimeError, ValueError):
        return default


def _compared_lookup(layer, tf):
    """An IntegerLookup's call as comparisons with its vocabulary: index of each value, OOV where none matches."""
    vocabulary = [int(v) for v in layer.get_vocabulary()]
    oov = int(layer.num_oov_indices)
    masked = layer.mask_token is not None
    oov_index = 1 if masked and oov else 0
    special = int(masked) + oov
    pairs = ([(int(layer.mask_token), 0)] if masked else []) + \
        [(value, index) for index, value in enumerate(vocabulary) if index >= special]
    values = [value for value, _ in pairs]
    offsets = [index - oov_index for _, index in pairs]
    size = len(vocabulary)
    dtype = _output_dtype(layer, "int64" if layer.output_mode == "int" else "float32")

    def call(inputs, *args, **kwargs):
        x = tf.convert_to_tensor(inputs)
        match = tf.equal(tf.expand_dims(x, -1), tf.constant(values, x.dtype))
        ids = tf.reduce_sum(tf.where(match, tf.constant(offsets, tf.int32), 0), axis=-1) + oov_index
        if layer.output_mode == "int":
            return tf.cast(ids, dtype)
        return _encoded(ids, size, layer.output_mode, dtype, tf)

    return call


def _compared_encoding(layer, tf):
    """A CategoryEncoding's call as comparisons of its ids with each index."""
    dtype = _output_dtype(layer, "float32")
    original = type(layer).call

    def call(inputs, count_weights=None, *args, **kwargs):
        if count_weights is not None:
            return original(layer, inputs, count_weights, *args, **kwargs)
        return _encoded(tf.cast(inputs, tf.int32), int(layer.num_tokens), layer.output_mode, dtype, tf)

    return call


def _compared_buckets(layer, tf):
    """A Discretization's call as comparisons with its sorted boundaries: the count of those at or below x."""
    boundaries = sorted(_boundaries(layer))
    dtype = _output_dtype(layer, "int64" if layer.output_mode == "int" else "float32")

    def call(inputs, *args, **kwargs):
        x = tf.convert_to_tensor(inputs)
        # an integer x is at or above b where it is at or above ceil(b): compared as integers, no CAST
        edges = boundaries if x.dtype.is_floating else [math.ceil(b) for b in boundaries]
        above = tf.greater_equal(tf.expand_dims(x, -1), tf.constant(edges, x.dtype))
        ids = tf.reduce_sum(tf.where(above, 1, 0), axis=-1)
        if layer.output_mode == "int":
            return tf.cast(ids, dtype)
        return _encoded(ids, len(boundaries) + 1, layer.output_mode, dtype, tf)

    return call


def _encoded(ids, size: int, mode: str, dtype: str, tf):
    """Keras' one-hot, multi-hot or count encoding of integer `ids` over `size` indices.

    A rank-1 input, or a last axis of 1, is one id per sample; one-hot of a wider last axis encodes
    each id on a new axis (ONE_HOT, whose values `postquantize` puts on its output's scale), multi-hot
    and count encode the last axis as one set."""
    if mode == "one_hot":
        if ids.shape.rank > 1 and ids.shape[-1] == 1:
            ids = tf.squeeze(ids, -1)
        return tf.cast(tf.one_hot(tf.cast(ids, tf.int32), size), dtype)
    if ids.shape.rank == 1:
        ids = tf.expand_dims(ids, -1)
    hits = tf.equal(tf.expand_dims(ids, -1), tf.range(size, dtype=ids.dtype))  # (..., k, size)
    if mode == "count":
        return tf.cast(tf.reduce_sum(tf.where(hits, 1.0, 0.0), axis=-2), dtype)
    return tf.cast(tf.where(tf.reduce_any(hits, axis=-2), 1.0, 0.0), dtype)


# --- volumes (Conv3D, 3D pooling) --------------------------------------------------------------


@contextlib.contextmanager
def planar_volumes(model):
    """Conv3D, Conv3DTranspose and 3D pooling traced as their 2D counterparts, for the export.

    TFLite's CONV_3D and CONV_3D_TRANSPOSE have float kernels only, and MaxPool3D and AvgPool3D have
    no builtin at all, so a video or volume model did not convert. A Conv3DTranspose is one
    TRANSPOSE_CONV per depth tap over every frame, spread and summed (`_conv3d_transpose_as_2d`). For the trace, a Conv3D reads its `kd` depth-shifted
    slices of the input side by side on the channel axis and convolves them with one CONV_2D whose
    kernel is the 3D kernel laid out the same way, every output frame a batch entry: the same sums,
    on one int8 convolution with per-channel scales. A 3D pool is a 2D pool over each frame's rows and
    columns, then one over frames (a max or a mean over a box is the max or mean of the per-axis
    ones, 'same' windows included). Channels-last layers only; grouped convolutions, and transposed
    ones with output padding or dilation, are left as they are.
    """
    tf = _keras.tf
    patched = []
    for layer in _keras.all_layers(model):
        kind = type(layer).__name__
        if "call" in vars(layer) or getattr(layer, "data_format", "channels_last") != "channels_last":
            continue
        if kind == "Conv3D" and getattr(layer, "groups", 1) == 1:
            layer.call = _conv3d_as_2d(layer, tf)
        elif kind == "Conv3DTranspose" and getattr(layer, "output_padding", None) is None \
                and tuple(layer.dilation_rate) == (1, 1, 1):
            layer.call = _conv3d_transpose_as_2d(layer, tf)
        elif kind in ("MaxPooling3D", "AveragePooling3D", "MaxPool3D", "AvgPool3D", "AveragePool3D"):
            layer.call = _pool3d_as_2d(layer, tf, "MAX" if kind.startswith("Max") else "AVG")
        else:
            continue
        patched.append(layer)
    try:
        yield [f"{layer.name} ({type(layer).__name__}): traced as its 2D counterpart over frames (TFLite has no "
               "integer 3D convolution or pool)" for layer in patched]
    finally:
        for layer in patched:
            del layer.call


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

"""How Keras layers are traced for the export, so that the converter emits ops that quantize to int8.

Recurrent layers (LSTM, GRU, SimpleRNN, ConvLSTM, and those inside Bidirectional or stacked) are unrolled
over their fixed sequence length for the export: the converter then emits plain FULLY_CONNECTED,
LOGISTIC, TANH, MUL and ADD ops, which quantize to int8 as accurately as any dense layer, where
the fused or looped forms either do not convert or lose accuracy in int8. Masked softmaxes and
argmax are traced in forms TFLite has integer kernels for, normalizations through L2_NORMALIZATION
(a LayerNormalization on its centered input) where int8 loses them as Keras computes them, and so are
integer lookups, category encodings and buckets (`tfquant.lookups`) and 3D convolutions and pools
(`tfquant.volumes`), whose layers' calls are swapped for the trace by `patched_calls`. Each is a context manager that puts
the model back as it was.
"""

from __future__ import annotations

import contextlib
import math
import re
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
def unrolled(model, inputs: list[TensorSpec], *, split_gates: bool = False):
    """Unroll every recurrent layer for the trace, then put each back as it was; with `split_gates`,
    each LSTM cell computes its four gates apart (`tfquant.gates`).

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
        if split_gates:
            stack.enter_context(_gates_apart(fused_lstm_cells(model)))
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


def fused_lstm_cells(model) -> list:
    """The LSTM cells of `model` that compute their four gates in one product (Keras' `implementation=2`,
    the default of both versions), which the converter follows with a SPLIT."""
    return [cell for layer in recurrent_layers(model) for cell in _cells(layer)
            if type(cell).__name__ == "LSTMCell" and getattr(cell, "implementation", None) == 2]


@contextlib.contextmanager
def _gates_apart(cells: list):
    """LSTM cells traced with `implementation=1`, then put back: each gate's input and recurrent products
    and bias apart (the same function; Keras computes it so when recurrent dropout is on), so that the
    converter gives every gate FULLY_CONNECTED ops, and int8 scales, of its own."""
    try:
        for cell in cells:
            cell.implementation = 1
        yield
    finally:
        for cell in cells:
            cell.implementation = 2


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
            taken = layer.input  # with initial_state=, Keras 3 lists the sequence and the states
            shape = tuple((taken[0] if isinstance(taken, (list, tuple)) else taken).shape)
        except (AttributeError, RuntimeError, ValueError, IndexError):
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
    masked: set = set()  # the layers the trace gave a mask: only they are noted
    for layer in patched:
        layer.call = _masked_softmax(layer, tf, masked)
    for layer, name in fused:
        setattr(layer, name, 1e-12)
    for layer in scored:
        layer._apply_scores = _floored_scores(layer, tf, masked)
    notes: list[str] = []
    try:
        yield notes  # filled once the trace is done
        if masked:
            notes.append(f"{len(masked)} masked softmax(es): masked scores set {MASK_MARGIN:g} below the row's "
                         "smallest, not to -1e9, so int8 keeps the scores")
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


def _floored_scores(layer, tf, masked: set):
    """An attention layer's `_apply_scores` with its mask applied as a floor under each row, not as -1e9
    (the layer added to `masked` when it is given one)."""
    apply_scores = layer._apply_scores

    def call(scores, value, scores_mask=None, training=False):
        if scores_mask is not None:
            masked.add(id(layer))
            if len(scores_mask.shape) == 2:  # a value mask (batch, Tv), as Keras reads it: the same for every query
                scores_mask = tf.expand_dims(scores_mask, axis=-2)
            scores = _floored(scores, scores_mask, -1, tf)
        return apply_scores(scores=scores, value=value, scores_mask=None, training=training)

    return call


def _masked_softmax(layer, tf, masked: set):
    axis = layer.axis
    if isinstance(axis, (list, tuple)) and len(axis) == 1:
        axis = axis[0]

    def call(inputs, mask=None):
        if mask is not None:
            masked.add(id(layer))
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


# --- layer normalization ---------------------------------------------------------------------


@contextlib.contextmanager
def int8_norms(model, names: frozenset = frozenset()):
    """The normalizations named in `names` traced as int8 keeps them best, for the export: a LayerNormalization
    on its input minus its mean, and over the last axis (a LayerNormalization, Keras 3's RMSNormalization)
    through L2_NORMALIZATION (`_unit_scaled`).

    Keras computes the layer as `x * s + (beta - mean * s)` with `s = gamma * rsqrt(var + eps)`
    (tf_keras through a fused batch norm, Keras 3 in those words). Where the features sit far from 0
    next to their spread (raw columns, un-centered activations), `x * s` and `mean * s` are larger
    than the result and cancel: int8 sizes their scales for the large values, and the normalized
    result keeps a fraction of its levels. Given `x - mean(x)`, whose own mean is 0, the layer
    computes the same function and every tensor after the SUB spans only the spread; over the last
    axis it is then computed through L2_NORMALIZATION, where rows whose features are all equal no
    longer size the other rows' scales. Which layers need it is read from the calibrated float file
    (`cancelling_norms`): on the Transformer, CCT and MLP-Mixer models tried, whose inputs are
    centered, it was no better than Keras's form.

    Where nothing cancels, rows whose variances span decades still lose: one int8 scale for every row's
    `rsqrt(var + eps)` leaves the rows of large variance a level or two of it. Whether the L2 form serves
    such layers better is measured (`prepare.export_for_int8`): its output has a fixed scale, 1/128, which
    leaves each of n features about 128/sqrt(n) levels.
    """
    tf = _keras.tf
    with patched_calls(model, lambda layer: _int8_norm(layer, tf) if layer.name in names else None) as patched:
        yield patched


def _subtracts_mean(layer) -> bool:
    """A LayerNormalization that subtracts a mean (not an RMS normalization)."""
    return type(layer).__name__ == "LayerNormalization" and not getattr(layer, "rms_scaling", False)


def _rms(layer) -> bool:
    """Keras 3's RMSNormalization: x * rsqrt(mean(x²) + eps) * scale."""
    return type(layer).__name__ == "RMSNormalization"


def _int8_norm(layer, tf):
    """A LayerNormalization on its centered input (over the last axis through L2_NORMALIZATION), or an
    RMSNormalization over the last axis through L2_NORMALIZATION."""
    if not (_subtracts_mean(layer) or _rms(layer)):
        return None
    axes = _axes(layer)
    own = layer.call

    def call(inputs, *args, **kwargs):
        rank = inputs.shape.rank
        axis = sorted(a % rank for a in axes)
        last = axis == [rank - 1] and inputs.shape[-1] is not None
        if _rms(layer):
            return _unit_scaled(layer, inputs, tf) if last else own(inputs, *args, **kwargs)
        centered = inputs - tf.reduce_mean(inputs, axis=axis, keepdims=True)
        if not last:
            return own(centered, *args, **kwargs)
        return _unit_scaled(layer, centered, tf)

    return call


def _unit_scaled(layer, centered, tf):
    """A normalization over the last axis of `c` (a LayerNormalization's centered input, an RMSNormalization's
    input) through L2_NORMALIZATION.

    c / sqrt(mean(c²) + eps) is sqrt(n) · c / ||[c, sqrt(n·eps)]||: the same function, computed by TFLite's
    L2_NORMALIZATION, whose int8 kernel sums the squares in int32 and keeps its precision whatever a row's
    magnitude. Computed as Keras writes it, the mean of squares and its RSQRT take one int8 scale across
    rows: a row whose features are all equal (variance 0, 1/sqrt(eps) after the RSQRT) sizes it, and every
    other row's factor kept a level or two of it."""
    n = int(centered.shape[-1])
    floor = centered[..., :1] * 0.0 + math.sqrt(n * layer.epsilon)  # one more feature, sqrt(n·eps) on every row
    unit = tf.math.l2_normalize(tf.concat([centered, floor], axis=-1), axis=-1)[..., :n]
    out = unit * math.sqrt(n)
    if _rms(layer):
        return out * tf.cast(layer.scale, out.dtype)
    if layer.scale:
        out = out * tf.cast(layer.gamma, out.dtype)
    if layer.center:
        out = out + tf.cast(layer.beta, out.dtype)
    return out


def layer_norms(model) -> list[str]:
    """The names of the model's LayerNormalizations that subtract a mean (not RMS normalizations), at any depth."""
    return [layer.name for layer in _keras.all_layers(model) if _subtracts_mean(layer)]


def unit_norms(model) -> list[str]:
    """The names of the model's normalizations that L2_NORMALIZATION can compute (over their last axis):
    LayerNormalizations that subtract a mean and Keras 3's RMSNormalizations, at any depth."""
    return [layer.name for layer in _keras.all_layers(model)
            if (_subtracts_mean(layer) or _rms(layer)) and _last_axis(layer)]


def _axes(layer) -> list[int]:
    """The axes a normalization layer normalizes over, as a list."""
    return list(layer.axis) if isinstance(layer.axis, (list, tuple)) else [layer.axis]


def _last_axis(layer) -> bool:
    """Whether the layer normalizes over its input's last axis alone (unknown: taken as so; the trace checks)."""
    axes = _axes(layer)
    try:
        rank = len(layer.input.shape)
    except (AttributeError, ValueError, TypeError, RuntimeError):
        return len(axes) == 1
    return sorted(a % rank for a in axes) == [rank - 1]


NORM_CANCELLATION = 1.5  # a LayerNormalization's sum spanning less than its widest input by this much cancels


def cancelling_norms(calibrated: bytes, names: list[str], *, numbered: bool = False) -> dict[str, float]:
    """Per LayerNormalization of `names` whose ADDs and SUBs cancel in the calibrated float file: the largest
    ratio of an input's calibrated span to the output's (each reaching 0, as int8's range does), where it is
    over `NORM_CANCELLATION`. On centered inputs the ratio is about 1: the sum adds beta to the scaled
    input. The ops are found by the layer's name scope, `.../layer_normalization_2/...`, which Keras 3
    numbers in a traced graph (`numbered`: `layer_normalization_2_1`, the first layer's `layer_normalization_1`)."""
    from ai_edge_litert import schema_py_generated as schema

    from .flatbuffer import builtin_of, calibrated_reach, text, view_model

    model = view_model(calibrated)
    graph = model.subgraphs[0]
    layers_of = _scopes(names, numbered)
    sums = (schema.BuiltinOperator.ADD, schema.BuiltinOperator.SUB)

    found: dict[str, float] = {}
    for op in graph.operators:
        if builtin_of(model, op) not in sums:
            continue
        ends = [int(i) for i in op.inputs if i >= 0] + [int(op.outputs[0])]
        # The op's own layer is its output's scope (a residual ADD reading a normalization's output is the
        # next layer's); a model output is named by the signature, and its op is known by its inputs' scope.
        inside = layers_of(text(graph.tensors[ends[-1]].name))
        if "/" not in text(graph.tensors[ends[-1]].name):
            inside = set().union(*(layers_of(text(graph.tensors[i].name)) for i in ends[:-1]))
        spans = [calibrated_reach(graph.tensors[i]) for i in ends]
        if not inside or any(s is None for s in spans) or spans[-1] <= 0:
            continue
        ratio = max(spans[:-1]) / spans[-1]
        if ratio > NORM_CANCELLATION:
            for name in inside:
                found[name] = max(found.get(name, 0.0), ratio)
    return found


def _scopes(names: list[str], numbered: bool):
    """A function of a tensor's name giving the layers of `names` whose scope it is in (a scope is the
    layer's name, numbered with `numbered`)."""
    known = set(names)

    def layers_of(name: str) -> set[str]:
        scopes = name.split("/")[:-1]
        return {re.sub(r"_\d+$", "", scope) if numbered else scope for scope in scopes} & known

    return layers_of


@contextlib.contextmanager
def patched_calls(model, call_for):
    """For the trace, each layer of `model` (at any depth) for which `call_for(layer)` gives a function
    calls that instead of its own, and is put back after; yields the layers so patched. A layer that
    has a call of its own already (patched by another context) is left alone."""
    patched = []
    for layer in _keras.all_layers(model):
        call = None if "call" in vars(layer) else call_for(layer)
        if call is not None:
            layer.call = call
            patched.append(layer)
    try:
        yield patched
    finally:
        for layer in patched:
            del layer.call

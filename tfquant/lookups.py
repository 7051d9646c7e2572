"""IntegerLookup, CategoryEncoding and Discretization traced as comparisons for the export (`comparable_lookups`),
so that a model of tabular data converts and every op of its file is integer."""

from __future__ import annotations

import contextlib
import math

from . import _keras
from .tracing import patched_calls


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
    with patched_calls(model, lambda layer: _compared_call(layer, _keras.tf)) as patched:
        policies = [(layer, layer.dtype_policy) for layer in patched if _casts_ids_to_float(layer)]
        for layer, _ in policies:
            layer.dtype_policy = _keras.keras3().DTypePolicy(_input_dtype(layer))
        try:
            yield [f"{layer.name} ({type(layer).__name__}): {_compared(layer)} (TFLite has no integer hash table, "
                   "bincount or bucketize)" for layer in patched]
        finally:
            for layer, policy in policies:
                layer.dtype_policy = policy


def _compared_call(layer, tf):
    """The call that spells `layer` as comparisons, or None where this cannot."""
    kind = type(layer).__name__
    if kind == "IntegerLookup" and _spellable_lookup(layer):
        return _compared_lookup(layer, tf)
    if kind == "CategoryEncoding" and getattr(layer, "output_mode", None) in ENCODINGS \
            and not getattr(layer, "sparse", False):
        return _compared_encoding(layer, tf)
    if kind == "Discretization" and getattr(layer, "output_mode", None) in ("int", *ENCODINGS) \
            and _boundaries(layer) and not getattr(layer, "sparse", False):
        return _compared_buckets(layer, tf)
    return None


def _input_dtype(layer) -> str:
    try:
        return _keras.dtype_name(layer.input.dtype)
    except (AttributeError, RuntimeError, ValueError):
        return "float32"


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
        return _keras.dtype_name(layer.output.dtype)
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

"""Ranges an integer kernel cannot take: an ADD that cancels two large inputs (a LayerNormalization over one feature)."""

from __future__ import annotations

import numpy as np
import pytest

import tfquant
from tfquant.errors import ConversionError
from tfquant.limits import kernel_refusals


def series_transformer(k, series: np.ndarray, labels: np.ndarray):
    """The Keras example's Transformer for a univariate series: LayerNormalization(epsilon=1e-6) over the
    input's one feature first, then attention and a 1×1 Conv1D feed-forward, with residuals. A
    LayerNormalization over one value gives its beta whatever the input, computed as x·r − x·r + beta
    with r = 1/sqrt(1e-6): int8 took the result's range from that constant, 10^6 times narrower than
    its inputs', and the interpreter aborted while preparing the file."""
    k.utils.set_random_seed(0)
    inputs = k.Input(series.shape[1:], name="series")
    h = k.layers.LayerNormalization(epsilon=1e-6)(inputs)
    h = k.layers.MultiHeadAttention(key_dim=16, num_heads=2)(h, h)
    res = k.layers.Add()([h, inputs])
    h = k.layers.LayerNormalization(epsilon=1e-6)(res)
    h = k.layers.Conv1D(4, 1, activation="relu")(h)
    h = k.layers.Add()([k.layers.Conv1D(1, 1)(h), res])
    h = k.layers.GlobalAveragePooling1D(data_format="channels_first")(h)
    h = k.layers.Dense(32, activation="relu")(h)
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax", name="probs")(h))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(series, labels, epochs=6, batch_size=32, verbose=0)
    return model


@pytest.mark.parametrize("version", [3, 2])
def test_a_layer_normalization_over_one_feature_converts_fully_integer(version, digits):
    from tfquant._keras import keras, keras3

    k = keras3() if version == 3 else keras
    series, test = digits["x"].reshape(-1, 64, 1), digits["x_test"].reshape(-1, 64, 1)
    model = series_transformer(k, series, digits["y"])
    result = tfquant.quantize(model, series, eval_data=(test, digits["y_test"]), bench_runs=1)
    (output,) = result.report.outputs
    assert result.info.fully_integer and output.float.accuracy > 0.5
    assert output.quantized.agreement >= 0.97, output.quantized.agreement
    assert kernel_refusals(result.tflite) == []
    if version == 3:
        int16 = tfquant.quantize(model, series, eval_data=(test, digits["y_test"]), bench_runs=1, mode="int16x8")
        assert int16.report.outputs[0].quantized.agreement >= 0.97
        assert kernel_refusals(int16.tflite) == []


def test_a_file_the_kernels_cannot_take_is_named_not_run(digits):
    """LiteRT Quantizer fits the cancelling ops' ranges to their constant results: its file is refused
    with the op named, before the interpreter (which aborts on it) is asked to prepare it."""
    pytest.importorskip("ai_edge_quantizer")
    from tfquant._keras import keras3

    series = digits["x"].reshape(-1, 64, 1)
    model = series_transformer(keras3(), series, digits["y"])
    with pytest.raises(ConversionError) as refused:
        tfquant.quantize(model, series, bench_runs=1, quantizer="litert")
    message = str(refused.value)
    assert "expected an int8 file from LiteRT Quantizer that the interpreter's kernels take, found " in message
    assert "layer_normalization" in message and "finer than its integer kernel takes" in message
    assert "quantizer='converter'" in message or "quantizer converter" in message or "(quantizer) converter" in message

"""Attention layers keep their scores in int8: masks as a floor under each row, a softmax over several axes as one SOFTMAX."""

from __future__ import annotations

import numpy as np
import pytest

import tfquant

from checks import assert_int8_follows_keras, masked_attention_classifier, trained_and_quantized


@pytest.mark.parametrize("version", [3, 2])
@pytest.mark.parametrize("kind", ["Attention", "AdditiveAttention"])
def test_causal_attention_keeps_its_scores_in_int8(kind, version, digits, tmp_path):
    """Attention and AdditiveAttention mask by subtracting 1e9 from the masked scores: in int8 that
    tensor's scale rounded every real score to zero (Attention with `use_causal_mask`: 75 % agreement).
    The trace floors masked scores under their row instead."""
    from tfquant._keras import keras, keras3

    k = keras3() if version == 3 else keras
    k.utils.set_random_seed(0)
    inputs = k.Input((8, 8, 1), name="image")
    h = k.layers.Dense(16)(k.layers.Reshape((8, 8))(inputs))
    x = k.layers.Flatten()(getattr(k.layers, kind)()([h, h], use_causal_mask=True))
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax", name="probs")(x))
    result = trained_and_quantized(k, model, digits, tmp_path, epochs=8)
    assert_int8_follows_keras(model, result, digits, least=0.8)
    assert any("masked softmax" in note for note in result.report.export.notes), result.report.export


@pytest.mark.parametrize("version", [3, 2])
def test_attention_under_a_padding_mask_keeps_its_scores_in_int8(version, tmp_path):
    """An Embedding with `mask_zero` masks the padded keys of an Attention layer (a (batch, Tv) mask that Keras
    spreads over every query): 96.7 % (Keras 3) and 95.5 % (Keras 2) agreement with float before the floor."""
    from tfquant import zoo
    from tfquant._keras import keras, keras3

    data = zoo.tokens()
    model = masked_attention_classifier(keras3() if version == 3 else keras, data, epochs=8)
    model.save(tmp_path / "model.keras")
    np.savez(tmp_path / "calib.npz", tokens=data.train["tokens"][:200])
    np.savez(tmp_path / "test.npz", **data.test)
    result = tfquant.quantize(tmp_path / "model.keras", tmp_path / "calib.npz", eval_data=tmp_path / "test.npz",
                              bench_runs=1, diagnose=False)
    assert_int8_follows_keras(model, result, {"x_test": data.test["tokens"], "y_test": data.test["y"]}, least=0.8)


def test_grouped_query_attention_under_a_causal_mask_keeps_its_scores_in_int8(digits, tmp_path):
    """Keras 3's GroupQueryAttention takes the fused ops.dot_product_attention path when it has no dropout, which
    masks scores with -1e9 (83 % agreement with float); traced through its own Softmax, the mask is a floor."""
    from tfquant._keras import keras3

    k = keras3()
    k.utils.set_random_seed(0)
    inputs = k.Input((8, 8, 1), name="image")
    h = k.layers.Dense(32)(k.layers.Reshape((8, 8))(inputs))
    a = k.layers.GroupQueryAttention(head_dim=8, num_query_heads=4, num_key_value_heads=2)(h, h, use_causal_mask=True)
    x = k.layers.Flatten()(k.layers.Add()([h, a]))
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax", name="probs")(x))
    result = trained_and_quantized(k, model, digits, tmp_path, epochs=8)
    assert_int8_follows_keras(model, result, digits, least=0.8)
    assert model.layers[3].dropout == 0.0  # put back after the trace


@pytest.mark.parametrize("version", [3, 2])
def test_attention_over_two_axes_is_one_int8_softmax(version, digits, tmp_path):
    """MultiHeadAttention with `attention_axes=(1, 2)` (attention over an image's rows and columns) takes its
    softmax over two axes, which Keras writes as exp(x - logsumexp(x)): EXP, SUM and LOG each rounded in int8.
    The trace merges the axes into one SOFTMAX."""
    from tfquant._keras import keras, keras3

    k = keras3() if version == 3 else keras
    k.utils.set_random_seed(0)
    inputs = k.Input((8, 8, 1), name="image")
    x = k.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = k.layers.Add()([x, k.layers.MultiHeadAttention(2, 8, attention_axes=(1, 2))(x, x)])
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax", name="probs")(k.layers.Flatten()(x)))
    result = trained_and_quantized(k, model, digits, tmp_path, epochs=6)
    assert_int8_follows_keras(model, result, digits, least=0.8)
    assert not {"EXP", "LOG"} & {op.name for op in result.info.ops}, sorted({op.name for op in result.info.ops})


@pytest.mark.parametrize("version", [3, 2])
def test_attention_products_compute_alike_on_every_runtime(version, digits):
    """The interpreter TensorFlow bundles ignores a BATCH_MATMUL's right operand zero point, LiteRT
    subtracts it: attention's probabilities times its values came out tens of int8 steps apart on the two
    for the same file. That operand is put on a symmetric scale, and the file computes the same bytes on
    both."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from tfquant._keras import keras, keras3
    from tfquant.inspect import inspect

    k = keras3() if version == 3 else keras
    k.utils.set_random_seed(1)
    inputs = k.Input((8, 8), name="rows")
    h = k.layers.Dense(16, activation="relu")(inputs)
    x = k.layers.MultiHeadAttention(num_heads=2, key_dim=8)(h, h)
    model = k.Model(inputs, k.layers.Dense(10, name="logits")(k.layers.Flatten()(x)))
    tflite = tfquant.quantize(model, digits["x"][:100, ..., 0], bench_runs=1, diagnose=False).tflite
    info = inspect(tflite)
    products = [op for op in info.ops if op.name == "BATCH_MATMUL"]
    assert len(products) == 2 and all(info.tensors[op.inputs[1]].quantization.zero_point == [0] for op in products)

    def run(interpreter_class, sample):
        interpreter = interpreter_class(model_content=tflite)
        interpreter.allocate_tensors()
        given, read = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        scale, zero = given["quantization"]
        interpreter.set_tensor(given["index"], np.clip(np.round(sample[None] / scale + zero), -128, 127).astype(np.int8))
        interpreter.invoke()
        return interpreter.get_tensor(read["index"])

    samples = digits["x_test"][:20, ..., 0]
    assert all(np.array_equal(run(Interpreter, s), run(tf.lite.Interpreter, s)) for s in samples)


@pytest.mark.parametrize("version", [3, 2])
def test_a_softmax_given_no_mask_is_not_noted_as_masked(version):
    """Every Softmax layer is traced through the masking floor, but only one the model gives a mask is
    noted: a detector's per-anchor class softmax has none."""
    from tfquant._keras import keras, keras3

    k = keras3() if version == 3 else keras
    inputs = k.Input((4, 3), name="anchors")
    model = k.Model(inputs, k.layers.Softmax(name="classes")(k.layers.Dense(5)(inputs)))
    calibration = np.random.default_rng(0).normal(size=(32, 4, 3)).astype(np.float32)
    result = tfquant.quantize(model, {"anchors": calibration}, bench_runs=1, diagnose=False)
    assert result.info.fully_integer
    assert not any("masked softmax" in note for note in result.report.export.notes), result.report.export.notes

"""A LayerNormalization of features far from 0: traced on its input minus its mean, through L2_NORMALIZATION
(`tracing.centered_layer_norms`)."""

from __future__ import annotations

import numpy as np
import pytest

import tfquant


def raw_columns(offset: float) -> np.ndarray:
    """Eight columns in [offset, offset + 100]: each row has its own spread, all of it far from 0 next to it."""
    rng = np.random.default_rng(0)
    return (offset + rng.uniform(0, 60, (600, 8)) + np.linspace(0, 40, 8)).astype(np.float32)


@pytest.mark.parametrize("version", [3, 2])
def test_a_layer_normalization_of_raw_columns_keeps_its_output(version):
    """Keras computes x·s + (beta − mean·s): at 500 ± 50 the two products are ten times the result, and int8
    sized for them left the output 22 % (Keras 3) and 10 % (Keras 2) of its spread off float; at 0–100,
    5.9 %. The calibrated float file shows the sums cancelling, and the layer is traced again on its centered
    input, through L2_NORMALIZATION: 3.9 % and 1.4 %."""
    from tfquant._keras import keras, keras3

    k = keras3() if version == 3 else keras
    k.utils.set_random_seed(0)
    inputs = k.Input((8,), name="x")
    model = k.Model(inputs, k.layers.Dense(4, name="y")(k.layers.LayerNormalization()(inputs)))
    errors = []
    for offset in (0.0, 500.0):
        x = raw_columns(offset)
        result = tfquant.quantize(model, {"x": x[:300]}, eval_data={"x": x[300:]}, bench_runs=1, diagnose=False)
        assert result.info.fully_integer
        errors.append(result.report.outputs[0].quantized.rel_rmse)
    assert errors[0] < 0.03 and errors[1] < 0.05, errors
    (note,) = [note for note in result.report.to_dict()["export"]["notes"] if "LayerNormalization" in note]
    assert note.startswith("1 LayerNormalization(s) computed on their input minus its mean"), note
    # Columns centered already: the sums add beta to the scaled input and cancel nothing; the layer is left as
    # Keras computes it (a SUB would be one more rounding).
    centered = np.random.default_rng(1).standard_normal((300, 8)).astype(np.float32)
    result = tfquant.quantize(model, {"x": centered}, bench_runs=1, diagnose=False)
    assert not [note for note in result.report.to_dict()["export"]["notes"] if "LayerNormalization" in note]


@pytest.mark.parametrize("version", [3, 2])
def test_rows_whose_features_are_all_equal_do_not_size_the_other_rows_scales(version):
    """A fifth of the rows hold one value in every column (a sensor at rest, an empty record): their
    variance is 0 and 1/sqrt(var + eps) is 1/sqrt(eps). Computed as Keras writes it, that factor's one int8
    scale was sized for them, and the other rows' factors (1/σ, about 0.05) kept a level or two. Through
    L2_NORMALIZATION, which sums the squares in int32, the rows keep their own precision."""
    from tfquant._keras import keras, keras3

    from tfquant.inspect import inspect

    k = keras3() if version == 3 else keras
    k.utils.set_random_seed(0)
    inputs = k.Input((8,), name="x")
    model = k.Model(inputs, k.layers.Dense(4, name="y")(k.layers.LayerNormalization()(inputs)))
    x = raw_columns(500.0)
    x[::5] = 520.0  # every fifth row constant
    result = tfquant.quantize(model, {"x": x[:300]}, eval_data={"x": x[300:]}, bench_runs=1, diagnose=False)
    assert result.info.fully_integer and "L2_NORMALIZATION" in {op.name for op in inspect(result.tflite).ops}
    assert result.report.outputs[0].quantized.rel_rmse < 0.05, result.report.outputs[0].quantized.rel_rmse


def pixel_norm_model(k, norm):
    """ReLU convolutions, `norm` over each pixel's 16 channels, a max pool and a head, trained on the digits:
    on their flat background a pixel's channels barely vary, elsewhere they vary a thousand times more."""
    layers = k.layers
    k.utils.set_random_seed(0)
    inputs = k.Input((8, 8, 1), name="image")
    block = k.Sequential([layers.Conv2D(16, 3, padding="same", activation="relu"), layers.BatchNormalization(),
                          layers.Conv2D(16, 3, padding="same", activation="relu")])
    x = norm(layers.Add()([block(inputs), layers.Conv2D(16, 1)(inputs)]))
    x = layers.Dense(32, activation="elu")(layers.GlobalMaxPooling2D()(x))
    return k.Model(inputs, layers.Dense(10, activation="softmax", name="probs")(x))


@pytest.mark.parametrize("version,kind", [(3, "LayerNormalization"), (2, "LayerNormalization"),
                                          (3, "RMSNormalization")])
def test_a_normalization_whose_rows_span_decades_goes_through_l2_normalization(digits, version, kind):
    """Nothing cancels here, but one int8 scale for every pixel's rsqrt(var + eps) is sized by the flat
    background's, and the pixels that carry the digit keep a level or two of theirs: top-1 agreement with
    float was 93.0 % (Keras 3) and 95.5 % (Keras 2) for a LayerNormalization, 88.6 % for Keras 3's
    RMSNormalization. Held-out calibration samples measure the L2_NORMALIZATION form clearly closer to
    float, and the file is made with it: 98.3, 98.9 and 99.7 %."""
    from tfquant._keras import keras, keras3
    from tfquant.inspect import inspect

    k = keras3() if version == 3 else keras
    model = pixel_norm_model(k, getattr(k.layers, kind)(name="pixel_norm"))
    model.compile(optimizer=k.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(digits["x"], digits["y"], epochs=20, verbose=0)
    result = tfquant.quantize(model, digits["x"][:200], eval_data=(digits["x_test"], digits["y_test"]),
                              bench_runs=1, diagnose=False)
    assert result.info.fully_integer and "L2_NORMALIZATION" in {op.name for op in inspect(result.tflite).ops}
    assert result.report.agreement.top1 >= 0.97, result.report.agreement.top1
    notes = [note for note in result.report.to_dict()["export"]["notes"] if "L2_NORMALIZATION" in note]
    assert notes == ["1 normalization(s) computed through L2_NORMALIZATION (held-out calibration samples: clearly "
                     "closer to float than as Keras computes them): pixel_norm"], notes
    if kind == "RMSNormalization":  # norm_form "keras" (a recipe written before the choice) keeps Keras's form
        kept = tfquant.quantize(model, digits["x"][:200], eval_data=(digits["x_test"], digits["y_test"]),
                                norm_form="keras", bench_runs=1, diagnose=False)
        assert "L2_NORMALIZATION" not in {op.name for op in inspect(kept.tflite).ops}
        assert kept.report.agreement.top1 < 0.9 and kept.report.recipe.norm_form == "keras", kept.report.agreement


def test_a_normalization_int8_keeps_as_keras_computes_it_is_left_so(digits):
    """A ConvNeXt-style block: a LayerNormalization over the 24 channels of a depthwise convolution's output,
    whose rows' variances stay within a decade or two. Keras's form agrees with float on 99.7 % of the test
    digits, the L2 form on 99.2 % (its output's fixed 1/128 scale leaves each channel about 26 levels);
    the held-out samples see no clear gain, and the layer is left as Keras computes it."""
    from tfquant._keras import keras3
    from tfquant.inspect import inspect

    k = keras3()
    k.utils.set_random_seed(0)
    layers = k.layers
    inputs = k.Input((8, 8, 1), name="image")
    x = layers.LayerNormalization(epsilon=1e-6)(layers.Conv2D(24, 2, strides=2)(inputs))
    for _ in range(2):
        block = layers.LayerNormalization(epsilon=1e-6)(layers.DepthwiseConv2D(3, padding="same")(x))
        x = layers.Add()([x, layers.Dense(24)(layers.Dense(48, activation="gelu")(block))])
    x = layers.LayerNormalization()(layers.GlobalAveragePooling2D()(x))
    model = k.Model(inputs, layers.Dense(10, activation="softmax", name="probs")(x))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(digits["x"], digits["y"], epochs=15, batch_size=32, verbose=0)
    result = tfquant.quantize(model, digits["x"][:300], eval_data=(digits["x_test"], digits["y_test"]),
                              bench_runs=1, diagnose=False)
    assert result.info.fully_integer and "L2_NORMALIZATION" not in {op.name for op in inspect(result.tflite).ops}
    assert not [note for note in result.report.to_dict()["export"]["notes"] if "L2_NORMALIZATION" in note]
    assert result.report.agreement.top1 >= 0.98, result.report.agreement.top1

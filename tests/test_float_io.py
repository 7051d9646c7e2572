"""Float inputs whose raw features one int8 scale cannot hold: normalized in float before the int8 graph."""

from __future__ import annotations

import re

import numpy as np
import pytest

import tfquant
from tfquant.errors import AccuracyBudgetError, StrictModeError
from tfquant.spec import ConvertSpec


def table(digits) -> tuple[np.ndarray, np.ndarray]:
    """The zoo's six raw columns of each digit (`zoo.raw_table`: an ink total in 0..300, a year in
    1970..1985, a 0/1 flag and three means in 0..1), training and held-out."""
    from tfquant import zoo

    split = zoo.raw_table()
    return split.train["features"], split.test["features"]


def normalized_classifier(k, features: np.ndarray, labels: np.ndarray):
    """The Keras tutorials' model of a table: a Normalization adapted to the raw columns, then dense layers."""
    k.utils.set_random_seed(0)
    normalize = k.layers.Normalization()
    normalize.adapt(features)
    inputs = k.Input((features.shape[1],), name="features")
    hidden = k.layers.Dense(32, activation="relu")(k.layers.Dense(32, activation="relu")(normalize(inputs)))
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax", name="probs")(hidden))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(features, labels, epochs=20, batch_size=32, verbose=0)
    return model


def ops_of(result) -> list[tuple[str, bool]]:
    return [(op.name, op.float) for op in result.info.ops]


@pytest.mark.parametrize("version", [3, 2])
def test_a_normalization_of_raw_columns_runs_in_float_before_the_int8_graph(version, digits):
    """One int8 scale for a year (1970 to 1985) and three means in 0..1 leaves the means no level: int8
    falls to chance. The input is taken as float32, its Normalization's SUB and MUL run in float, and
    the rest is int8; the IO change is said."""
    from tfquant._keras import keras, keras3

    k = keras3() if version == 3 else keras
    features, test = table(digits)
    model = normalized_classifier(k, features, digits["y"])
    result = tfquant.quantize(model, features, eval_data=(test, digits["y_test"]), bench_runs=1)
    ops = ops_of(result)
    assert ops[:3] == [("SUB", False), ("MUL", False), ("QUANTIZE", False)], ops
    assert all(dtype in ("int8", "int32") for op in result.info.ops[3:] for dtype in op.input_dtypes + op.output_dtypes)
    assert result.info.fully_integer and [(t.name, t.dtype) for t in result.info.inputs] == [("features", "float32")]
    assert result.info.outputs[0].dtype == "int8"  # only the input changed
    (output,) = result.report.outputs
    assert output.float.accuracy > 0.45 and output.quantized.agreement >= 0.95
    assert abs(output.float.accuracy - output.quantized.accuracy) <= 0.02
    (note,) = [w for w in result.report.warnings if w.startswith("input 'features'")]
    assert re.fullmatch(r"input 'features' is float32, not int8: its normalization \(SUB, MUL\) runs in float and "
                        r"the int8 graph starts after it; taken as int8: its one int8 scale spans \[0, 19\d\d\] "
                        r"\(feature 1 reaches 19\d\d; int8 also holds 0\), so feature \d, in .*, keeps about [\d.]+ "
                        r"of 256 levels", note), note
    assert result.report.recipe.float_io_norm == "on"
    assert not any("normalization" in w.tensor for w in result.report.range_lint), result.report.range_lint

    if version == 3:  # pinned to int8, every input takes int8: the same model at chance, and the lint says why
        pinned = tfquant.quantize(model, features, eval_data=(test, digits["y_test"]), io="int8", bench_runs=1)
        assert pinned.info.inputs[0].dtype == "int8" and pinned.report.recipe.float_io_norm == "off"
        assert pinned.report.outputs[0].quantized.agreement < 0.5
        assert any(w.startswith("input 'features': its one int8 scale spans") for w in pinned.report.warnings)


def test_dense_layers_reading_raw_columns_get_a_standardization_in_float(digits):
    """No Normalization in the model (its first dense layer reads the raw columns, the normalization
    folded into its weights): a standardization is put before it in the float file and its inverse
    folded into the weights, and it runs in float as above."""
    from tfquant._keras import keras3

    k = keras3()
    features, test = table(digits)
    trained = normalized_classifier(k, features, digits["y"])
    normalize, first = trained.layers[1], trained.layers[2]
    mean, variance = (np.asarray(v).reshape(-1) for v in (normalize.mean, normalize.variance))
    deviation = np.sqrt(np.maximum(variance, 1e-7))  # Keras' own floor of the deviation
    inputs = k.Input((features.shape[1],), name="features")
    raw = k.layers.Dense(32, activation="relu")
    hidden = raw(inputs)
    for layer in trained.layers[3:]:
        hidden = layer(hidden)
    model = k.Model(inputs, hidden)
    w, b = first.get_weights()
    raw.set_weights([w / deviation[:, None], b - (mean / deviation) @ w])
    assert np.allclose(model.predict(test[:50], verbose=0), trained.predict(test[:50], verbose=0), atol=1e-4)

    result = tfquant.quantize(model, features, eval_data=(test, digits["y_test"]), bench_runs=1)
    assert ops_of(result)[:3] == [("SUB", False), ("MUL", False), ("QUANTIZE", False)]
    assert result.info.fully_integer and result.info.inputs[0].dtype == "float32"
    assert any(note.startswith("put a normalization (SUB, MUL: each feature's calibration range onto [-1, 1]) in "
                               "front of the 1 dense op(s) reading input 'features'")
               for note in result.report.export.notes), result.report.export.notes
    (output,) = result.report.outputs
    assert output.quantized.agreement >= 0.95
    off = tfquant.quantize(model, features, eval_data=(test, digits["y_test"]), float_io_norm="off", bench_runs=1)
    assert off.report.outputs[0].quantized.agreement < 0.5


def test_inputs_that_int8_holds_are_left_as_they_are(digits):
    """Pixels in 0..1 through a Normalization: one scale holds every feature, so nothing changes."""
    from tfquant._keras import keras3

    k = keras3()
    x = digits["x"].reshape(len(digits["x"]), -1)
    model = normalized_classifier(k, x, digits["y"])
    result = tfquant.quantize(model, x[:200], bench_runs=1)
    assert result.info.inputs[0].dtype == "int8" and result.info.fully_integer
    assert not any(w.startswith("input 'features'") for w in result.report.warnings)


def test_a_feature_int8_keeps_a_coarse_copy_of_leaves_the_input_int8(digits):
    """The digit's 16 row and column sums: the edge columns, nearly always 0, keep about 12 levels on the
    input's scale, which the lint warns of, but a coarse copy is what they carry: normalized on the
    calibration data's ranges, their rare larger values would be clipped (a regression on such columns
    went from 2 % to 7-10 % of σ off float that way). Only a feature left fewer than 8 levels
    (`float_io.RUINED`) makes a float input, and the int8 input stays."""
    from tfquant._keras import keras3
    from tfquant.lint import narrowest

    k = keras3()
    k.utils.set_random_seed(0)
    sums = lambda x: np.concatenate([x[..., 0].sum(axis=1), x[..., 0].sum(axis=2)], axis=1).astype(np.float32) / 8
    features, test = sums(digits["x"]), sums(digits["x_test"])
    narrow = narrowest(features[:200])
    assert narrow is not None and 8 < narrow.levels < 16
    inputs = k.Input((16,), name="stats")
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax")(k.layers.Dense(32, activation="relu")(inputs)))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(features, digits["y"], epochs=20, verbose=0)
    result = tfquant.quantize(model, features, eval_data=(test, digits["y_test"]), bench_runs=1)
    assert result.info.inputs[0].dtype == "int8" and not any("standardization" in n for n in result.report.export.notes)
    assert result.report.outputs[0].quantized.agreement >= 0.97


def test_the_spec_pins_integer_inputs_only_when_io_is_given():
    assert ConvertSpec().recipe.float_io_norm == "on"
    assert ConvertSpec(io="float32").recipe.float_io_norm == "on"
    assert ConvertSpec(io="int8").recipe.float_io_norm == "off"
    assert ConvertSpec(io="int8", float_io_norm="on").recipe.float_io_norm == "on"  # a replayed recipe
    assert ConvertSpec(float_io_norm="off").recipe.float_io_norm == "off"
    assert ConvertSpec(quantizer="litert").recipe.float_io_norm == "off"


def test_a_budget_failure_with_io_pinned_names_the_input(digits):
    """Raw features near 1000, normalized inside the model, with --io int8: the input's int8 scale must
    reach 0 and each feature keeps a few levels; the error says where it starts. Not pinned, the same
    model converts within budget with the input in float32."""
    from tfquant._keras import keras3

    k = keras3()
    k.utils.set_random_seed(0)
    features = (1000 + 16 * np.random.default_rng(0).random((300, 8))).astype(np.float32)
    inputs = k.Input((8,), name="features")
    normalize = k.layers.Normalization()
    normalize.adapt(features)
    model = k.Model(inputs, k.layers.Dense(1, name="price")(k.layers.Dense(16, activation="relu")(normalize(inputs))))
    with pytest.raises(AccuracyBudgetError, match=r"output 'price': expected an RMSE of at most 0.050 .*; input "
                                                  r"'features': its one int8 scale spans \[0, 1016\] .* keeps about 3.9 of 256 levels"):
        tfquant.quantize(model, features[:200], eval_data=features[200:], io="int8", bench_runs=1)
    result = tfquant.quantize(model, features[:200], eval_data=features[200:], bench_runs=1)
    assert result.info.inputs[0].dtype == "float32" and result.report.outputs[0].quantized.rel_rmse < 0.05


def price_and_count(k):
    """A price (about 10^3) and a count (about 0.3) in one output, both from the ink."""
    inputs = k.Input((8, 8, 1), name="image")
    head = k.layers.Dense(2, name="targets")
    model = k.Model(inputs, head(k.layers.Flatten()(inputs)))
    weights = np.zeros((64, 2), np.float32)
    weights[:, 0], weights[:, 1] = 10000 / 64, 1 / 64
    head.set_weights([weights, np.zeros(2, np.float32)])
    return model


def column_errors(result, model, x) -> np.ndarray:
    """Each output column's RMSE against Keras, relative to its own standard deviation, on the int8 file."""
    from tfquant.data import load_data
    from tfquant.harness import Runner

    runner = Runner(result.tflite)
    got = runner.predict(load_data({"image": x}, runner.specs))["targets"].astype(np.float64)
    expected = model.predict(x, verbose=0).astype(np.float64)
    return np.sqrt(np.mean((got - expected) ** 2, axis=0)) / expected.std(axis=0)


@pytest.mark.parametrize("version", [3, 2])
def test_targets_of_different_scales_in_one_output_are_rescaled_in_float(version, digits):
    """One int8 scale for a price and a count leaves the count no level (its RMSE 9 times its own
    spread), while the output's relative RMSE, the price's, looks fine. The dense op's columns are
    divided by their reach and a MUL after the int8 graph gives it back: the output is float32, and
    each column keeps int8's levels over its own range."""
    from tfquant._keras import keras, keras3

    k = keras3() if version == 3 else keras
    model = price_and_count(k)
    result = tfquant.quantize(model, digits["x"][:200], eval_data=digits["x_test"], bench_runs=1, diagnose=False)
    ops = ops_of(result)
    assert ops[-2:] == [("DEQUANTIZE", False), ("MUL", False)] and result.info.fully_integer, ops
    assert result.info.outputs[0].dtype == "float32" and result.info.inputs[0].dtype == "int8"
    errors = column_errors(result, model, digits["x_test"])
    assert errors.max() < 0.03, errors
    assert any(note.startswith("divided each column of the dense op writing output 'targets' by its largest magnitude")
               for note in result.report.export.notes), result.report.export.notes
    (note,) = [w for w in result.report.warnings if w.startswith("output 'targets'")]
    assert re.fullmatch(r"output 'targets' is float32, not int8: its last per-column ops \(MUL\) run in float after "
                        r"the int8 graph; given as int8: its one int8 scale spans \[0, [\d.]+\] \(column 0 reaches "
                        r"[\d.]+; int8 also holds 0\), so column 1, in .*, keeps about 0.0\d+ of 256 levels", note), note

    if version == 3:  # pinned, the count keeps no level, and the report says so with its own error
        pinned = tfquant.quantize(model, digits["x"][:200], eval_data=digits["x_test"], bench_runs=1, diagnose=False,
                                  io="int8")
        assert column_errors(pinned, model, digits["x_test"])[1] > 1
        (output,) = pinned.report.outputs
        assert output.task == "regression" and output.quantized.rel_rmse < 0.05  # within budget, as a whole
        (warning,) = [w for w in pinned.report.warnings if w.startswith("output 'targets'")]
        assert re.match(r"output 'targets': its one int8 scale spans \[0, [\d.e+]+\] \(column 0 reaches .*; int8 "
                        r"also holds 0\), so column 1, in \[[\d.]+, [\d.]+\], keeps about 0.0\d+ of 256 levels: its "
                        r"RMSE against float is [\d.,]+ % of its own standard deviation\. Fix: ", warning), warning


@pytest.mark.parametrize("version", [3, 2])
def test_integer_columns_keep_their_type_and_are_normalized_in_float(version, digits):
    """Counts and a year as int64 columns (a table read into integers): the file takes them as they are,
    but one int8 scale after their CAST left the small counts and the flag no level (chance). The CAST
    and the Normalization run in float, and the int8 graph starts after them; the input stays int64."""
    from tfquant._keras import keras, keras3

    k = keras3() if version == 3 else keras
    def columns(x: np.ndarray) -> np.ndarray:
        image = x[..., 0]
        return np.stack([np.round(image.sum(axis=(1, 2)) * 100), 1970 + np.round(image[:, :, 4:].sum(axis=(1, 2))),
                         image[:, 0].sum(axis=1) > 0.5, np.round(image[:, :4].sum(axis=(1, 2)))], axis=1).astype(np.int64)

    features, test = columns(digits["x"]), columns(digits["x_test"])
    k.utils.set_random_seed(0)
    normalize = k.layers.Normalization()
    normalize.adapt(features.astype(np.float32))
    inputs = k.Input((4,), dtype="int64", name="counts")
    hidden = k.layers.Dense(32, activation="relu")(k.layers.Dense(32, activation="relu")(normalize(inputs)))
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax", name="probs")(hidden))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(features, digits["y"], epochs=20, verbose=0)
    result = tfquant.quantize(model, {"counts": features}, eval_data=({"counts": test}, digits["y_test"]), bench_runs=1)
    assert ops_of(result)[:4] == [("CAST", False), ("SUB", False), ("MUL", False), ("QUANTIZE", False)], ops_of(result)
    assert result.info.fully_integer and result.info.inputs[0].dtype == "int64"
    (output,) = result.report.outputs
    assert output.float.accuracy > 0.4 and output.quantized.agreement >= 0.95
    assert any(w.startswith("input 'counts' keeps its integer type, and its cast and normalization (CAST, SUB, MUL) "
                            "run in float before the int8 graph") for w in result.report.warnings)
    off = tfquant.quantize(model, {"counts": features}, eval_data=({"counts": test}, digits["y_test"]),
                           float_io_norm="off", bench_runs=1)
    assert off.report.outputs[0].quantized.agreement < 0.5


def log_classifier(k, x: np.ndarray, labels: np.ndarray):
    """A model that takes magnitudes and compresses them itself, as an audio model may take a magnitude
    spectrogram and start with log(x + ε)."""
    k.utils.set_random_seed(0)

    class Log(k.layers.Layer):
        def call(self, z):
            return k.ops.log(z + 1e-4) if hasattr(k, "ops") else k.backend.log(z + 1e-4)

    inputs = k.Input(x.shape[1:], name="magnitudes")
    h = k.layers.Conv2D(16, 3, activation="relu")(k.layers.BatchNormalization()(Log()(inputs)))
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax", name="probs")(k.layers.Flatten()(h)))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, labels, epochs=10, batch_size=32, verbose=0)
    return model


def magnitudes(x: np.ndarray, seed: int) -> np.ndarray:
    """The digits at random gains over 60 dB (a recording's loudness)."""
    gains = np.exp(np.random.default_rng(seed).uniform(np.log(1e-3), 0.0, len(x))).astype(np.float32)
    return x * gains[:, None, None, None]


@pytest.mark.parametrize("version", [3, 2])
def test_a_log_the_model_takes_first_runs_in_float(version, digits):
    """int8 before the LOG rounds every value under half a step of the loudest sample's scale to 0: the
    quiet digits reach the LOG as log(1e-4). The input is taken as float32 and its ADD and LOG run in
    float; pinned to int8 (`io`), the file loses them and the report says where and why."""
    from tfquant._keras import keras, keras3

    k = keras3() if version == 3 else keras
    x, test = magnitudes(digits["x"], 1), magnitudes(digits["x_test"], 2)
    model = log_classifier(k, x, digits["y"])
    result = tfquant.quantize(model, x[:200], eval_data=(test, digits["y_test"]), bench_runs=1)
    (output,) = result.report.outputs
    assert output.float.accuracy > 0.85
    assert output.quantized.agreement >= 0.97, output.quantized.agreement
    ops = ops_of(result)
    assert ops[:3] == [("ADD", False), ("LOG", False), ("QUANTIZE", False)], ops
    assert result.info.fully_integer and [(t.name, t.dtype) for t in result.info.inputs] == [("magnitudes", "float32")]
    (note,) = [w for w in result.report.warnings if w.startswith("input 'magnitudes' is float32")]
    assert "its head (ADD, LOG) runs in float" in note and "not 0, would reach the LOG as 0" in note

    pinned = tfquant.quantize(model, x[:200], eval_data=(test, digits["y_test"]), bench_runs=1, io="int8")
    assert pinned.report.outputs[0].quantized.agreement < 0.9, pinned.report.outputs[0].quantized.agreement
    (why,) = [w for w in pinned.report.warnings if w.startswith("input 'magnitudes', its one scale spans")]
    share = float(re.search(r"and ([\d.]+) % of its calibration values, not 0, would reach the LOG as 0", why)[1])
    port = [t for t in pinned.report.io if t.kind == "input"][0]  # the file's own int8 input: what rounds to 0
    rounded = np.round(x[:200] / port.scale + port.zero_point) == port.zero_point
    assert share == pytest.approx(100 * np.mean(rounded & (x[:200] != 0)), abs=0.05)
    assert "Fix: leave io unpinned" in why
    if version == 3:  # LiteRT Quantizer has no float heads: the way through is tfquant's own quantizer
        with pytest.raises(StrictModeError) as float_log:  # and its LOG has no integer kernel there
            tfquant.quantize(model, x[:200], bench_runs=1, quantizer="litert")
        assert "found float ops: LOG#" in str(float_log.value)
        (why,) = [w for w in float_log.value.result.report.warnings
                  if w.startswith("input 'magnitudes', its one scale spans")]
        assert "Fix: quantize with tfquant's own quantizer (quantizer converter), which takes the input as float32 " \
               "and runs its ADD, LOG in float; or feed the model the LOG's result" in why, why

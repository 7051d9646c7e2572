"""tfquant.quantize end to end: real conversions, measured on the real interpreter."""

from __future__ import annotations

import gzip
import json

import re

import numpy as np
import pytest

import tfquant
from tfquant.harness import Runner
from tfquant.data import load_data
from tfquant.errors import AccuracyBudgetError, OutputError, RecipeError, StrictModeError

from checks import assert_every_op_integer, assert_quantized_close


def test_int8_is_fully_integer_small_and_accurate(int8_result):
    report = int8_result.report
    assert_every_op_integer(int8_result.info)
    assert report.quantized.fully_integer
    assert_quantized_close(report, max_drop=0.01, max_bytes_ratio=0.30)
    assert report.float_file.accuracy > 0.95
    assert report.agreement.top1 > 0.98 and report.agreement.samples == 359
    assert report.quantized.gzip_bytes == len(gzip.compress(int8_result.tflite, 9, mtime=0))
    assert report.calibration_samples == 200 and report.eval_samples == 359
    assert report.latency_ms["quantized"].count >= 10 and report.latency_ms["quantized"].p50_margin is not None
    latency = report.latency_ms["quantized"]
    # The median's interval is read off the order statistics: at 10 runs its upper end is the slowest run,
    # which can lie above p90 (interpolated between the two slowest).
    assert latency.min <= latency.p50_low <= latency.p50 <= latency.p50_high and latency.p50 <= latency.p90
    assert (latency.p99 is None) == (latency.count < 100)


def test_report_accuracy_is_what_the_file_does(int8_result, test_npz):
    """The report's number equals a fresh evaluation of the bytes on the interpreter."""
    metrics = tfquant.evaluate(int8_result.tflite, test_npz)
    assert metrics.accuracy == pytest.approx(int8_result.report.quantized.accuracy, abs=1e-12)
    float_metrics = tfquant.evaluate(int8_result.float_tflite, test_npz)
    assert float_metrics.accuracy == pytest.approx(int8_result.report.float_file.accuracy, abs=1e-12)


def test_float_file_matches_keras(digits_model, int8_result, digits):
    """The float32 reference file computes what the Keras model computes."""
    runner = Runner(int8_result.float_tflite)
    data = load_data(digits["x_test"][:64], runner.specs)
    np.testing.assert_allclose(runner.predict(data)["probs"], digits_model.predict(digits["x_test"][:64], verbose=0),
                               atol=1e-4)


def test_report_json_round_trips(int8_result):
    data = json.loads(json.dumps(int8_result.report.to_dict()))
    for key in ("schema_version", "float", "quantized", "accuracy_drop", "agreement", "latency_ms", "recipe", "warnings", "runtime"):
        assert key in data
    assert set(data["latency_ms"]) == {"float", "quantized"}
    assert {"p50", "p90", "p99"} <= set(data["latency_ms"]["quantized"])
    assert tfquant.Report.from_dict(data) == int8_result.report


@pytest.mark.parametrize(
    "mode, io, weight_dtype, activation_dtype, max_ratio",
    [
        ("int16x8", None, "int8", "int16", 0.30),
        ("dynamic", None, "int8", "float32", 0.30),
        ("float16", None, "float16", "float32", 0.55),
    ],
)
def test_other_modes(digits_model, train_npz, test_npz, mode, io, weight_dtype, activation_dtype, max_ratio):
    result = tfquant.quantize(digits_model, train_npz, mode=mode, io=io, eval_data=test_npz, bench_runs=3, calib_samples=50)
    info = result.info
    convs = [op for op in info.ops if op.name == "CONV_2D"]
    weights = [info.tensors[op.inputs[1]] for op in convs]
    outputs = {info.tensors[op.outputs[0]].dtype for op in convs}
    if mode == "float16":  # float16 weights are dequantized before the float conv
        assert any(t.dtype == "float16" and t.constant for t in info.tensors)
    elif mode == "dynamic":  # TF keeps weight tensors under 1024 elements in float in this mode
        assert [(w.dtype, int(np.prod(w.shape))) for w in weights] == [("float32", 288), ("int8", 18432)]
    else:
        assert {w.dtype for w in weights} == {weight_dtype}
    assert outputs == {activation_dtype}
    assert info.fully_integer is (mode == "int16x8")
    assert result.report.accuracy_drop <= 0.01
    assert result.report.quantized.tflite_bytes <= max_ratio * result.report.float_file.tflite_bytes


def test_uint8_and_float_io(digits_model, train_npz, test_npz):
    uint8 = tfquant.quantize(digits_model, train_npz, io="uint8", eval_data=test_npz, bench_runs=3, calib_samples=50)
    assert uint8.info.inputs[0].dtype == "uint8" and uint8.info.outputs[0].dtype == "uint8"
    assert uint8.info.fully_integer
    floating = tfquant.quantize(digits_model, train_npz, io="float32", eval_data=test_npz, bench_runs=3, calib_samples=50)
    assert floating.info.inputs[0].dtype == "float32"
    assert [op.name for op in floating.info.ops][0] == "QUANTIZE" and floating.info.ops[-1].name == "DEQUANTIZE"
    assert floating.info.fully_integer  # the float IO adapters are allowed
    # Same calibration, same integer graph: the two files classify alike.
    assert abs(uint8.report.quantized.accuracy - floating.report.quantized.accuracy) <= 2 / 359


def test_calibration_draw_is_deterministic(digits_model, train_npz):
    a = tfquant.quantize(digits_model, train_npz, calib_samples=64, bench_runs=1)
    b = tfquant.quantize(digits_model, train_npz, calib_samples=64, bench_runs=1)
    assert a.tflite == b.tflite
    assert a.report.calibration_samples == 64


def test_accuracy_collapse_is_caught_and_where_it_starts_is_named(digits_model, digits, test_npz, train_npz,
                                                                   mismatched):
    """Calibrating on unrepresentative data (inputs 20x too small) clips real inputs: the gate fires and names
    the data. A model whose own op breaks int8 (a join of mismatched ranges) is named by that op."""
    bad_calibration = digits["x"][:200] * 0.05
    with pytest.raises(AccuracyBudgetError, match=r"expected an accuracy drop of at most 0\.0100.*found 0\.[1-9]") \
            as caught:
        tfquant.quantize(digits_model, bad_calibration, eval_data=test_npz, max_drop=0.01, bench_runs=1)
    report = caught.value.result.report
    share = np.mean(np.load(test_npz)["x"] > 0.05 * 1.01)
    assert str(caught.value).endswith(
        f"; input 'image': {100 * share:.1f} % of the evaluation values lie outside the calibration data's range "
        f"[0, 0.05] (<calibration data>; evaluation: [0, 1]): int8 clips them. Fix: calibrate on data prepared as "
        "the model's real inputs are (the same scaling and preprocessing)")
    assert report.accuracy_drop > 0.1 and report.agreement.top1 < 0.9
    assert any("agreement" in w for w in report.warnings) and report.warnings[0].startswith("input 'image': ")

    with pytest.raises(AccuracyBudgetError) as caught:
        tfquant.quantize(mismatched, train_npz, eval_data=test_npz, max_drop=0.01, bench_runs=1, split_joins=False)
    worst = caught.value.result.report.diagnostics[0]  # the message says where the error starts, and what to try
    assert "concat" in worst.tensor and worst.output_error > 0.1
    assert str(caught.value).endswith(
        f"; the op whose int8 output costs the outputs most is {worst.tensor.split(';')[0]!r} ({worst.op}: alone in "
        f"int8, {worst.output_error:.3g} mean error at the outputs; {worst.rmse_per_scale:.3g} int8 steps RMS of its "
        "own): fallback auto with a budget may keep such ops float")


def test_a_missed_budget_names_the_op_that_costs_the_outputs_most_not_the_largest_local_error(digits):
    """A normalization over the 16 channels of each pixel of ReLU convolutions, written out with Keras ops (a
    LayerNormalization is computed through L2_NORMALIZATION where that measures better): on the digits' flat
    background a pixel's channels barely vary (its variance down to 1e-4 against 9.5 elsewhere), int8's one
    variance scale rounds them to 0, and the normalization amplifies what is left. The largest error in
    int8 steps shows where that lands (the normalization's products), not where it starts: on a missed
    budget the ops are measured alone in int8, and the message names the one that costs the outputs most."""
    from tfquant._keras import keras3

    k = keras3()
    k.utils.set_random_seed(0)
    layers = k.layers

    class ChannelNorm(layers.Layer):
        def call(self, x):
            centered = x - k.ops.mean(x, axis=-1, keepdims=True)
            return centered * k.ops.rsqrt(k.ops.mean(k.ops.square(centered), axis=-1, keepdims=True) + 1e-3)

    inputs = k.Input((8, 8, 1), name="image")
    block = k.Sequential([layers.Conv2D(16, 3, padding="same", activation="relu"), layers.BatchNormalization(),
                          layers.Conv2D(16, 3, padding="same", activation="relu")])
    x = ChannelNorm(name="channel_norm")(layers.Add()([block(inputs), layers.Conv2D(16, 1)(inputs)]))
    x = layers.Dense(32, activation="elu")(layers.GlobalMaxPooling2D()(x))
    model = k.Model(inputs, layers.Dense(10, activation="softmax", name="probs")(x))
    model.compile(optimizer=k.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(digits["x"], digits["y"], epochs=20, verbose=0)
    with pytest.raises(AccuracyBudgetError) as caught:
        tfquant.quantize(model, digits["x"][:200], eval_data=(digits["x_test"], digits["y_test"]), max_drop=0.01,
                         bench_runs=1)
    report = caught.value.result.report
    measured = [e for e in report.diagnostics if e.output_error is not None]
    assert len(measured) == 11 and report.diagnostics[0] is measured[0]  # ten by RMSE/scale and the RSQRT's input
    worst = measured[0]
    assert worst.output_error == max(e.output_error for e in measured) and worst.output_error > 0.1
    assert "channel_norm" in worst.tensor
    assert worst.rmse_per_scale < max(e.rmse_per_scale for e in report.diagnostics) / 10  # not the largest local error
    assert f"the op whose int8 output costs the outputs most is {worst.tensor.split(';')[0]!r} ({worst.op}: " \
           in str(caught.value)


def test_a_missed_budget_spread_over_every_op_says_so_and_points_to_int16(digits):
    """Two stacked LSTMs, unrolled: each step's gates, products and sums add a little int8 rounding, and no
    op alone costs the outputs much of what all of them do. The message says the error is spread (float
    islands do not win it back) and names int16 activations, not the op that happens to rank first."""
    from tfquant._keras import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8), name="rows")
    x = keras.layers.LSTM(16, return_sequences=True)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(8, name="values")(keras.layers.LSTM(16)(x)))
    rows = digits["x_test"][..., 0]
    with pytest.raises(AccuracyBudgetError) as caught:
        tfquant.quantize(model, digits["x"][:200, ..., 0], eval_data=(rows, model.predict(rows, verbose=0)),
                         max_rel_rmse=0.002, bench_runs=1)
    worst = caught.value.result.report.diagnostics[0]
    found = re.search(r"; no op alone in int8 costs the outputs more than ([0-9.e-]+) \(mean error; '([^']+)', "
                      r"(\w+)\) where the whole int8 file costs ([0-9.e-]+): the error is spread over many ops, which "
                      r"float islands do not win back; mode int16x8 keeps the activations in int16 \(io int8 keeps "
                      r"the file's int8 inputs and outputs\)$", str(caught.value))
    assert found, str(caught.value)
    assert (found[1], found[2], found[3]) == (f"{worst.output_error:.3g}", worst.tensor.split(";")[0], worst.op)
    assert 0 < worst.output_error < 0.5 * float(found[4])


def test_a_model_that_ignores_its_input_is_said_to(digits_model, train_npz, test_npz, int8_result):
    """A collapsed model (its last layer's weights all zero: softmax of the bias for every image) gives one
    answer for every sample; agreement then compares rounding between near ties, and the report says so."""
    from tfquant._keras import keras

    collapsed = keras.models.clone_model(digits_model)
    collapsed.set_weights(digits_model.get_weights())
    kernel, bias = collapsed.layers[-1].get_weights()
    collapsed.layers[-1].set_weights([np.zeros_like(kernel), np.linspace(-0.01, 0.01, len(bias)).astype(np.float32)])
    report = tfquant.quantize(collapsed, train_npz, eval_data=test_npz, bench_runs=1, diagnose=False).report
    (warning,) = report.warnings  # and not "run tfquant diagnose": no layer of the file is at fault
    assert warning.startswith(f"output {report.outputs[0].name!r}: the float file gives the same values for all 359 "
                              "evaluation samples (they differ by at most 0):")
    assert report.outputs[0].float.accuracy == pytest.approx(np.mean(np.load(test_npz)["y"] == 9))
    assert not any("does not use its input" in w for w in int8_result.report.warnings)


def test_a_regression_that_does_not_follow_its_labels_is_said_to(digits):
    """A collapsed regression: its outputs move by a ten-thousandth of what its labels do. Its int8 error,
    relative to float's own σ, says nothing of the model, and the report says why; a regression that
    follows its labels gets no such warning."""
    from tfquant._keras import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1), name="image"), keras.layers.Flatten(),
                              keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1, name="value")])
    targets = digits["y_test"].astype(np.float32) * 3 + 7
    follows = tfquant.quantize(model, digits["x"][:200], eval_data=(digits["x_test"], model.predict(
        digits["x_test"], verbose=0)), bench_runs=1, diagnose=False).report
    assert not any("does not follow its labels" in w for w in follows.warnings), follows.warnings
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([kernel * 1e-4, bias + 11.0])
    values = model.predict(digits["x_test"], verbose=0)
    with pytest.raises(AccuracyBudgetError) as caught:  # int8's range holds 0: steps of 11/255 on a σ of 3e-5
        tfquant.quantize(model, digits["x"][:200], eval_data=(digits["x_test"], targets), bench_runs=1,
                         diagnose=False)
    said = (f"output 'value': the float file's values barely vary (σ {np.std(values):.3g} against the labels' "
            f"{np.std(targets):.3g}): the model does not follow its labels (untrained, collapsed, or fed data scaled "
            "unlike its training data); error figures relative to the float output's σ then compare rounding, not "
            "the model")
    report = caught.value.result.report
    assert [w for w in report.warnings if "does not follow its labels" in w] == [said], report.warnings
    assert str(caught.value).endswith("; " + said)  # the failure names it as where the error starts


def test_low_agreement_on_near_ties_is_said_to_be_rounding_not_a_layer(digits_model, digits):
    """A classifier whose top two scores lie closer than one int8 step of its output (its last layer's
    weights scaled down a thousandfold) agrees with float on few samples at int8: the report says the
    class is rounding's to choose, not that a layer loses accuracy."""
    from tfquant._keras import keras

    flat = keras.models.clone_model(digits_model)
    flat.set_weights(digits_model.get_weights())
    kernel, bias = flat.layers[-1].get_weights()
    flat.layers[-1].set_weights([kernel * 1e-3, bias * 1e-3])
    scores = flat.predict(digits["x_test"], verbose=0)
    top = np.sort(scores, axis=1)[:, -2:]
    result = tfquant.quantize(flat, digits["x"][:200], eval_data=(digits["x_test"], digits["y_test"]), bench_runs=1,
                              diagnose=False)
    step = result.report.io[-1].scale
    tied = int(np.sum(top[:, 1] - top[:, 0] < step))
    agreement = result.report.agreement.top1
    assert agreement < 0.9 and tied >= (1 - agreement) * len(scores), (agreement, tied)
    assert f"top-1 agreement with the float file is only {agreement:.3f}, and on {tied} of {len(scores)} samples the " \
           f"float file's top two scores lie within one int8 step ({step:.3g}) of each other: their class is " \
           "rounding's to choose (an untrained or collapsed model, or data unlike its training data), not a " \
           "layer's loss" in result.report.warnings, result.report.warnings


def test_strict_refuses_a_float_file(digits_model, train_npz):
    with pytest.raises(StrictModeError, match=r"expected a fully integer file \(strict\), found float ops: CONV_2D#0 "
                                              r"in layer 'conv2d' \(mode dynamic computes it in float\)"):
        tfquant.quantize(digits_model, train_npz, mode="dynamic", strict=True, bench_runs=1)


def test_options_are_checked_before_work(digits_model, train_npz):
    with pytest.raises(RecipeError, match="mode: unknown value 'int4'; expected one of: int8, int16x8"):
        tfquant.quantize(digits_model, train_npz, mode="int4")
    with pytest.raises(RecipeError, match="io int8 does not go with mode dynamic"):
        tfquant.quantize(digits_model, train_npz, mode="dynamic", io="int8")
    with pytest.raises(RecipeError, match="max_drop needs eval_data"):
        tfquant.quantize(digits_model, train_npz, max_drop=0.01)
    with pytest.raises(RecipeError, match="fallback: unknown value 'maybe'"):
        tfquant.quantize(digits_model, train_npz, fallback="maybe")
    with pytest.raises(RecipeError, match=r"unknown option\(s\) max_dorp for convert; expected some of: .*max_drop"):
        tfquant.quantize(digits_model, train_npz, max_dorp=0.01)


def test_save_is_atomic_and_refuses_to_clobber(int8_result, tmp_path):
    path = int8_result.save(tmp_path / "out" / "model.tflite", reports=True)
    assert path.read_bytes() == int8_result.tflite
    assert json.loads((tmp_path / "out" / "report.json").read_text())["quantized"]["fully_integer"] is True
    with pytest.raises(OutputError, match="model.tflite: expected a path that does not exist yet"):
        int8_result.save(path)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.tflite", "report.html", "report.json", "report.md"]


def test_a_graph_tflite_cannot_prepare_with_an_open_batch_is_exported_with_batch_1(digits, train_npz, test_npz):
    """tf_keras' GroupNormalization converts with an open batch dim to a BROADCAST_TO that TFLite cannot
    prepare; exported again with the batch fixed at 1, it runs, and quantizes fully integer."""
    from tfquant._keras import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="x")
    x = keras.layers.GroupNormalization(groups=4)(keras.layers.Conv2D(16, 3)(inputs))
    x = keras.layers.Flatten()(keras.layers.Activation("relu")(x))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(digits["x"], digits["y"], epochs=3, verbose=0)
    result = tfquant.quantize(model, train_npz, eval_data=test_npz, bench_runs=1, diagnose=False)
    assert_every_op_integer(result.info)
    notes = [note for note in result.report.export.notes if note.startswith("exported with the batch fixed at 1")]
    assert len(notes) == 1 and "Output shape must be broadcastable" in notes[0] and "(BROADCAST_TO) failed to prepare" \
        in notes[0], result.report.export.notes
    output = result.report.outputs[0]
    assert output.float.accuracy > 0.9 and output.float.accuracy - output.quantized.accuracy <= 0.01


def test_a_multi_label_output_is_measured_per_decision_and_budgeted_by_it(digits, train_npz, tmp_path):
    """Four sigmoid units with 0/1 labels each: a classifier of four decisions, not a regression."""
    from tfquant._keras import keras

    def tags(y):
        return np.stack([y % 2 == 0, y >= 5, np.isin(y, [2, 3, 5, 7]), y % 3 == 0], axis=-1).astype(np.int64)

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="x")
    x = keras.layers.Flatten()(keras.layers.Conv2D(16, 3, activation="relu")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(4, activation="sigmoid", name="tags")(x))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
    model.fit(digits["x"], tags(digits["y"]), epochs=8, verbose=0)
    np.savez(tmp_path / "eval.npz", x=digits["x_test"], y=tags(digits["y_test"]))
    result = tfquant.quantize(model, train_npz, eval_data=tmp_path / "eval.npz", bench_runs=1, diagnose=False,
                              max_drop=0.02)
    output = result.report.outputs[0]
    assert output.task == "classification"
    keras_decisions = model.predict(digits["x_test"], verbose=0) > 0.5  # the float file's, within rounding
    assert output.float.accuracy == pytest.approx(np.mean(keras_decisions == tags(digits["y_test"])), abs=0.002)
    assert output.float.accuracy > 0.9 and output.quantized.agreement > 0.97
    assert output.float.accuracy - output.quantized.accuracy <= 0.02
    assert output.quantized.decisions == 4
    from tfquant.report import rows

    shown = {row[0]: row for row in rows(result.report)}
    assert "accuracy (per decision)" in shown and "accuracy (top-1)" not in shown
    assert shown["per decision agreement"][3] == "359 samples × 4 decisions"


@pytest.mark.parametrize("kind", ["per-pixel classes (U-Net)", "shared encoder (Siamese)"])
def test_other_kinds_of_model_convert_fully_integer_and_keep_their_decisions(kind, digits, tmp_path):
    """A segmentation net (a softmax per pixel, skip joined by Concatenate after UpSampling2D) and a
    Siamese net (one nested encoder called on both inputs, a squared difference, a sigmoid)."""
    from tfquant._keras import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    if kind.startswith("per-pixel"):
        def split(x, y):
            return {"x": x}, np.digitize(x[..., 0], [0.25, 0.6])  # background, faint, ink: per pixel
        inputs = keras.Input((8, 8, 1), name="x")
        a = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
        b = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(keras.layers.MaxPooling2D()(a))
        c = keras.layers.Concatenate()([a, keras.layers.UpSampling2D()(b)])
        c = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(c)
        model = keras.Model(inputs, keras.layers.Conv2D(3, 1, activation="softmax", name="mask")(c))
        loss = "sparse_categorical_crossentropy"
    else:
        def split(x, y):
            other = rng.permutation(len(y))
            for i in range(0, len(y), 2):  # half the pairs of one class
                same = np.flatnonzero(y == y[i])
                other[i] = same[rng.integers(len(same))]
            return {"left": x, "right": x[other]}, (y == y[other]).astype(np.int64)
        encoder_input = keras.Input((8, 8, 1))
        e = keras.layers.Flatten()(keras.layers.Conv2D(16, 3, activation="relu")(encoder_input))
        encoder = keras.Model(encoder_input, keras.layers.Dense(16, activation="relu")(e), name="encoder")
        left, right = keras.Input((8, 8, 1), name="left"), keras.Input((8, 8, 1), name="right")
        difference = keras.layers.Subtract()([encoder(left), encoder(right)])
        squared = keras.layers.Multiply()([difference, difference])
        model = keras.Model([left, right], keras.layers.Dense(1, activation="sigmoid", name="same")(squared))
        loss = "binary_crossentropy"
    train_x, train_y = split(digits["x"], digits["y"])
    test_x, test_y = split(digits["x_test"], digits["y_test"])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss)
    model.fit(train_x, train_y, epochs=8, verbose=0)
    np.savez(tmp_path / "calib.npz", **{k: v[:200] for k, v in train_x.items()})
    np.savez(tmp_path / "eval.npz", **test_x, y=test_y)
    result = tfquant.quantize(model, tmp_path / "calib.npz", eval_data=tmp_path / "eval.npz", bench_runs=1,
                              diagnose=False)
    assert_every_op_integer(result.info)
    output = result.report.outputs[0]
    assert output.task == "classification"
    assert output.float.accuracy > 0.8 and output.quantized.agreement > 0.97
    assert output.float.accuracy - output.quantized.accuracy <= 0.015


def test_a_tf_keras_conv_lstm_is_unrolled_and_converts_fully_integer(digits, tmp_path):
    """ConvLSTM2D over four frames. tf_keras' ConvRNN runs its loop whatever `unroll` says, and that
    loop's tensor lists do not convert; for the export it is unrolled like every recurrent layer
    (Keras 3's honors `unroll`)."""
    from tfquant._keras import keras as k

    k.utils.set_random_seed(0)

    def frames(x):  # the digit revealed two rows more in each frame
        rows = np.arange(8)[None, :, None, None]
        return np.stack([x * (rows < 2 * (t + 1)) for t in range(4)], axis=1).astype(np.float32)

    inputs = k.Input((4, 8, 8, 1), name="frames")
    x = k.layers.Flatten()(k.layers.ConvLSTM2D(8, 3, padding="same")(inputs))
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax")(x))
    model.compile(optimizer=k.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(frames(digits["x"]), digits["y"], epochs=4, verbose=0)
    np.savez(tmp_path / "calib.npz", frames=frames(digits["x"][:200]))
    np.savez(tmp_path / "test.npz", frames=frames(digits["x_test"]), y=digits["y_test"])
    path = tmp_path / "conv_lstm.keras"
    model.save(path)
    result = tfquant.quantize(path, tmp_path / "calib.npz", eval_data=tmp_path / "test.npz", bench_runs=1,
                              diagnose=False)
    assert_every_op_integer(result.info)
    assert not {"WHILE", "UNIDIRECTIONAL_SEQUENCE_LSTM"} & {op.name for op in result.info.ops}
    assert any("unrolled over 4 steps" in note for note in result.report.export.notes), result.report.export.notes
    output = result.report.outputs[0]
    assert output.float.accuracy > 0.9 and output.float.accuracy - output.quantized.accuracy <= 0.01


def test_int16x8_of_a_file_whose_constants_share_a_buffer_across_types(digits, tmp_path):
    """An LSTM sequence autoencoder (encoder, RepeatVector, decoder): the converter gives a float32 and
    an int32 constant of equal bytes one buffer; TFLite's int16x8 quantizer rewrote it as int16 for
    both, and the interpreter refused the file. Each constant gets its own buffer first."""
    from ai_edge_litert.tools import flatbuffer_utils

    from tfquant._keras import keras

    keras.utils.set_random_seed(0)
    rows = digits["x"][..., 0]
    inputs = keras.Input((8, 8), name="rows")
    x = keras.layers.LSTM(16, return_sequences=True)(keras.layers.RepeatVector(8)(keras.layers.LSTM(16)(inputs)))
    model = keras.Model(inputs, keras.layers.TimeDistributed(keras.layers.Dense(8), name="recon")(x))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    model.fit(rows, rows, epochs=4, verbose=0)
    np.savez(tmp_path / "calib.npz", rows=rows[:200])
    np.savez(tmp_path / "test.npz", rows=digits["x_test"][..., 0], y_recon=digits["x_test"][..., 0])
    result = tfquant.quantize(model, tmp_path / "calib.npz", eval_data=tmp_path / "test.npz", mode="int16x8",
                              bench_runs=1, diagnose=False)
    exported = flatbuffer_utils.read_model_from_bytearray(bytearray(result.float_tflite))
    types: dict[int, set] = {}
    for tensor in exported.subgraphs[0].tensors:
        if tensor.buffer and exported.buffers[tensor.buffer].data is not None:
            types.setdefault(tensor.buffer, set()).add(tensor.type)
    assert any(len(found) > 1 for found in types.values())  # the case: one buffer, constants of two types
    output = result.report.outputs[0]
    assert output.task == "regression" and output.quantized.rel_rmse < 0.03
    assert {op.name for op in result.info.ops} >= {"FULLY_CONNECTED", "TANH", "LOGISTIC"}


def test_int16x8_of_an_unrolled_gru_keeps_each_steps_recurrent_bias(rows_gru, digits):
    """An unrolled GRU reads one recurrent bias at every step (`reset_after`, the Keras default), and
    its first step reads the zero initial state, FILL(shape, 0.0). TFLite's int16x8 quantizer stored
    that one bias once, for the zero state's scale 0: all zeros, read by every step. Each step now
    has its bias of its own, and the zero state a scale, as int8 gives it."""
    result = tfquant.quantize(rows_gru, {"rows": digits["x"][:200, ..., 0]}, mode="int16x8", bench_runs=1,
                              eval_data=({"rows": digits["x_test"][..., 0]}, digits["y_test"]), diagnose=False)
    output = result.report.outputs[0]
    assert output.float.accuracy > 0.85
    assert output.quantized.agreement >= 0.99, output.quantized
    fills = [op for op in result.info.ops if op.name == "FILL"]
    assert fills and all(op.output_dtypes == ["int16"] for op in fills)

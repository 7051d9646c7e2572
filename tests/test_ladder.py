"""Accuracy-guarded conversion: diagnostics, range lint, the fallback ladder and recipe replay."""

from __future__ import annotations

import base64
import html
import json

import numpy as np
import pytest

import tfquant
from tfquant import ranges
from tfquant.diagnose import SENSITIVITY_CANDIDATES
from tfquant.cli import main, parse_args
from tfquant.errors import RecipeError
from tfquant.types import Mode, Recipe

from checks import counted

ADAPTERS = {"QUANTIZE", "DEQUANTIZE"}


def test_default_int8_splits_the_mismatched_join_and_stays_fully_integer(mismatched, train_npz, test_npz):
    """The join's readers split per input (and the logits centered before the softmax): within a point,
    every op integer, int8 activations and IO."""
    result = tfquant.quantize(mismatched, train_npz, eval_data=test_npz, bench_runs=2, max_drop=0.01)
    report = result.report
    assert report.accuracy_drop <= 0.01 and report.float_file.accuracy > 0.75
    assert result.info.fully_integer and report.float_ops == [] and report.range_lint == []
    assert {op.name for op in result.info.ops} >= {"ADD", "FULLY_CONNECTED"} and "CONCATENATION" not in {
        op.name for op in result.info.ops}
    assert report.recipe.mode is Mode.INT8 and {t.dtype for t in report.io} == {"int8"}
    assert any("centered across its classes" in note for note in report.export.notes)


def test_plain_int8_collapses_and_the_lint_names_the_concat(plain_mismatched):
    report = plain_mismatched.report
    assert report.float_file.accuracy > 0.75
    assert report.accuracy_drop > 0.5
    (warning,) = report.range_lint
    assert warning.op == "CONCATENATION" and warning.tensor.endswith("joined/concat")
    assert warning.ratio > 100
    assert [name.split("/")[1] for name in warning.inputs] == ["features", "ink_scaled"]
    (small, large) = warning.ranges
    assert small[1] <= 1.0 and large[1] > 500
    assert "Fix: rescale or normalize the large input" in warning.message
    assert warning.message in report.warnings


def test_the_lint_is_silent_on_a_recurrent_steps_zero_initial_state(digits):
    """The first step of an unrolled GRU adds h0 @ U = 0 to x @ W: its range is floored to a constant's
    ([-0.0005, 0.0005]) and carries nothing the sum could lose."""
    from tfquant._keras import keras3

    k = keras3()
    k.utils.set_random_seed(0)
    inputs = k.Input((None, 8), name="rows")
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax")(k.layers.GRU(16)(inputs)))
    result = tfquant.quantize(model, digits["x"][:100, :, :, 0], eval_data=(digits["x_test"][:, :, :, 0],
                                                                             digits["y_test"]), bench_runs=1)
    assert result.info.fully_integer
    assert result.report.range_lint == []  # was three warnings, "ranges differ 1199×" and up


def test_the_lint_names_an_add_that_cancels_and_not_one_that_adds_a_narrow_branch(digits):
    """An ADD keeps each input's own scale: a narrow branch added to a wide one costs no more than the sum's
    own rounding. What an ADD or SUB loses is cancellation: LayerNormalization of features offset by 100
    subtracts their mean, two inputs near 100 whose difference spans about 1."""
    from tfquant._keras import keras3

    k = keras3()
    x, x_test = digits["x"].reshape(-1, 64), digits["x_test"].reshape(-1, 64)

    def trained(inputs, features):
        model = k.Model(inputs, k.layers.Dense(10, activation="softmax")(features))
        model.compile("adam", "sparse_categorical_crossentropy")
        model.fit(x, digits["y"], epochs=10, verbose=0)
        return tfquant.quantize(model, x[:200], eval_data=(x_test, digits["y_test"]), bench_runs=1).report

    k.utils.set_random_seed(0)
    inputs = k.Input((64,), name="pixels")
    normalized = k.layers.LayerNormalization()(k.layers.Rescaling(1.0, offset=100.0)(inputs))
    report = trained(inputs, k.layers.Dense(32, activation="relu")(normalized))
    assert report.accuracy_drop > 0.02  # the cancellation costs int8 points
    (warning,) = report.range_lint
    assert warning.op == "SUB" and warning.ratio > 50 and "narrower than its input" in warning.message

    k.utils.set_random_seed(0)
    inputs = k.Input((64,), name="pixels")
    wide = k.layers.Dense(32, activation="relu")(k.layers.Rescaling(100.0)(inputs))
    report = trained(inputs, k.layers.Add()([wide, k.layers.Dense(32)(inputs)]))
    assert report.range_lint == [] and report.accuracy_drop <= 0.01


def test_the_input_lint_names_a_feature_one_int8_scale_leaves_few_levels():
    from tfquant.lint import input_lint

    rng = np.random.default_rng(0)
    images = rng.random((50, 8, 8, 3), np.float32)
    centered = rng.standard_normal((50, 6)).astype(np.float32)
    assert input_lint({"image": images, "features": centered, "ids": np.arange(50)[:, None]}) == []
    table = np.concatenate([centered, np.full((50, 1), 7.0, np.float32)], axis=1)  # a constant column
    assert input_lint({"features": table}) == []
    table[:, 2] = 1990 + rng.integers(0, 31, 50)  # a year, as it is
    (message,) = input_lint({"features": table})
    assert message.startswith("input 'features': its one int8 scale spans [-2.862, 2020] (feature 2 reaches 2020; "
                              "int8 also holds 0), so feature 1, in [-1.781, 1.97], keeps about 0.47 of 256 levels.")
    (message,) = input_lint({"year": table[:, 2:3]})
    assert message.startswith("input 'year': its one int8 scale spans [0, 2020] (its values reach 2020; int8 also "
                              "holds 0), so its values, in [1990, 2020], keep about 3.8 of 256 levels.")


def test_diagnostics_rank_the_op_that_breaks_the_outputs_first(plain_mismatched, int8_result):
    """By the error each op alone puts on the outputs: the concatenation, whose own RMSE/scale is small
    (0.07) while the MEAN of a near-constant feature tops that ranking (2.9) and costs the outputs nothing."""
    errors = plain_mismatched.report.diagnostics
    assert errors[0].op == "CONCATENATION" and errors[0].tensor.endswith("joined/concat")
    measured = [round(e.output_error, 4) for e in errors if e.output_error is not None]  # equal to 1e-4: a tie
    assert measured == sorted(measured, reverse=True) and measured[0] > 0.5
    assert errors[0].rmse_per_scale < 1.0 < max(e.rmse_per_scale for e in errors)
    mean = next(e for e in errors if e.op == "MEAN")  # ten times rounding noise at its own scale, nothing at the outputs
    assert mean.rmse_per_scale > 2.0 and mean.output_error < 0.05
    # A healthy model: no lint, so no output measurements, and its worst tensor is rounding noise by comparison.
    assert int8_result.report.range_lint == []
    assert all(e.output_error is None for e in int8_result.report.diagnostics)
    assert mean.rmse_per_scale > 2 * max(e.rmse_per_scale for e in int8_result.report.diagnostics)


def test_ladder_returns_a_mostly_integer_file_within_budget(laddered):
    result, calls = laddered
    report = result.report
    assert report.accuracy_drop <= 0.01
    chosen = report.ladder[report.chosen]
    assert chosen.accepted and chosen.recipe == report.recipe
    assert report.recipe.mode is Mode.INT8 and 1 <= len(report.recipe.denylist) <= 4
    assert "mismatched_concat/joined/concat" in report.recipe.denylist
    compute = [op for op in result.info.ops if op.name not in ADAPTERS]
    integer = [op for op in compute if not op.float]
    assert len(integer) / len(compute) >= 0.5, [op.name for op in compute if op.float]
    # Every candidate tried is listed; the first is plain int8, over budget.
    assert report.ladder[0].name == "int8" and not report.ladder[0].accepted
    assert all(c.tflite_bytes > 0 and 0 <= c.accuracy <= 1 for c in report.ladder)
    # The ladder calibrated once: every candidate was quantized from the same statistics.
    assert calls["calibrate"] == 1
    assert calls["export"] == 1
    # Quantizing is cheap and may run for every candidate, and to choose the ranges twice (once
    # per held-out half) for each method auto tries.
    # The ladder's candidates, auto's range candidates (two folds), the suspects' output measurements.
    assert len(report.ladder) <= calls["quantize"] <= len(report.ladder) + 2 * len(ranges.AUTO) + SENSITIVITY_CANDIDATES


def test_float_islands_stop_at_half_of_the_ops_that_compute():
    """Past half the ops that compute, an island file is float with int8 at its edges: the ladder goes on
    to the modes after int8 instead. Reshapes count as none, and so does a name the file does not have."""
    import tensorflow as tf
    from ai_edge_litert import schema_py_generated as schema

    from tfquant._keras import keras
    from tfquant.flatbuffer import builtin_of, text, view_model
    from tfquant.ladder import island_limit

    layers = keras.layers
    inputs = keras.Input((4, 4, 1), batch_size=1)
    h = layers.Reshape((16, 8))(layers.Conv2D(8, 3, padding="same", activation="relu")(inputs))
    h = layers.Reshape((128,))(layers.Dense(8, activation="relu")(h))
    model = keras.Model(inputs, layers.Dense(2)(layers.Dense(8, activation="relu")(h)))
    data = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    view = view_model(data)
    written = [(builtin_of(view, op), text(view.subgraphs[0].tensors[int(op.outputs[0])].name))
               for op in view.subgraphs[0].operators]
    computing = [name for builtin, name in written if builtin != schema.BuiltinOperator.RESHAPE]
    reshaped = [name for builtin, name in written if builtin == schema.BuiltinOperator.RESHAPE]
    assert len(computing) == 4 and reshaped
    # half of 4 ops that compute: the first two, and the reshape and unknown names between them
    assert island_limit(data, [computing[0], reshaped[0], "no such tensor", computing[1], computing[2],
                               computing[3], "another", "a third"]) == 4
    assert island_limit(data, computing[:1] + reshaped[:1]) == 1  # half of the suspects
    assert island_limit(data, computing[2:] + computing[:2] + reshaped + ["x", "y", "z"]) == 2


def test_recipe_replay_is_byte_identical(laddered, mismatched, train_npz):
    result, _ = laddered
    replayed = tfquant.quantize(mismatched, train_npz, recipe=Recipe.from_dict(json.loads(json.dumps(result.report.recipe.to_dict()))),
                                bench_runs=1, diagnose=False)
    assert replayed.tflite == result.tflite


def test_well_behaved_model_stops_at_the_first_candidate(digits_model, train_npz, test_npz):
    def run(**options):
        with counted() as calls:
            result = tfquant.quantize(digits_model, train_npz, eval_data=test_npz, max_drop=0.01, bench_runs=1, **options)
        return result, calls

    plain, plain_calls = run()
    auto, auto_calls = run(fallback="auto")
    assert [c.name for c in auto.report.ladder] == ["int8"] and auto.report.chosen == 0
    assert auto_calls == plain_calls and plain_calls["export"] == plain_calls["calibrate"] == 1
    assert auto.tflite == plain.tflite


def test_report_html_has_both_charts(laddered, tmp_path):
    result, _ = laddered
    result.save(tmp_path / "m.tflite", reports=True)
    page = (tmp_path / "report.html").read_text()
    (scatter,) = [part.split("'")[0] for part in page.split("src='data:image/png;base64,")[1:]]
    assert base64.b64decode(scatter)[:8] == b"\x89PNG\r\n\x1a\n"
    (bars,) = [part.split("'")[0] for part in page.split("src='data:image/svg+xml;base64,")[1:]]
    svg = base64.b64decode(bars).decode()
    worst = result.report.diagnostics[:12]
    assert svg.count("<rect x=") == len(worst) and html.escape(worst[0].op) in svg
    assert "Fallback ladder" in page and "Per-tensor quantization error" in page


def test_a_log_of_values_int8_rounds_to_zero_leaves_the_diagnostics_and_the_report_finite(digits, tmp_path):
    """A log spectrogram's LOG reads MAXIMUM(x, eps) of values that are often 0: int8 rounds eps to 0, and
    the debugger's float LOG of that input is -inf, an infinite RMSE that stopped the report at its chart.
    Such a tensor has no per-tensor error; the others are ranked and drawn."""
    from tfquant._keras import keras3

    k = keras3()
    k.utils.set_random_seed(0)
    inputs = k.Input((8, 8, 1), name="x")
    x = k.ops.log(k.ops.maximum(k.layers.Conv2D(8, 3, activation="relu")(inputs), 1e-6))
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax")(k.layers.Flatten()(x)))
    result = tfquant.quantize(model, {"x": digits["x"][:64]}, eval_data=({"x": digits["x"][64:200]},
                              digits["y"][64:200]), bench_runs=1, max_drop=1)
    kinds = [e.op for e in result.report.diagnostics]
    assert "LOG" not in kinds and "MAXIMUM" in kinds, result.report.diagnostics
    assert all(np.isfinite(e.rmse_per_scale) for e in result.report.diagnostics)
    result.save(tmp_path / "m.tflite", reports=True)
    (bars,) = [part.split("'")[0] for part in
               (tmp_path / "report.html").read_text().split("src='data:image/svg+xml;base64,")[1:]]
    assert base64.b64decode(bars).decode().count("<rect x=") == len(result.report.diagnostics[:12])


def test_an_io_change_is_announced_and_a_pinned_io_is_kept():
    """A budget int8 cannot meet (a regression held to 0.1 % of its spread): past int8, the ladder says the
    file's IO type changed; with the IO pinned to int8 it stays int8 and the gate fails. A model
    without a classifier climbs without a --max-drop."""
    from tfquant.errors import AccuracyBudgetError
    from zoo_cache import trained

    model = trained("tabular_regression", 2)
    options = dict(max_rel_rmse=0.001, fallback="auto", bench_runs=2)
    result = tfquant.quantize(model.path, model.calib, eval_data=model.test, **options)
    chosen = result.report.recipe
    assert chosen.io.value != "int8" and result.report.ladder[0].recipe.io.value == "int8"
    assert any(w.startswith(f"the ladder chose {chosen.mode.value} with {chosen.io.value} inputs and outputs, not int8")
               for w in result.report.warnings)
    with pytest.raises(AccuracyBudgetError) as caught:
        tfquant.quantize(model.path, model.calib, eval_data=model.test, io="int8", **options)
    pinned = caught.value.result.report
    assert {c.recipe.io.value for c in pinned.ladder} == {"int8"} and pinned.recipe.io.value == "int8"
    assert [c.name for c in pinned.ladder][-1] == "int16x8, int8 IO"  # int16 inside, int8 at the edges
    assert [c.name for c in result.report.ladder].index("int16x8, int8 IO") + 1 == \
        [c.name for c in result.report.ladder].index("int16x8")


def test_a_mode_the_converter_refuses_is_reported_and_the_ladder_goes_on(tmp_path):
    """int16x8 has no kernel for ONE_HOT: with a budget int8 cannot meet, the ladder records that rung as
    refused, with the converter's reason, and goes on to the next mode instead of failing."""
    import tensorflow as tf

    from tfquant import zoo
    from tfquant._keras import keras as k
    from tfquant.report import to_text

    k.utils.set_random_seed(0)
    data = zoo.tokens()
    inputs = k.Input((32,), dtype="int32", name="tokens")
    x = k.layers.Flatten()(tf.one_hot(inputs, 18))
    model = k.Model(inputs, k.layers.Dense(1, name="value")(k.layers.Dense(16, activation="relu")(x)))
    model.compile(optimizer=k.optimizers.Adam(3e-3), loss="mse")
    model.fit(data.train["tokens"], data.train["y"].astype("float32"), epochs=2, verbose=0)
    result = tfquant.quantize(model, data.train["tokens"][:200], eval_data=data.test["tokens"][:200],
                              max_rel_rmse=0.0005, fallback="auto", bench_runs=1, diagnose=False)
    report = result.report
    names = [c.name for c in report.ladder]
    assert names[0] == "int8" and not report.ladder[0].accepted
    refused = [c for c in report.ladder if c.refused]
    assert [c.name for c in refused] == ["int16x8, int8 IO", "int16x8"]  # with int8 inputs and outputs, then int16
    assert [c.recipe.io.value for c in refused] == ["int8", "int16"]
    for candidate in refused:
        assert "ONE_HOT" in candidate.refused and candidate.verdict(False) == "refused by the converter"
        line = f"ladder {names.index(candidate.name) + 1}: {candidate.name} "
        assert any(text.startswith(line) and text.endswith(f"refused by the converter: {candidate.refused}")
                   for text in to_text(report).splitlines())
    chosen = report.ladder[report.chosen]
    assert names.index(chosen.name) > names.index("int16x8") and chosen.accepted and chosen.tflite_bytes > 0


def test_ladder_needs_a_budget(digits_model, train_npz, test_npz):
    with pytest.raises(RecipeError, match="^fallback auto needs max_drop: output 'probs' is a classifier, and its "
                                          "budget is the accuracy it may lose$"):
        tfquant.quantize(digits_model, train_npz, eval_data=test_npz, fallback="auto")
    with pytest.raises(RecipeError, match="^fallback auto needs eval_data: the ladder measures every candidate on "
                                          "evaluation data$"):
        tfquant.quantize(digits_model, train_npz, fallback="auto")
    with pytest.raises(RecipeError, match="denylist: keeping ops in float is an int8 option, found mode int16x8"):
        Recipe(mode="int16x8", denylist=("a",))


def test_command_climbs_writes_recipe_and_replays(mismatched, train_npz, test_npz, tmp_path, capsys):
    out = tmp_path / "a" / "m.tflite"
    code = main(parse_args(["convert", str(mismatched), "--calib", str(train_npz), "--eval", str(test_npz),
                            "--max-drop", "0.01", "--fallback", "auto", "--no-split-joins", "-o", str(out)]))
    printed, err = capsys.readouterr()
    assert code == 0 and err == ""  # warnings are in the summary and the report, not on stderr
    assert "warning: CONCATENATION 'mismatched_concat/joined/concat' joins inputs whose ranges differ" in printed
    recipe_file = tmp_path / "a" / "recipe.json"
    assert json.loads(recipe_file.read_text())["denylist"]
    again = tmp_path / "b" / "m.tflite"
    assert main(parse_args(["convert", str(mismatched), "--calib", str(train_npz), "--recipe", str(recipe_file),
                            "-o", str(again), "-q"])) == 0
    assert again.read_bytes() == out.read_bytes()


def test_diagnose_command(mismatched, train_npz, test_npz, capsys):
    code = main(parse_args(["diagnose", str(mismatched), "--calib", str(train_npz), "--eval", str(test_npz), "--json",
                            "--no-split-joins"]))
    out, _ = capsys.readouterr()
    assert code == 0
    found = json.loads(out)
    assert found["float_accuracy"] - found["int8_accuracy"] > 0.5
    assert found["range_lint"][0]["op"] == "CONCATENATION"
    assert found["errors"][0]["tensor"].endswith("joined/concat") and found["errors"][0]["output_error"] > 0.5
    # The concatenation alone in int8 costs the outputs what every op in int8 does: it is the whole error.
    assert abs(found["int8_output_error"] - found["errors"][0]["output_error"]) < 0.02, found["int8_output_error"]

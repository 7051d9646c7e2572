"""Activation range estimators and how `auto` chooses among them (`tfquant.ranges`, `tfquant.statistics`)."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from tfquant import headroom, ranges
from tfquant.statistics import BINS, Histogram, Statistics
from tfquant.types import RANGE_METHODS


def _stats(values: np.ndarray) -> Statistics:
    """The statistics of one activation (tensor 0) whose values on sample i are values[i]."""
    low, high = float(values.min()), float(values.max())
    histogram = Histogram(low, high, np.zeros(BINS, np.int64))
    for row in values:
        histogram.add(row)
    extremes = np.stack([values.min(axis=1), values.max(axis=1)], axis=1)
    return Statistics({0: histogram}, {0: extremes}, {}, len(values))


def test_every_range_method_is_auto_or_an_estimator():
    assert set(RANGE_METHODS) == {"auto", *ranges.ESTIMATORS}
    assert set(ranges.AUTO) <= set(ranges.ESTIMATORS) and ranges.AUTO[0] == "percentile"


def test_percentile_range_is_the_quantile_of_each_samples_extreme_and_does_not_grow_with_samples():
    rng = np.random.default_rng(0)
    values = rng.standard_normal((2000, 1000))
    # A sample's max of 1000 normals is <= x with probability Phi(x)^1000.
    expected = NormalDist().inv_cdf(ranges.PERCENTILE ** (1 / 1000))  # 3.89
    few, many = _stats(values[:100]), _stats(values)
    low, high = ranges.percentile_ranges(many, stretch=1.0)[0]
    assert high == pytest.approx(expected, rel=0.03) and low == pytest.approx(-expected, rel=0.03)
    assert ranges.percentile_ranges(few, stretch=1.0)[0][1] == pytest.approx(expected, rel=0.06)
    # Min/max is only ~15 % wider here: not worth clipping, the calibrated range stays.
    assert ranges.percentile_ranges(many) == {} and ranges.minmax_ranges(many) == {}
    # Min/max keeps growing with the number of samples; the mean of each sample's max is lower still.
    assert values.max() > values[:100].max() > high
    assert ranges.average_ranges(many)[0][1] == pytest.approx(values.max(axis=1).mean()) and \
        ranges.average_ranges(many)[0][1] < high


def test_one_odd_sample_sets_min_max_but_not_the_percentile_range():
    rng = np.random.default_rng(1)
    values = np.abs(rng.standard_normal((200, 500)))  # a ReLU-like activation: zero stays inside
    odd = values.copy()
    odd[17, 3] = 100.0
    assert _stats(odd).histograms[0].high == 100.0
    # 100 stretches the range far beyond what 19 samples in 20 reach (~4): clipped to the quantile.
    low, high = ranges.percentile_ranges(_stats(odd))[0]
    assert low == 0.0 and high == pytest.approx(np.quantile(odd.max(axis=1), ranges.PERCENTILE)) and high < 5


def test_mse_range_clips_a_long_tail_for_less_expected_error():
    rng = np.random.default_rng(2)
    values = rng.laplace(size=(100, 1000))
    histogram = _stats(values).histograms[0]
    low, high = ranges.mse_ranges(_stats(values))[0]
    assert values.min() < low < 0 < high < values.max()

    def error(lo, hi):  # clipping error, plus a uniform rounding error of step²/12 for each value inside
        centers, counts = histogram.centers(), histogram.counts.astype(float)
        inside = counts[(centers >= lo) & (centers <= hi)].sum()
        return np.sum(counts * (centers - np.clip(centers, lo, hi)) ** 2) + inside * ((hi - lo) / 255) ** 2 / 12

    assert error(low, high) < 0.98 * error(values.min(), values.max())
    found = ranges._errors(histogram.centers(), histogram.counts.astype(float), np.array([[low, high], [-1.0, 2.0]]))
    assert np.allclose(found, [error(low, high), error(-1.0, 2.0)], rtol=1e-12)


def test_merged_statistics_are_those_of_all_samples():
    rng = np.random.default_rng(3)
    values = rng.standard_normal((10, 50))
    first, second = _stats(values[:6]), _stats(values[6:])
    # Both halves binned over the same calibrated range, as `collect` does.
    second.histograms[0] = Histogram(first.histograms[0].low, first.histograms[0].high, np.zeros(BINS, np.int64))
    for row in values[6:]:
        second.histograms[0].add(row)
    first.input_means, second.input_means = {"conv": np.array([1.0, 2.0])}, {"conv": np.array([3.0, 6.0])}
    first.input_moments, second.input_moments = {"conv": np.eye(2)}, {"conv": 6 * np.eye(2)}
    merged = first.merge(second)
    assert merged.samples == 10 and merged.histograms[0].counts.sum() == 500
    np.testing.assert_array_equal(merged.extremes[0], _stats(values).extremes[0])
    np.testing.assert_allclose(merged.input_means["conv"], [1.8, 3.6])  # (6 * 1 + 4 * 3) / 10
    np.testing.assert_allclose(merged.input_moments["conv"], 3 * np.eye(2))  # (6 * 1 + 4 * 6) / 10


def test_pick_keeps_the_first_candidate_unless_another_is_better_beyond_noise():
    rng = np.random.default_rng(4)
    flips = (rng.random(100) < 0.08).astype(float)
    one_fewer = flips.copy()
    one_fewer[np.flatnonzero(flips)[0]] = 0.0
    # One flip fewer in a hundred samples is noise.
    assert ranges.pick({"percentile": flips, "minmax": one_fewer}) == "percentile"
    # A candidate whose error is lower on most samples wins; of two such, the lower mean.
    base = rng.random(100) + 1.0
    assert ranges.pick({"percentile": base, "minmax": base - 0.5, "mse": base - 0.4}) == "minmax"
    assert ranges.pick({"percentile": base, "minmax": base + 0.5}) == "percentile"
    assert ranges.pick({"percentile": np.array([1.0]), "minmax": np.array([0.0])}) == "percentile"  # one sample


def test_sample_errors_by_task():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    flipped = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    errors = ranges.sample_errors({"p": probabilities}, {"p": flipped})
    assert errors[0] == 0.0 and 1.0 < errors[1] < 1.02
    embedding = np.array([[0.6, -0.8], [-1.0, 0.0]])  # unit rows, not probabilities
    turned = np.array([[0.6 * np.cos(0.1) + 0.8 * np.sin(0.1), 0.6 * np.sin(0.1) - 0.8 * np.cos(0.1)], [-1.0, 0.0]])
    np.testing.assert_allclose(ranges.sample_errors({"e": embedding}, {"e": turned}), [1 - np.cos(0.1), 0.0])
    target = np.array([[1.0], [3.0]])  # spread 1
    np.testing.assert_allclose(ranges.sample_errors({"y": target}, {"y": target + [[0.5], [0.0]]}), [0.5, 0.0])


def test_auto_judges_candidates_on_held_out_samples_and_falls_back_when_clipping_hurts(monkeypatch):
    """A regression whose odd samples (one in 25) run ten times hotter: the percentile range clips
    them, the held-out samples show it, and auto keeps min/max, which covers them."""
    from tfquant import convert
    from tfquant._keras import keras
    from tfquant.prepare import prepare
    from tfquant.types import Recipe

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,), name="x")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="y")(hidden))
    x = np.random.default_rng(5).random((200, 8)).astype(np.float32)
    x[::25] *= 10.0
    prepared = prepare(model, recipe=Recipe(), calibration_data=x)
    picks, pick = [], ranges.pick

    def spy(errors):
        picks.append(errors)
        return pick(errors)

    monkeypatch.setattr(ranges, "pick", spy)
    calibration, recipe = convert.calibration_for(prepared.exported, prepared.calibration, Recipe())
    assert recipe.ranges == "minmax" and calibration.ranges == "minmax"
    # Each candidate judged on both halves (200 held-out errors), each half by the ranges fitted on the
    # other: an unbounded output (a regression) adds mse to them. Then the chosen one once more with bias
    # correction, which is kept unless it did clearly worse there.
    candidates, trial = picks
    assert list(candidates) == ["percentile", "minmax", "mse"] and {len(e) for e in candidates.values()} == {200}
    assert list(trial) == ["bias corrected", "as rounded"] and {len(e) for e in trial.values()} == {200}
    assert candidates["percentile"].mean() > 2 * candidates["minmax"].mean()
    assert recipe.bias_correction == (pick(trial) == "bias corrected")
    assert bool(calibration.input_means) == recipe.bias_correction
    pinned, _ = convert.calibration_for(prepared.exported, prepared.calibration,
                                        Recipe(ranges="minmax", bias_correction=True))
    assert pinned.input_means  # a recipe that names its ranges gets the correction it asks for
    forced, _ = convert.calibration_for(prepared.exported, prepared.calibration, Recipe(ranges="percentile"))
    assert forced.ranges == "percentile" and forced.calibrated != calibration.calibrated


def test_a_regression_output_beyond_the_calibrated_range_is_not_clipped(tmp_path):
    """A linear head's range is the most extreme output the calibration samples gave; a held-out
    sample beyond it read that extreme, clipped. Unbounded outputs get `HEADROOM` of their span."""
    from ai_edge_litert.interpreter import Interpreter

    import tfquant
    from tfquant._keras import keras

    rng = np.random.default_rng(0)
    calibration = rng.uniform(0, 1, (200, 8)).astype(np.float32)
    inputs = keras.Input((8,), name="features")
    head = keras.layers.Dense(1, name="score")
    model = keras.Model(inputs, head(inputs))
    head.set_weights([np.ones((8, 1), np.float32), np.zeros(1, np.float32)])
    seen = calibration.sum(axis=1)
    low, high = float(seen.min()), float(seen.max())
    beyond = high + 0.15 * (high - low)  # within [0, 1] per feature: the input's own range is not exceeded
    sample = np.full((1, 8), beyond / 8, np.float32)
    assert sample.max() <= calibration.max()
    result = tfquant.quantize(model, {"features": calibration}, io="float32", bench_runs=1, diagnose=False)
    interpreter = Interpreter(model_content=result.tflite)
    out = interpreter.get_signature_runner()(features=sample)["score"]
    step = (high + headroom.HEADROOM * (high - low)) / 255  # the widened range includes zero: [0, high + headroom]
    assert abs(float(out.ravel()[0]) - beyond) <= 2 * step, (out, beyond, high)


@pytest.mark.parametrize("head", ["exponential", "softplus", "softplus of a wide z", "max over steps", "mean over steps",
                                  "input plus z"])
def test_a_head_that_rises_with_a_linear_layer_gets_headroom_on_that_layer_too(head):
    """A Poisson head exp(z), a softplus one, the largest or mean of per-step outputs z, or z added to an
    input (a residual forecast) reads no more than f(max z) where z keeps the range calibration saw,
    whatever the output's own range: the headroom follows the output back to z."""
    from ai_edge_litert.interpreter import Interpreter

    import tfquant
    from tfquant._keras import keras

    layers = keras.layers
    rng = np.random.default_rng(0)
    calibration = rng.uniform(0, 1, (200, 8)).astype(np.float32)
    inputs = keras.Input((8,), name="features")
    steps = 4 if "steps" in head else 1
    linear = layers.Dense(steps, name="z")
    z = linear(inputs)
    out = {"exponential": lambda: layers.Activation("exponential", name="rate")(z),
           "softplus": lambda: layers.Activation("softplus", name="rate")(z),
           "softplus of a wide z": lambda: layers.Activation("softplus", name="rate")(z),
           "max over steps": lambda: layers.GlobalMaxPooling1D(name="rate")(layers.Reshape((steps, 1))(z)),
           "mean over steps": lambda: layers.GlobalAveragePooling1D(name="rate")(layers.Reshape((steps, 1))(z)),
           "input plus z": lambda: layers.Add(name="rate")([layers.Lambda(lambda t: t[:, -1:])(inputs), z])}[head]()
    model = keras.Model(inputs, out)
    # the wide z spans [-165, 112]: softplus' exp(-|z|) term must keep its [0, 1], not exp(0.25 · 165)
    weight, bias = {"exponential": (0.25, 0.0), "softplus of a wide z": (60.0, -240.0)}.get(head, (1.0, 0.0))
    linear.set_weights([weight * np.linspace(0.9, 1.1, steps, dtype=np.float32)[::-1] * np.ones((8, steps), np.float32),
                        np.full(steps, bias, np.float32)])
    top = float(calibration.sum(axis=1).max())

    def even(total: float) -> np.ndarray:  # a sample whose features sum to `total`, each within [0, 1]
        return np.full((1, 8), total / 8, np.float32)

    beyond = 1.15 * top
    assert beyond / 8 <= calibration.max()  # the input's own range is not exceeded
    expected = float(model.predict(even(beyond), verbose=0).ravel()[0])
    clipped = float(model.predict(even(top), verbose=0).ravel()[0])
    result = tfquant.quantize(model, {"features": calibration}, io="float32", bench_runs=1, diagnose=False)
    assert result.report.quantized.fully_integer
    runner = Interpreter(model_content=result.tflite).get_signature_runner()
    read = float(runner(features=even(beyond))["rate"].ravel()[0])
    assert abs(read - expected) < 0.1 * (expected - clipped), (head, read, expected, clipped)


def test_a_tensor_two_outputs_rise_with_is_widened_once():
    """z is an output and the input of another, exp(z): its range gets one quarter of its span beyond each
    side, not a quarter of the quarter-widened range again."""
    from ai_edge_litert.interpreter import Interpreter

    import tfquant
    from tfquant._keras import keras

    calibration = np.random.default_rng(0).uniform(0, 1, (200, 8)).astype(np.float32)
    inputs = keras.Input((8,), name="features")
    linear = keras.layers.Dense(1, name="z")
    z = linear(inputs)
    model = keras.Model(inputs, {"z": z, "rate": keras.layers.Activation("exponential", name="rate")(z)})
    linear.set_weights([np.full((8, 1), 0.25, np.float32), np.zeros(1, np.float32)])
    seen = 0.25 * calibration.sum(axis=1)
    result = tfquant.quantize(model, {"features": calibration}, bench_runs=1, diagnose=False)
    outputs = Interpreter(model_content=result.tflite).get_signature_runner().get_output_details()
    scales = {name: float(detail["quantization"][0]) for name, detail in outputs.items()}
    span = float(seen.max() - seen.min())
    assert scales["z"] == pytest.approx((1 + 2 * headroom.HEADROOM) * span / 255, rel=0.02), (scales, span)


def test_a_logits_head_keeps_its_calibrated_range():
    """Headroom costs a coarser scale, which a classifier's logits do not repay: an output the evaluation
    data shows to be a classifier keeps its range; without evaluation data it is treated as a regression."""
    from ai_edge_litert.interpreter import Interpreter

    import tfquant
    from tfquant._keras import keras

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (300, 8)).astype(np.float32)
    inputs = keras.Input((8,), name="features")
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(inputs))
    labels = np.argmax(model.predict(x, verbose=0), axis=1)

    def output_scale(**options) -> float:
        result = tfquant.quantize(model, {"features": x[:200]}, bench_runs=1, diagnose=False, **options)
        (detail,) = Interpreter(model_content=result.tflite).get_output_details()
        return float(detail["quantization"][0])

    classifier = output_scale(eval_data=({"features": x[200:]}, labels[200:]))
    unknown = output_scale()
    assert unknown == pytest.approx(classifier * (1 + 2 * headroom.HEADROOM), rel=1e-3)


def _picked(monkeypatch) -> list[dict]:
    """What `ranges.pick` is asked to choose from, call by call."""
    picks, pick = [], ranges.pick

    def spy(errors):
        picks.append(errors)
        return pick(errors)

    monkeypatch.setattr(ranges, "pick", spy)
    return picks


def test_auto_tries_mse_ranges_on_a_regression_and_not_on_a_classifier(monkeypatch, digits):
    """A Bidirectional GRU regression (tf_keras): its GRU steps round in both directions, and the
    percentile ranges left it 5.8 % of the output's spread off float, beyond the 5 % budget; the
    MSE-optimal ranges, which auto tries where an output is unbounded, win on the held-out samples and
    hold it within. A classifier (a softmax, or logits with labels) is not given them: top-1 is not what they
    minimize."""
    import tfquant
    from tfquant._keras import keras
    from tfquant.types import Recipe

    keras.utils.set_random_seed(0)
    rows, test_rows = digits["x"][..., 0], digits["x_test"][..., 0]
    ink, test_ink = rows.mean(axis=(1, 2))[:, None] * 10, test_rows.mean(axis=(1, 2))[:, None] * 10
    inputs = keras.Input((8, 8), name="rows")
    x = keras.layers.Bidirectional(keras.layers.GRU(16, return_sequences=True))(inputs)
    x = keras.layers.GlobalMaxPooling1D()(keras.layers.Conv1D(8, 3)(x))
    model = keras.Model(inputs, keras.layers.Dense(1, name="ink")(x))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    model.fit(rows, ink, epochs=8, batch_size=32, verbose=0)
    picks = _picked(monkeypatch)
    chosen = tfquant.quantize(model, {"rows": rows[:200]}, eval_data=({"rows": test_rows}, test_ink), bench_runs=1,
                              diagnose=False)
    assert list(picks[0]) == ["percentile", "minmax", "mse"] and chosen.report.recipe.ranges == "mse"
    percentile = tfquant.quantize(model, {"rows": rows[:200]}, eval_data=({"rows": test_rows}, test_ink), bench_runs=1,
                                  diagnose=False, recipe=Recipe(ranges="percentile", bias_correction=False),
                                  max_rel_rmse=1.0)
    error = chosen.report.outputs[0].quantized.rel_rmse
    assert error <= 0.05 < percentile.report.outputs[0].quantized.rel_rmse, error

    images = keras.Input((8, 8, 1), name="image")
    for activation, eval_data in (("softmax", None), (None, ({"image": digits["x_test"]}, digits["y_test"]))):
        picks.clear()  # a softmax head; a logits head that the labels show to be a classifier
        classifier = keras.Model(images, keras.layers.Dense(10, activation=activation)(keras.layers.Flatten()(images)))
        tfquant.quantize(classifier, {"image": digits["x"][:200]}, eval_data=eval_data, bench_runs=1, diagnose=False,
                         fallback="off")
        assert list(picks[0]) == ["percentile", "minmax"], activation


def test_a_missed_regression_budget_names_samples_the_calibration_never_showed():
    """Calibrated on the samples of lower totals only, every input feature still spans [0, 1], but the
    hidden activations of the higher totals pass their calibrated ranges: those samples carry most of the
    int8 error, and the failure says so. Calibrated on samples of every total, the file is within budget."""
    import tfquant
    from tfquant._keras import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (600, 8)).astype(np.float32)
    inputs = keras.Input((8,), name="features")
    hidden = keras.layers.Dense(16, activation="relu", kernel_initializer="ones")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="total", kernel_initializer="ones")(hidden))
    y = model.predict(x, verbose=0)
    low = x[:400][np.argsort(x[:400].sum(axis=1))[:150]]
    assert low.min(axis=0).max() < 0.1 and low.max(axis=0).min() > 0.9  # each feature still spans [0, 1]
    evaluation = ({"features": x[400:]}, y[400:])
    with pytest.raises(tfquant.AccuracyBudgetError) as caught:
        tfquant.quantize(model, {"features": low}, eval_data=evaluation, bench_runs=1, diagnose=False)
    message = str(caught.value)
    assert "of 200 evaluation samples give float outputs beyond the calibration samples' [" in message
    assert "of its squared int8 error: int8 ranges inside the model, calibrated without their like, clip them. " \
           "Fix: calibrate on samples that span the outputs' range" in message
    covered = tfquant.quantize(model, {"features": x[:150]}, eval_data=evaluation, bench_runs=1, diagnose=False)
    assert covered.report.outputs[0].quantized.rel_rmse < 0.05
    assert not any("beyond the calibration samples'" in w for w in covered.report.warnings)


def test_statistics_held_across_samples_are_those_taken_sample_by_sample(digits_model, digits, monkeypatch):
    """`collect` bins each tensor's values and reduces them to each sample's [min, max] once per
    `HELD_BYTES` of values, not once per sample: the statistics are the same to the last count and bit."""
    from tfquant import statistics
    from tfquant.convert import calibrate
    from tfquant.prepare import prepare
    from tfquant.types import Recipe

    prepared = prepare(digits_model, recipe=Recipe(), calibration_data=digits["x"][:40])
    calibrated = calibrate(prepared.exported.tflite, prepared.calibration)
    held = statistics.collect(calibrated, prepared.calibration)
    monkeypatch.setattr(statistics, "HELD_BYTES", 0)  # every sample binned and reduced on its own
    alone = statistics.collect(calibrated, prepared.calibration)
    assert held.samples == alone.samples == 40 and len(held.histograms) >= 5
    for index, histogram in held.histograms.items():
        assert np.array_equal(histogram.counts, alone.histograms[index].counts)
        assert histogram.counts.sum() > 0
        assert held.extremes[index].shape == (40, 2) and np.array_equal(held.extremes[index], alone.extremes[index])
        assert (held.extremes[index][:, 0] <= held.extremes[index][:, 1]).all()

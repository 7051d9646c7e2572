"""The interpreter harness against a plain per-sample interpreter loop on the same files."""

from __future__ import annotations

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

import tfquant
from tfquant import harness, zoo
from tfquant.data import load_data


def per_sample_scores(path, x):
    """TensorFlow's tutorial loop: one sample per invoke, quantize by hand."""
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero = inp["quantization"]
    o_scale, o_zero = out["quantization"]
    scores = []
    for sample in x:
        value = sample[None]
        if scale:
            value = np.clip(np.round(value / scale) + zero, -128, 127).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], value)
        interpreter.invoke()
        raw = interpreter.get_tensor(out["index"])[0]
        scores.append((raw.astype(np.float32) - o_zero) * o_scale if o_scale else raw)
    return np.stack(scores)


def test_batched_predictions_equal_per_sample_loop(tflite_files, digits):
    x = digits["x_test"]
    runner = harness.Runner(tflite_files["int8"])
    batched = runner.predict(load_data(x, runner.specs), batch_size=64)["probs"]
    reference = per_sample_scores(tflite_files["int8"], x)
    assert batched.shape == (359, 10)
    # Identical integer graph; rounding of exact .5 ties may differ on a few inputs (TFLite rounds away from zero).
    assert np.mean(batched.argmax(1) == reference.argmax(1)) >= 0.995
    assert np.abs(batched - reference).max() <= 2 * runner.outputs[0].scale + 1e-6


def test_fixed_batch_file_is_run_in_its_batch(digits_model, digits, train_npz, test_npz):
    """A file whose batch dim is fixed (Input(batch_size=1)) cannot be resized: one sample at a time."""
    from tfquant._keras import keras

    fixed = keras.Model.from_config(digits_model.get_config())
    fixed.set_weights(digits_model.get_weights())
    inputs = keras.Input((8, 8, 1), batch_size=1, name="image")
    fixed = keras.Model(inputs, fixed(inputs))
    result = tfquant.quantize(fixed, train_npz, calib_samples=50, bench_runs=1)
    runner = harness.Runner(result.tflite)
    assert not runner.dynamic_batch and runner.inputs[0].signature[0] == 1
    metrics = tfquant.evaluate(result.tflite, test_npz)
    assert metrics.samples == 359
    dynamic = tfquant.quantize(digits_model, train_npz, calib_samples=50, bench_runs=1)
    assert metrics.accuracy == pytest.approx(tfquant.evaluate(dynamic.tflite, test_npz).accuracy, abs=1 / 359)


def test_metrics_on_known_scores():
    from tfquant.tasks import measure

    scores = np.array([
        [0.05, 0.90, 0.02, 0.01, 0.004, 0.011, 0.005],  # label 1: top-1 right
        [0.80, 0.10, 0.05, 0.01, 0.02, 0.015, 0.005],  # label 1: second best, inside the top 5
        [0.30, 0.25, 0.20, 0.15, 0.01, 0.05, 0.04],  # label 4: seventh best, outside the top 5
    ])
    m = measure("classification", "probs", scores, labels=np.array([1, 1, 4]))
    assert m.accuracy == pytest.approx(1 / 3)
    assert m.top5_accuracy == pytest.approx(2 / 3)
    few = measure("classification", "probs", np.array([[0.2, 0.8], [0.6, 0.4]]), labels=np.array([1, 1]))
    assert few.accuracy == 0.5 and few.top5_accuracy is None


def test_threads_and_batch_size_do_not_change_results(tflite_files, test_npz):
    one = tfquant.evaluate(tflite_files["int8"], test_npz, num_threads=1, batch_size=1)
    two = tfquant.evaluate(tflite_files["int8"], test_npz, num_threads=2, batch_size=100)
    assert one.accuracy == two.accuracy and one.top5_accuracy == two.top5_accuracy


def test_benchmark_fields(tflite_files):
    result = tfquant.benchmark(tflite_files["int8"], runs=15, warmup=2, threads=1)
    assert result.num_runs >= 15 and result.warmup_runs == 2 and result.num_threads == 1
    assert result.inference_ms.count == result.num_runs
    assert result.inference_ms.min <= result.inference_ms.p50 <= result.inference_ms.p90
    assert result.runtime.name == "ai_edge_litert" and result.runtime.version.startswith("2.")
    with pytest.raises(tfquant.RecipeError, match="expected runs >= 1"):
        tfquant.benchmark(tflite_files["int8"], runs=0)


def test_runs_go_on_until_the_median_is_known_within_5_percent(tflite_files):
    """Latency noise: a median is reported with its 95 % interval, from as many interleaved runs as it takes
    (or until the time cap); p99 only from 100 runs on."""
    from tfquant.timing import benchmark, median_interval

    fp, q = benchmark(tflite_files["float32"], tflite_files["int8"], runs=20, warmup=2, num_threads=1, max_seconds=20)
    for result in (fp, q):
        lat = result.inference_ms
        assert lat.p50_margin <= 0.05, lat
        assert lat.count >= 20 and lat.p50_low <= lat.p50 <= lat.p50_high
        assert (lat.p99 is None) == (lat.count < 100)
    (capped,) = benchmark(tflite_files["int8"], runs=120, warmup=0, num_threads=1, max_seconds=0.001)
    assert capped.num_runs == 120 and capped.inference_ms.p99 is not None  # the minimum runs, then the cap
    # The interval of the median from the order statistics: for 100 runs, the 40th and 61st smallest.
    samples = np.arange(1.0, 101.0)
    assert median_interval(samples) == (40.0, 61.0)
    assert median_interval(samples[:5]) == (None, None)


def test_residual_model_quantizes(digits, train_npz, test_npz):
    model = zoo.residual_cnn(width=16)
    zoo.fit_classifier(model, digits["x"], digits["y"], epochs=3)
    result = tfquant.quantize(model, train_npz, eval_data=test_npz, calib_samples=100, bench_runs=2)
    assert result.info.fully_integer
    assert result.info.op_counts()["ADD"] == 2
    assert result.report.accuracy_drop <= 0.02


def test_a_token_id_past_the_embedding_table_names_the_sample_and_why():
    """An id the Embedding has no row for: the interpreter's GATHER stops. The error names the file, the sample
    and what the id must be, on one line."""
    from tfquant._keras import keras
    from tfquant.errors import TFLiteFileError

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,), dtype="int32", name="tokens")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(10, 4)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(pooled))
    ids = np.random.default_rng(0).integers(0, 10, (40, 6)).astype(np.int32)
    bad = ids.copy()
    bad[5, 2] = 12
    with pytest.raises(TFLiteFileError) as caught:
        tfquant.quantize(model, ids, eval_data=(bad, np.zeros(40, np.int64)), bench_runs=1, diagnose=False)
    message = str(caught.value)
    assert message.startswith("the float32 file: expected a file the interpreter can run on every sample, found it "
                              "stopped on sample 5 of <eval data>: gather index out of bounds. Node number ")
    assert message.endswith("(an id at or past the rows of a lookup table on this sample (an Embedding's input_dim): "
                            "ids must stay below it, as the tokenizer the model was trained with makes them)")
    assert "\n" not in message


def test_samples_of_another_shape_than_the_file_fixes_are_named_not_a_traceback(tflite_files):
    from tfquant.errors import DataError

    runner = harness.Runner(tflite_files["float32"])
    runner.allocate()
    with pytest.raises(DataError, match=r"digits_float32.tflite: expected input 'image' of shape \(1, 8, 8, 1\), "
                       r"found samples of shape \(1, 7, 7, 1\) \(Cannot set tensor: Dimension mismatch"):
        runner.run([np.zeros((1, 7, 7, 1), np.float32)])


@pytest.mark.parametrize("dtype,scale,zero", [("int8", 1 / 255, -128), ("int8", 0.02, 3), ("uint8", 0.1, 128),
                                              ("int16", 0.001, 0)])
def test_inputs_are_quantized_as_tflite_rounds_across_blocks(dtype, scale, zero):
    """Half away from zero, clipped to the type, over more values than one block and a strided view."""
    rng = np.random.default_rng(0)
    ties = (np.arange(-40_000, 40_000) + 0.5) * scale  # every value an exact .5 step (as far as float32 holds it)
    values = np.concatenate([ties, rng.normal(0, 300 * scale, harness._BLOCK + 12_340)]).astype(np.float32)
    values = values.reshape(-1, 4)[:, ::2]  # not contiguous
    port = harness._Port(0, "x", np.dtype(dtype), (-1, 2), scale, zero)
    got = port.to_file(values)
    steps = np.divide(values, np.float32(scale), dtype=np.float32).astype(np.float64)  # TFLite divides in float32
    expected = np.sign(steps) * np.floor(np.abs(steps) + 0.5) + zero
    info = np.iinfo(dtype)
    expected = np.clip(expected, info.min, info.max)
    assert got.dtype == np.dtype(dtype) and got.shape == values.shape
    assert (got == expected).all()
    assert (np.abs(steps - np.trunc(steps)) == 0.5).sum() > 10_000  # ties, where half to even would differ
    assert (got == info.min).any() and (got == info.max).any()

"""Recurrent layers traced as they infer: dropout left out, GRU variants, one layer's states starting another."""

from __future__ import annotations

import numpy as np
import pytest

import tfquant

from checks import assert_every_op_integer, assert_int8_follows_keras, constant_bytes, trained_and_quantized


@pytest.mark.parametrize("version", [3, 2])
def test_recurrent_layers_with_dropout_convert_as_they_infer(version, digits, tmp_path):
    """Keras 3's recurrent cells draw dropout masks on every call, inference too (a seed generator's state
    assigned in the graph): `recurrent_dropout` made an LSTM unconvertible ("expected a graph whose
    variables can be frozen"). The trace leaves the masks out, which inference never applies."""
    from tfquant._keras import keras, keras3

    k = keras3() if version == 3 else keras
    k.utils.set_random_seed(0)
    inputs = k.Input((8, 8, 1), name="image")
    x = k.layers.Reshape((8, 8))(inputs)
    x = k.layers.Bidirectional(k.layers.LSTM(16, dropout=0.1, recurrent_dropout=0.1, return_sequences=True))(x)
    x = k.layers.GRU(16, recurrent_dropout=0.2)(x)
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax", name="probs")(x))
    # 8 epochs (float 87-89 %): at 4 (71-77 %), one changed prediction in 359 decided the 97 % agreement bar.
    result = trained_and_quantized(k, model, digits, tmp_path, epochs=8)
    assert_int8_follows_keras(model, result, digits, least=0.8)
    assert model.layers[2].forward_layer.cell.recurrent_dropout == 0.1  # put back after the trace
    # 8 steps of 16 units unrolled: the int8 graph's tensors, each with its scale and zero point, outweigh
    # the 4× smaller weights, and the report says so with the numbers rather than leave it for a failure.
    report = result.report
    assert report.quantized.tflite_bytes >= report.float_file.tflite_bytes
    note = next(w for w in report.warnings if "is not smaller than the float file" in w)
    assert note.startswith(f"the int8 file ({report.quantized.tflite_bytes:,} bytes) is not smaller than the float "
                           f"file ({report.float_file.tflite_bytes:,}): its weights and constants take "
                           f"{constant_bytes(result.tflite):,} bytes (float: {constant_bytes(result.float_tflite):,})")
    assert note.endswith(f"gzip -9: {report.quantized.gzip_bytes:,} against {report.float_file.gzip_bytes:,} bytes")


@pytest.mark.parametrize("version", [3, 2])
def test_a_gru_that_resets_before_its_product_is_fully_integer(version, digits, tmp_path):
    """`GRU(reset_after=False)` splits its recurrent product in three and reads two parts; in tf_keras the
    quantizer left some of those SPLIT_Vs float, between a DEQUANTIZE and QUANTIZEs. They copy the int8
    tensor instead."""
    from tfquant._keras import keras, keras3

    k = keras3() if version == 3 else keras
    k.utils.set_random_seed(0)
    inputs = k.Input((8, 8, 1), name="image")
    x = k.layers.GRU(24, reset_after=False)(k.layers.Reshape((8, 8))(inputs))
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax", name="probs")(x))
    result = trained_and_quantized(k, model, digits, tmp_path, epochs=6)
    assert_every_op_integer(result.info)
    output = result.report.outputs[0]
    assert output.float.accuracy > 0.85 and output.quantized.agreement >= 0.97, output


@pytest.mark.parametrize("version", [3, 2])
def test_an_encoder_whose_states_start_a_decoder_converts_to_full_int8(version, digits, tmp_path):
    """The sequence-to-sequence pattern: an LSTM's final states (`return_state`) are the `initial_state` of
    another LSTM reading the rest of the sequence. Both are unrolled, the states carried as tensors."""
    from tfquant._keras import keras, keras3

    k = keras3() if version == 3 else keras
    k.utils.set_random_seed(0)
    inputs = k.Input((8, 8, 1), name="image")
    rows = k.layers.Reshape((8, 8))(inputs)
    _, h, c = k.layers.LSTM(16, return_state=True)(k.layers.Cropping1D((0, 4))(rows))
    x = k.layers.LSTM(16)(k.layers.Cropping1D((4, 0))(rows), initial_state=[h, c])
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax", name="probs")(x))
    result = trained_and_quantized(k, model, digits, tmp_path, epochs=6)
    assert_int8_follows_keras(model, result, digits, least=0.8)


def test_ops_kept_float_leave_no_int8_copy_between_them(digits, tmp_path):
    """The quantizer keeps SPLIT and UNPACK int8 even when every op is denylisted: an unrolled LSTM's
    gates were still rounded on one scale between float products and float activations, so no float
    island could win that error back. A copy between a QUANTIZE of a float tensor and DEQUANTIZEs
    copies the float tensor instead: with every op kept float, only the file's int8 input and output
    round."""
    from dataclasses import replace

    from tfquant._keras import keras
    from tfquant.convert import calibration_for
    from tfquant.data import Dataset
    from tfquant.diagnose import _op_outputs
    from tfquant.export import export
    from tfquant.harness import Runner
    from tfquant.inspect import inspect
    from tfquant.models import load_model
    from tfquant.ranges import sample_errors
    from tfquant.recipe import Recipe

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8), name="rows")
    x = keras.layers.LSTM(16, return_sequences=True)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(8, name="values")(keras.layers.LSTM(16)(x)))
    exported = export(load_model(model))
    calibration = Dataset("calibration", {"rows": digits["x"][:100, ..., 0]})
    found, recipe = calibration_for(exported, calibration, Recipe(ranges="minmax", bias_correction=False))
    everything = tuple(_op_outputs(found.calibrated))
    kept_float = found.quantize(replace(recipe, denylist=everything))
    ops = inspect(kept_float).ops
    reading = {name: sorted(op.input_dtypes[-1] for op in ops if op.name == name) for name in ("SPLIT", "UNPACK")}
    # The first LSTM's steps are unpacked from the int8 input as it is (a copy, exact); nothing else reads int8.
    assert reading == {"SPLIT": ["float32"] * 16, "UNPACK": ["float32", "int8"]}, reading
    rounded = [op.index for op in ops if op.name == "QUANTIZE" and op.input_dtypes == ["float32"]]
    assert rounded == [ops[-1].index], rounded  # only the output's
    evaluation = Dataset("evaluation", {"rows": digits["x_test"][:100, ..., 0]})
    reference = Runner(exported.tflite).predict(evaluation, progress=False)
    error = sample_errors(reference, Runner(kept_float).predict(evaluation, progress=False)).mean()
    assert error < 0.01, error


@pytest.mark.parametrize("version", [3, 2])
def test_a_stateful_layer_is_refused_and_its_state_as_input_and_output_converts(version, digits, tmp_path):
    """A stateful LSTM keeps its state in variables between calls, which the export cannot freeze: it is
    refused, naming the layer and both ways out. The second way (the state an input and an output,
    `initial_state=` and `return_state=True`) converts fully integer and carries the state as Keras does."""
    from tfquant._keras import keras, keras3
    from tfquant.errors import ModelLoadError

    k = keras3() if version == 3 else keras
    k.utils.set_random_seed(0)
    rows = digits["x"].reshape(-1, 8, 8)
    inputs = k.Input(batch_shape=(1, 8, 8), name="rows")
    stateful = k.Model(inputs, k.layers.Dense(10, activation="softmax")(k.layers.LSTM(16, stateful=True)(inputs)))
    stateful.save(tmp_path / ("m.keras" if version == 3 else "m.h5"))
    with pytest.raises(ModelLoadError, match=r": expected recurrent layers that start each call from a zero state "
                       r"\(stateful=False\), found stateful layer\(s\) 'lstm\w*' \(LSTM\), whose state carries"):
        tfquant.quantize(tmp_path / ("m.keras" if version == 3 else "m.h5"), {"rows": rows[:8]}, bench_runs=1)

    chunk, h, c = k.Input((4, 8), name="chunk"), k.Input((16,), name="h"), k.Input((16,), name="c")
    seen, h_out, c_out = k.layers.LSTM(16, return_state=True)(chunk, initial_state=[h, c])
    streaming = k.Model([chunk, h, c], [k.layers.Dense(10, activation="softmax", name="digit")(seen),
                                         k.layers.Activation("linear", name="h_out")(h_out),
                                         k.layers.Activation("linear", name="c_out")(c_out)])
    start = np.zeros((64, 16), np.float32)
    _, h1, c1 = streaming.predict([rows[:64, :4], start, start], verbose=0)  # the state after the first 4 rows
    feed = {"chunk": rows[:64, 4:], "h": h1, "c": c1}
    _, h2, c2 = streaming.predict(list(feed.values()), verbose=0)
    labels = {"digit": digits["y"][:64], "h_out": h2, "c_out": c2}
    result = tfquant.quantize(streaming, feed, eval_data=(feed, labels), bench_runs=1, diagnose=False,
                              max_rel_rmse=0.1, max_drop=1)
    assert_every_op_integer(result.info)
    assert [port.name for port in result.report.io if port.kind == "input"] == ["chunk", "h", "c"]
    errors = {o.name: o.quantized.rel_rmse for o in result.report.outputs}
    assert set(errors) == {"h_out", "c_out", "digit"} and errors["h_out"] < 0.1 and errors["c_out"] < 0.1, errors


def _rows_lstm(k, digits, scale: float):
    """An LSTM over the digits' 8 rows of 8 pixels, the pixels scaled to [0, scale]."""
    k.utils.set_random_seed(0)
    inputs = k.Input((8, 8), name="rows")
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax", name="probs")(k.layers.LSTM(32)(inputs)))
    model.compile(k.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(digits["x"][..., 0] * scale, digits["y"], epochs=15, batch_size=32, verbose=0)
    return model, {"rows": digits["x"][:200, ..., 0] * scale}, {"rows": digits["x_test"][..., 0] * scale,
                                                                 "y": digits["y_test"]}


def _departure(float_tflite: bytes, int8: bytes, test: dict) -> tuple[int, float]:
    """How far the int8 file's probabilities are from the float file's: changed predictions and RMSE."""
    from tfquant.data import load_data
    from tfquant.harness import Runner

    runners = [Runner(float_tflite), Runner(int8)]
    data = load_data({"rows": test["rows"]}, runners[0].specs)
    a, b = (r.predict(data, progress=False)["probs"] for r in runners)
    return int((a.argmax(1) != b.argmax(1)).sum()), float(np.sqrt(np.mean((a - b) ** 2)))


@pytest.mark.parametrize("version", [3, 2])
def test_lstm_gates_of_mismatched_ranges_get_int8_scales_of_their_own(version, digits):
    """An LSTM step's four gates come out of one SPLIT, which int8 puts on one scale. On inputs in
    [0, 1/16] the forget gate's bias of about 1 sets that scale and the cell gate spans a fifth of it:
    the model is exported again with each gate's products apart, and int8 changes fewer predictions."""
    from tfquant._keras import keras, keras3
    from tfquant.convert import calibrate, convert
    from tfquant.export import export
    from tfquant.gates import GATE_RATIO, gate_ratio
    from tfquant.inspect import inspect
    from tfquant.prepare import prepare
    from tfquant.types import Recipe

    k = keras3() if version == 3 else keras
    model, calib, test = _rows_lstm(k, digits, 1 / 16)
    result = tfquant.quantize(model, calib, eval_data=test, bench_runs=1)
    note = next(n for n in result.report.export.notes if n.startswith("LSTM gates computed apart"))
    info = inspect(result.tflite)
    ops = [op.name for op in info.ops]
    assert "SPLIT" not in ops and ops.count("FULLY_CONNECTED") == 8 * 8 + 1  # 8 steps: x and h products per gate
    assert_every_op_integer(info)

    prepared = prepare(model, recipe=Recipe(), calibration_data=calib, export_model=False)
    fused = export(prepared.loaded, shapes=prepared.calibration.sample_shapes())
    ratio = gate_ratio(calibrate(fused.tflite, prepared.calibration))
    assert ratio > GATE_RATIO and f"their narrowest gate spanned 1/{ratio:.1f} of the int8 range" in note
    fused_int8 = convert(fused, Recipe(), calibration=prepared.calibration)
    assert "SPLIT" in [op.name for op in inspect(fused_int8).ops]
    apart, together = _departure(result.float_tflite, result.tflite, test), _departure(fused.tflite, fused_int8, test)
    # measured: 7 against 24 changed predictions, RMSE 0.0166 against 0.0331 (Keras 3); 21 against 25, 0.0171
    # against 0.0270 (Keras 2). Over four trainings each, the RMSE was 0.50-0.91x, the changes 105 against 165.
    assert apart[0] < together[0] and apart[1] <= 0.8 * together[1], (apart, together)


def test_lstm_gates_of_alike_ranges_stay_one_product(digits):
    """On pixels in [0, 1] the narrowest gate spans over half of the gates' shared range on average over the
    steps (1.7×): one product and SPLIT per step. The pass that measured the gates calibrates the file int8 is
    made from: the calibrator runs once."""
    from unittest import mock

    from tfquant import convert as convert_stage
    from tfquant._keras import keras3
    from tfquant.inspect import inspect

    model, calib, test = _rows_lstm(keras3(), digits, 1.0)
    with mock.patch.object(convert_stage, "calibrate", wraps=convert_stage.calibrate) as calibrations:
        result = tfquant.quantize(model, calib, eval_data=test, bench_runs=1)
    assert calibrations.call_count == 1
    assert not any(n.startswith("LSTM gates") for n in result.report.export.notes)
    ops = [op.name for op in inspect(result.tflite).ops]
    assert ops.count("SPLIT") == 8 and ops.count("FULLY_CONNECTED") == 2 * 8 + 1  # per step: all gates in one product
    assert result.report.outputs[0].quantized.agreement >= 0.985

    # The model's own four-way split beside the LSTM, of parts 100x apart, is no LSTM step's: it does not
    # count (counted with the LSTM's eight, it raised their mean over GATE_RATIO and the gates were split).
    k = keras3()
    inputs = model.inputs[0]
    dense = k.layers.Dense(32, name="wide")
    parts = k.layers.Lambda(lambda t: k.ops.split(t, 4, axis=-1), name="quarters")(dense(k.layers.Flatten()(inputs)))
    kernel, bias = dense.get_weights()
    kernel[:, 8:16] /= 100
    dense.set_weights([kernel, bias * 0])
    joined = k.layers.Concatenate()([model.layers[1].output, *(k.layers.Dense(4)(p) for p in parts)])
    beside = k.Model(inputs, k.layers.Dense(10, activation="softmax", name="probs")(joined))
    result = tfquant.quantize(beside, calib, bench_runs=1, diagnose=False)
    assert not any(n.startswith("LSTM gates") for n in result.report.export.notes), result.report.export.notes
    assert [op.name for op in inspect(result.tflite).ops].count("SPLIT") == 8 + 1

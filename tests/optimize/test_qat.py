"""QAT that never refuses a layer: every layer type tfmot rejects goes through to a fully integer file."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import tfquant
from tfquant import zoo
from tfquant._keras import keras
from tfquant.cli import main, parse_args
from tfquant.errors import ModelLoadError
from tfquant.optimize.qat import qat

from checks import assert_every_op_integer

L = keras.layers


class Gain(L.Layer):
    """A custom layer no registry knows: one learned scalar gain."""

    def build(self, input_shape):
        self.gain = self.add_weight(name="gain", shape=(), initializer="ones")

    def call(self, inputs):
        return inputs * self.gain


def squeeze_excite(x):
    c = L.Conv2D(8, 3, activation="relu")(x)
    weights = L.Dense(8, activation="sigmoid")(L.GlobalAveragePooling2D()(c))
    return L.Multiply()([c, L.Reshape((1, 1, 8))(weights)])


LAYERS = {
    "BatchNormalization after activation": (lambda x: L.BatchNormalization()(L.Conv2D(8, 3, activation="relu")(x)), "BatchNormalization"),
    "Rescaling": (lambda x: L.Conv2D(8, 3, activation="relu")(L.Rescaling(2.0, offset=-1.0)(x)), "Rescaling"),
    "Normalization": (lambda x: L.Conv2D(8, 3, activation="relu")(L.Normalization(mean=0.3, variance=0.1)(x)), "Normalization"),
    "Conv1D": (lambda x: L.Conv1D(8, 3, activation="relu")(L.Reshape((64, 1))(x)), "Conv1D"),
    "Conv2DTranspose": (lambda x: L.Conv2DTranspose(4, 3, strides=2, activation="relu")(L.Conv2D(8, 3, activation="relu")(x)), "Conv2DTranspose"),
    "UpSampling2D": (lambda x: L.Conv2D(4, 3, activation="relu")(L.UpSampling2D()(L.Conv2D(8, 3, activation="relu")(x))), "UpSampling2D"),
    "Multiply (squeeze-excite)": (squeeze_excite, "Multiply"),
    "slicing (TFOpLambda)": (lambda x: L.Conv2D(8, 3, activation="relu")(x)[:, :, :, :4], "SlicingOpLambda"),
    "Reshape": (lambda x: L.Reshape((8, 8, 1))(L.Dense(64, activation="relu")(L.Flatten()(x))), "Reshape"),
    "unknown custom layer": (lambda x: Gain()(L.Conv2D(8, 3, activation="relu")(x)), "Gain"),
    # activation= functions tfmot's QuantizeAwareActivation refuses, and an Activation layer its config refuses
    "activations tfmot does not wrap": (lambda x: L.Dense(32, activation="softplus")(L.Flatten()(L.Activation("selu")(
        L.Conv2D(16, 3, activation="relu6")(L.Conv2D(8, 3, padding="same", activation="elu")(x))))), "Activation"),
}


# tfmot 0.8.1 wraps these itself (its registry knows them); the rest it refuses.
TFMOT_ACCEPTS = {"Conv2DTranspose", "UpSampling2D", "Reshape"}


def model_with(block) -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    x = block(inputs)
    if len(x.shape) > 2:
        x = L.Flatten()(x)
    return keras.Model(inputs, L.Dense(10, activation="softmax", name="probs")(x))


@pytest.mark.parametrize("case", list(LAYERS))
def test_every_layer_type_reaches_a_fully_integer_file(case, digits, test_npz):
    block, layer_class = LAYERS[case]
    model = model_with(block)
    if case not in TFMOT_ACCEPTS:  # what plain tfmot does with it today
        import tensorflow_model_optimization as tfmot

        with pytest.raises((RuntimeError, ValueError)):
            tfmot.quantization.keras.quantize_model(model)
    zoo.fit_classifier(model, digits["x"][:600], digits["y"][:600], epochs=6)  # QAT fine-tunes a trained model
    result = qat(model, (digits["x"][:600], digits["y"][:600]), epochs=1, eval_data=test_npz,
                 calib_samples=64, bench_runs=2)
    assert_every_op_integer(result.info)
    training = result.report.training
    treatment = next(t.treatment for t in training.layers if t.layer_class == layer_class)
    assert treatment.startswith(("tfquant", "tfmot"))
    # The integer file computes what the fake-quantized Keras model computes.
    assert result.report.quantized.accuracy >= training.keras_accuracy - 0.03
    assert result.report.quantized.accuracy > 0.5


def test_qat_keeps_up_with_ptq_on_digits(digits_model, train_npz, test_npz, tmp_path, capsys):
    ptq = tfquant.quantize(digits_model, train_npz, eval_data=test_npz, bench_runs=1)
    path = tmp_path / "digits.keras"
    digits_model.save(path)
    code = main(parse_args(["qat", str(path), "--train", str(train_npz), "--eval", str(test_npz), "--epochs", "2",
                            "-o", str(tmp_path / "out" / "qat.tflite"), "--json", "--strict"]))
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["training"]["kind"] == "qat" and report["training"]["epochs"] == 2
    assert report["quantized"]["fully_integer"] is True
    assert report["quantized"]["accuracy"] >= ptq.report.quantized.accuracy - 0.002
    assert 0.9 < report["training"]["keras_accuracy"] <= 1.0
    assert {layer["treatment"] for layer in report["training"]["layers"]} <= {"tfmot: default 8-bit", "input"}
    assert tfquant.evaluate(tmp_path / "out" / "qat.tflite", test_npz).accuracy == report["quantized"]["accuracy"]


def test_caller_model_is_not_trained_in_place(digits_model, train_npz):
    before = [w.copy() for w in digits_model.get_weights()]
    qat(digits_model, train_npz, epochs=1, calib_samples=32, bench_runs=1)
    assert all(np.array_equal(a, b) for a, b in zip(before, digits_model.get_weights()))


def test_keras3_model_is_rebuilt_for_tfmot(digits, tmp_path, test_npz):
    """tfmot cannot wrap Keras 3 layers; the model is rebuilt as tf_keras with the same weights."""
    from tfquant._keras import keras3
    from tfquant.rebuild import to_keras2

    k3 = keras3()
    k3.utils.set_random_seed(0)
    inputs = k3.Input((8, 8, 1), name="image")
    a = k3.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    b = k3.layers.BatchNormalization()(k3.layers.Conv2D(8, 3, padding="same")(inputs))
    # A nested Sequential model (as keras.applications' ConvNeXt has), called on two branches, and an
    # operation on two tensors (ConvNeXt's residual `inputs + x`).
    tower = k3.Sequential([k3.Input((8, 8, 8)), k3.layers.Conv2D(8, 1, activation="relu", name="tower_conv")],
                          name="tower")
    from keras.src.applications.convnext import LayerScale  # a layer of keras.applications, not of keras.layers

    x = k3.layers.GlobalAveragePooling2D()(k3.layers.Concatenate()([tower(a) + tower(b), LayerScale(0.5, 8)(a)]))
    model = k3.Model(inputs, k3.layers.Dense(10, activation="softmax")(x))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(digits["x"], digits["y"], epochs=2, verbose=0)
    rebuilt = to_keras2(model)
    np.testing.assert_allclose(rebuilt.predict(digits["x_test"], verbose=0),
                               model.predict(digits["x_test"], verbose=0), atol=1e-5)
    # tfmot wraps layers, not models: the tower's layer is inlined, once, and shared by both calls.
    assert not any(isinstance(layer, keras.Model) for layer in rebuilt.layers)
    assert [layer.name for layer in rebuilt.layers].count("tower_conv") == 1
    path = tmp_path / "k3.keras"
    model.save(path)
    result = qat(path, (digits["x"], digits["y"]), epochs=1, eval_data=test_npz, calib_samples=64, bench_runs=1)
    assert_every_op_integer(result.info)
    assert result.report.quantized.accuracy >= result.report.training.keras_accuracy - 0.03


def test_untranslatable_keras3_model_says_why(tmp_path, train_npz):
    """A subclassed Keras 3 model converts (its first call gave the signature), but it has no graph to
    rebuild as tf_keras from: a clear error."""
    from tfquant._keras import keras3

    k3 = keras3()

    class Subclassed(k3.Model):
        def __init__(self):
            super().__init__(name="subclassed")
            self.dense = k3.layers.Dense(10, activation="softmax")

        def call(self, x):
            return self.dense(k3.ops.reshape(x, (-1, 64)))

    model = Subclassed()
    model(np.zeros((1, 8, 8, 1), np.float32))
    with pytest.raises(ModelLoadError, match=r"<keras model>: expected a Keras 3 model that rebuilds as tf_keras for "
                                             r"tfquant qat .*, found Subclassed 'subclassed' is a subclassed model"):
        qat(model, train_npz, epochs=1)


def test_qat_ranges_start_where_the_float_model_puts_each_activation(digits_model, digits):
    """Not at tfmot's [-6, 6]: the inputs at [0, 1], every ReLU output at its min/max on the calibration
    samples, the logits before the softmax at theirs."""
    from tfquant.data import load_data
    from tfquant.optimize.qat import quantize_aware
    from tfquant.types import TensorSpec

    samples = load_data(digits["x"][:200], [TensorSpec("image", (None, 8, 8, 1), "float32")])
    wrapped, _ = quantize_aware(digits_model, samples=samples)
    # Layer and variable names get a "_1" when another test built the same layers in this process first.
    names = {w.name: re.sub(r"_\d+(?=/|_min|_max|$)", "", w.name.split(":")[0]) for w in wrapped.weights}
    ranges = {names[w.name]: float(np.ravel(w.numpy())[0]) for w in wrapped.weights
              if names[w.name].endswith(("activation_min", "activation_max", "layer_min", "layer_max"))}
    assert ranges["quantize_layer/quantize_layer_min"] == 0.0
    assert ranges["quantize_layer/quantize_layer_max"] == pytest.approx(float(digits["x"][:200].max()))
    hidden = next(layer for layer in digits_model.layers if isinstance(layer, keras.layers.Dense) and layer.name != "probs")
    dense = keras.Model(digits_model.inputs, hidden.output).predict(digits["x"][:200], verbose=0)
    assert ranges["quant_dense/post_activation_max"] == pytest.approx(float(dense.max()), rel=1e-5)
    logits = ranges["quant_probs/pre_activation_max"] - ranges["quant_probs/pre_activation_min"]
    assert logits != 12.0 and all(v not in (-6.0, 6.0) for v in ranges.values())


def test_qat_fine_tunes_with_the_float_models_batch_norm_statistics(digits):
    """A BatchNormalization in training mode would pull its moving statistics toward the last batches
    of a short fine-tuning (ResNet50: 13 points below PTQ after one epoch); QAT keeps them."""
    from tfquant.data import Dataset
    from tfquant.optimize.qat import quantize_aware, stripped_weights
    from tfquant.optimize.training import fit

    model = zoo.residual_cnn(seed=0)
    zoo.fit_classifier(model, digits["x"][:300], digits["y"][:300], epochs=1, seed=0)
    wrapped, _ = quantize_aware(model)
    statistics = [w for w in wrapped.weights if re.search(r"moving_(mean|variance)", w.name)]
    assert len(statistics) == 2 * sum(isinstance(layer, L.BatchNormalization) for layer in model.layers) > 0
    before = [w.numpy().copy() for w in statistics]
    # Inputs scaled 3x: batch statistics far from the moving ones, which training mode would chase.
    fit(wrapped, Dataset("x", {"image": 3 * digits["x"][:128]}, {"probs": digits["y"][:128]}), epochs=1)
    for weight, value in zip(statistics, before):
        np.testing.assert_array_equal(weight.numpy(), value)
    # The fine-tuned weights go back into a plain copy of the model, each matched by name and shape.
    copy = stripped_weights(model, wrapped)
    for layer in copy.layers:
        if isinstance(layer, L.BatchNormalization):  # gamma, beta, then the moving mean and variance
            for mine, theirs in zip(layer.get_weights()[2:], model.get_layer(layer.name).get_weights()[2:]):
                np.testing.assert_array_equal(mine, theirs)
    kernel = next(layer for layer in copy.layers if isinstance(layer, L.Conv2D)).name
    assert not np.array_equal(copy.get_layer(kernel).get_weights()[0], model.get_layer(kernel).get_weights()[0])


def test_a_tf_keras_model_with_nested_models_is_inlined_for_tfmot(digits, train_npz, test_npz):
    """tfmot wraps layers, not models: nested Sequential (with and without an Input) and functional
    models, one called twice, are called layer by layer in the outer graph, with the same function."""
    from tfquant.rebuild import inline_nested

    keras.utils.set_random_seed(0)
    tower = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(8, 3, activation="relu")], name="tower")
    inner = keras.Input((6, 6, 8))
    block = keras.Model(inner, L.Add()([inner, L.Conv2D(8, 1, activation="relu")(inner)]), name="block")
    head = keras.Sequential([L.Flatten(), L.Dense(10, activation="softmax")], name="head")
    inputs = keras.Input((8, 8, 1), name="image")
    model = keras.Model(inputs, head(block(block(tower(inputs)))))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(digits["x"], digits["y"], epochs=4, verbose=0)
    inlined = inline_nested(model)
    # the block's two calls share its layers, as they share its weights
    assert [type(layer).__name__ for layer in inlined.layers] == ["InputLayer", "Conv2D", "Conv2D", "Add", "Flatten", "Dense"]
    assert inlined.input_names == ["image"] and len(inlined.get_weights()) == len(model.get_weights())
    np.testing.assert_array_equal(inlined(digits["x"][:32]).numpy(), model(digits["x"][:32]).numpy())
    result = qat(model, train_npz, epochs=1, eval_data=test_npz, bench_runs=1)
    assert_every_op_integer(result.info)
    assert result.report.quantized.accuracy > 0.9


def test_qat_below_ptq_returns_the_ptq_file_unless_asked_not_to(digits_model, train_npz, test_npz, tmp_path):
    """Fine-tuning at a learning rate that wrecks the model: by default the PTQ file comes back and
    the report says why; with keep_best=False the worse QAT file is kept, and the report says so."""
    path = tmp_path / "digits.keras"
    digits_model.save(path)
    kept = tfquant.qat(path, train_npz, epochs=1, eval_data=test_npz, learning_rate=0.3, bench_runs=1)
    training = kept.report.training
    assert training.qat_accuracy < training.ptq_accuracy - 0.1
    assert training.kept == "ptq" and kept.report.quantized.accuracy == training.ptq_accuracy
    assert any("below plain PTQ" in w and "the PTQ file is kept" in w for w in kept.report.warnings)
    asked = tfquant.qat(path, train_npz, epochs=1, eval_data=test_npz, learning_rate=0.3, bench_runs=1,
                        keep_best=False)
    training = asked.report.training
    assert training.kept == "qat" and asked.report.quantized.accuracy == training.qat_accuracy
    assert asked.report.quantized.accuracy < training.ptq_accuracy - 0.1
    assert any("the QAT file is kept as asked (keep_best=False)" in w for w in asked.report.warnings)


def test_a_layer_with_several_outputs_is_left_unwrapped_and_trains(digits, tmp_path):
    """An LSTM with return_state returns three tensors; tfmot's wrapper handles one (it raised
    "Multiple output tensors not handled currently"). The layer is left unwrapped, calibrated after
    training like the attention layers, and the file is fully integer."""
    keras.utils.set_random_seed(0)
    rows = digits["x"][..., 0]
    inputs = keras.Input((8, 8), name="rows")
    sequence, state, cell = L.LSTM(16, return_sequences=True, return_state=True)(inputs)
    features = L.Concatenate()([L.GlobalAveragePooling1D()(sequence), state, cell])
    model = keras.Model(inputs, L.Dense(10, activation="softmax")(features))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(rows, digits["y"], epochs=6, verbose=0)
    np.savez(tmp_path / "train.npz", rows=rows, y=digits["y"])
    np.savez(tmp_path / "test.npz", rows=digits["x_test"][..., 0], y=digits["y_test"])
    result = qat(model, tmp_path / "train.npz", epochs=1, eval_data=tmp_path / "test.npz", bench_runs=1)
    assert_every_op_integer(result.info)
    treatment = next(t.treatment for t in result.report.training.layers if t.layer_class == "LSTM")
    assert treatment == "tfquant: several output tensors, not wrapped (calibrated after training)"
    assert result.report.quantized.accuracy > 0.8
    assert result.report.quantized.accuracy >= result.report.training.ptq_accuracy


def test_a_keras3_model_with_a_dict_of_outputs_fine_tunes_each_on_its_labels(digits, tmp_path):
    """Outputs named by their dict keys (not their layers), in an order a call does not return them in:
    the tf_keras rebuild keeps the dict, and fine-tuning finds each output's labels by key (it found
    none: "No loss found")."""
    from tfquant._keras import keras3

    k = keras3()
    k.utils.set_random_seed(0)
    inputs = k.Input((8, 8, 1), name="image")
    hidden = k.layers.Flatten()(k.layers.Conv2D(16, 3, activation="relu")(inputs))
    model = k.Model(inputs, {"probs": k.layers.Dense(10, activation="softmax", name="dense_a")(hidden),
                             "ink": k.layers.Dense(1, name="dense_b")(hidden)})
    ink = 10 * digits["x"].mean(axis=(1, 2, 3))[:, None]
    model.compile(optimizer=k.optimizers.Adam(3e-3), loss={"probs": "sparse_categorical_crossentropy", "ink": "mse"})
    model.fit(digits["x"], {"probs": digits["y"], "ink": ink}, epochs=4, verbose=0)
    np.savez(tmp_path / "train.npz", image=digits["x"][:600], y_probs=digits["y"][:600], y_ink=ink[:600])
    np.savez(tmp_path / "test.npz", image=digits["x_test"], y_probs=digits["y_test"],
             y_ink=10 * digits["x_test"].mean(axis=(1, 2, 3))[:, None])
    result = qat(model, tmp_path / "train.npz", epochs=1, eval_data=tmp_path / "test.npz", bench_runs=1,
                 max_rel_rmse=0.2)
    assert_every_op_integer(result.info)
    outputs = {o.name: o for o in result.report.outputs}
    assert {name: o.task for name, o in outputs.items()} == {"ink": "regression", "probs": "classification"}
    assert result.report.training.keras_accuracy > 0.9 and outputs["probs"].quantized.accuracy > 0.9
    assert outputs["ink"].quantized.r2 > 0.8


def test_qat_of_a_regression_model_below_ptq_keeps_ptq(digits, tmp_path):
    """No classifier to score: an LSTM sequence autoencoder whose PTQ file is already outside an RMSE
    budget of 3 % of σ (it is at 3.9 % with its LSTM gates computed apart, 6.1 % with them together). QAT
    and PTQ are ranked by the share of the budget their output's error against the labels uses, and a
    fine-tuning that wrecks the model gives the PTQ file back, saying so."""
    keras.utils.set_random_seed(0)
    rows = digits["x"][..., 0]
    inputs = keras.Input((8, 8), name="rows")
    x = L.LSTM(16, return_sequences=True)(L.RepeatVector(8)(L.LSTM(16)(inputs)))
    model = keras.Model(inputs, L.TimeDistributed(L.Dense(8), name="recon")(x))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    model.fit(rows, rows, epochs=10, verbose=0)
    np.savez(tmp_path / "train.npz", rows=rows, y_recon=rows)
    np.savez(tmp_path / "test.npz", rows=digits["x_test"][..., 0], y_recon=digits["x_test"][..., 0])
    with pytest.raises(tfquant.AccuracyBudgetError) as caught:
        tfquant.qat(model, tmp_path / "train.npz", epochs=1, eval_data=tmp_path / "test.npz", learning_rate=0.3,
                    bench_runs=1, max_rel_rmse=0.03)
    report = caught.value.result.report
    assert report.training.kept == "ptq"
    assert "int16x8" not in str(caught.value)  # qat has no --mode to point to
    note = next(w for w in report.warnings if "of their budget" in w)
    qat_used, ptq_used = (float(v) for v in re.search(r"use (\d+)% of their budget, plain PTQ int8's (\d+)%",
                                                       note).groups())
    assert note.endswith("the PTQ file is kept; fine-tune longer or with a smaller learning rate"), note
    assert qat_used > ptq_used > 100, note  # both outside the 3 % budget, QAT further
    recon = report.outputs[0]  # the PTQ file's label error, over what 3 % of σ off float adds in quadrature
    share = (recon.quantized.label_rmse ** 2 - recon.float.label_rmse ** 2) / (0.03 * recon.float.std) ** 2
    assert ptq_used == round(100 * share) and recon.quantized.rel_rmse > 0.03


def _user_model(digits):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    x = L.MaxPooling2D()(L.Conv2D(16, 3, activation="relu", name="conv")(inputs))
    model = keras.Model(inputs, L.Dense(10, activation="softmax", name="probs")(L.Flatten()(x)))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(digits["x"], digits["y"], epochs=2, verbose=0)
    return model


@pytest.mark.parametrize("fmt", ["h5", "saved_model"])
def test_a_users_quantization_aware_model_converts_from_its_fake_quant_ranges(fmt, digits, tmp_path):
    """A model a user trained with tfmot's QAT and saved: its wrappers are tfmot's layers, not code in the file
    (loaded in tfmot's scopes, safe mode on), and its int8 file takes the ranges the fake-quant layers learned.
    Calibrating it again had put other ranges beside theirs, which the converter refused (MAX_POOL_2D)."""
    import tensorflow_model_optimization as tfmot
    from ai_edge_litert import schema_py_generated as schema
    from tfquant.errors import RecipeError
    from tfquant.flatbuffer import builtin_of, read_model

    aware = tfmot.quantization.keras.quantize_model(_user_model(digits))
    aware.compile("adam", "sparse_categorical_crossentropy")
    aware.fit(digits["x"], digits["y"], epochs=1, verbose=0)
    path = tmp_path / ("qat.h5" if fmt == "h5" else "qat_saved")
    aware.save(path, **({} if fmt == "h5" else {"save_format": "tf"}))
    result = tfquant.quantize(path, {"image": digits["x"][:100]}, eval_data=({"image": digits["x"][100:400]},
                              digits["y"][100:400]), bench_runs=1, max_drop=0.01)
    assert_every_op_integer(result.info)
    assert result.report.outputs[0].quantized.agreement >= 0.99
    assert any("quantization-aware (tfmot) model" in note for note in result.report.export.notes)
    # The conv's int8 output is on the scale of the range its fake-quant layer learned.
    low, high = (float(w.numpy()) for w in aware.get_layer("quant_conv").weights
                 if w.name.endswith(("post_activation_min:0", "post_activation_max:0")))
    model = read_model(result.tflite)
    graph = model.subgraphs[0]
    (conv,) = [op for op in graph.operators if builtin_of(model, op) == schema.BuiltinOperator.CONV_2D]
    assert graph.tensors[int(conv.outputs[0])].quantization.scale[0] == pytest.approx((high - low) / 255, rel=0.01)
    with pytest.raises(RecipeError, match=r": expected --mode int8 with the converter's quantizer for a "
                       r"quantization-aware model \(its fake-quant layers learned int8 ranges\), found --mode int16x8$"):
        tfquant.quantize(path, {"image": digits["x"][:100]}, mode="int16x8", bench_runs=1)
    if fmt == "h5":  # training it again: refused before any training starts
        with pytest.raises(ModelLoadError, match=r"qat.h5: expected a float model for tfquant qat to train, found a "
                           r"quantization-aware model \(tfmot's fake-quant layers\): tfquant convert makes its int8"):
            qat(path, {"image": digits["x"][:64], "y": digits["y"][:64]}, epochs=1)
        with pytest.raises(ModelLoadError, match=r"expected a float model for tfquant diagnose to calibrate, found a "
                                                 r"quantization-aware model"):
            tfquant.diagnose(path, {"image": digits["x"][:64]})


def test_a_users_pruned_model_saved_with_its_wrappers_keeps_its_zeros(digits, tmp_path):
    """Saved in the middle of pruning (PruneLowMagnitude wrappers): the wrappers are stripped and the weights
    exported as they are, so the int8 file keeps the zeros (the softmax's dense weights are not centered)."""
    import tensorflow_model_optimization as tfmot
    from tfquant.optimize.weights import weight_tensors

    sparsity = tfmot.sparsity.keras
    pruned = sparsity.prune_low_magnitude(_user_model(digits), pruning_schedule=sparsity.ConstantSparsity(0.5, 0, frequency=1))
    pruned.compile("adam", "sparse_categorical_crossentropy")
    pruned.fit(digits["x"], digits["y"], epochs=1, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    pruned.save(tmp_path / "pruned.h5")
    result = tfquant.quantize(tmp_path / "pruned.h5", {"image": digits["x"][:100]}, bench_runs=1, diagnose=False)
    assert_every_op_integer(result.info)
    assert "pruning wrappers stripped (the pruned weights as they are)" in result.report.export.notes
    zeros = {w.op: float(np.mean(w.values == w.zero_point)) for w in weight_tensors(result.tflite)}
    assert set(zeros) == {"CONV_2D", "FULLY_CONNECTED"} and min(zeros.values()) >= 0.49, zeros

"""Int8Validation and Int8Checkpoint inside model.fit: the logged numbers are the saved file's numbers."""

from __future__ import annotations

import numpy as np
import pytest

import tfquant
from tfquant import zoo
from tfquant.callbacks import Int8Checkpoint, Int8Validation, UpdatePruningStep
from tfquant.errors import RecipeError
from tfquant.optimize.prune import wrap_for_pruning
from tfquant.optimize.qat import quantize_aware
from tfquant.optimize.weights import weight_tensors


def test_logged_accuracy_is_what_eval_measures_on_the_saved_file(digits, tmp_path):
    model = zoo.digits_cnn()
    best = tmp_path / "best.tflite"
    history = zoo.fit_classifier(model, digits["x"], digits["y"], epochs=3, callbacks=[
        Int8Validation(digits["x"], (digits["x_test"], digits["y_test"])), Int8Checkpoint(best)])
    logged = history.history["val_int8_accuracy"]
    assert len(logged) == 3 and len(history.history["val_int8_gap"]) == 3
    assert tfquant.evaluate(best, (digits["x_test"], digits["y_test"])).accuracy == max(logged)
    assert tfquant.inspect(best).fully_integer


@pytest.mark.parametrize("kind", ["qat", "pruning"])
def test_callbacks_work_for_wrapped_models(kind, digits_model, digits, tmp_path):
    if kind == "qat":
        model, _ = quantize_aware(digits_model)
        extra = []
    else:
        model = wrap_for_pruning(digits_model, sparsity=0.5, schedule="constant", end_step=10)
        extra = [UpdatePruningStep()]
    best = tmp_path / f"{kind}.tflite"
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(digits["x"][:300], digits["y"][:300], epochs=2, verbose=0, callbacks=extra + [
        Int8Validation(digits["x"][:100], (digits["x_test"], digits["y_test"]), every=2), Int8Checkpoint(best)])
    (logged,) = [v for v in history.history["val_int8_accuracy"]]  # every=2: one conversion in two epochs
    assert logged == tfquant.evaluate(best, (digits["x_test"], digits["y_test"])).accuracy
    assert tfquant.inspect(best).fully_integer
    if kind == "pruning":  # the pruned weights as they are: the softmax's dense weights are not centered
        zeros = {w.name: float(np.mean(w.values == w.zero_point)) for w in weight_tensors(best.read_bytes())}
        assert len(zeros) == 4 and min(zeros.values()) >= 0.49, zeros


def test_checkpoint_needs_validation(digits, tmp_path):
    model = zoo.digits_cnn()
    with pytest.raises(RecipeError, match="expected an Int8Validation callback before it"):
        zoo.fit_classifier(model, digits["x"][:64], digits["y"][:64], epochs=1, callbacks=[Int8Checkpoint(tmp_path / "x.tflite")])
    assert not (tmp_path / "x.tflite").exists()


@pytest.mark.parametrize("version", [3, 2])
def test_a_regression_model_logs_its_int8_error_and_keeps_the_best_file(version, tmp_path):
    """No classifier: the RMSE against the labels and against the float file are logged, the checkpoint
    monitors the first (lower is better), and a monitor that was never logged names what was."""
    import numpy as np

    from tfquant.harness import Runner
    from tfquant.data import load_data

    k = zoo.keras_module(version)
    k.utils.set_random_seed(0)
    table = zoo.tabular()
    inputs = k.Input((16,), name="features")
    model = k.Model(inputs, k.layers.Dense(1, name="score")(k.layers.Dense(32, activation="relu")(inputs)))
    model.compile(optimizer=k.optimizers.Adam(3e-3), loss="mse")
    validation = (table.test["features"], table.test["y"])
    best = tmp_path / "best.tflite"
    history = model.fit(table.train["features"], table.train["y"], epochs=3, verbose=0, validation_data=validation,
                        callbacks=[Int8Validation(table.train["features"][:100], validation),
                                   Int8Checkpoint(best, monitor="val_int8_rmse")])
    rmse, relative = history.history["val_int8_rmse"], history.history["val_int8_rel_rmse"]
    assert len(rmse) == len(relative) == 3 and rmse[-1] < rmse[0] and max(relative) < 0.05
    runner = Runner(best.read_bytes())
    predicted = runner.predict(load_data({"features": validation[0]}, runner.specs))["score"]
    assert float(np.sqrt(np.mean((predicted - validation[1]) ** 2))) == pytest.approx(min(rmse), rel=1e-6)
    assert abs(min(rmse) - np.sqrt(min(history.history["val_loss"]))) < 0.02  # int8 against Keras' own val_loss
    with pytest.raises(RecipeError, match=r"expected the logged metric 'val_int8_accuracy', found val_int8_rmse, "
                                          r"val_int8_rel_rmse: pass monitor= one of them"):
        model.fit(table.train["features"], table.train["y"], epochs=1, verbose=0, callbacks=[
            Int8Validation(table.train["features"][:100], validation), Int8Checkpoint(tmp_path / "none.tflite")])


def test_a_checkpoint_minimizes_an_error_of_any_output():
    assert Int8Checkpoint("a.tflite", monitor="val_int8_rmse").mode == "min"
    assert Int8Checkpoint("a.tflite", monitor="val_int8_rel_rmse_ink").mode == "min"
    assert Int8Checkpoint("a.tflite", monitor="val_int8_cosine_embedding").mode == "max"
    assert Int8Checkpoint("a.tflite").mode == "max"

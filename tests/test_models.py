"""Model loading: every accepted format, Keras 2 and Keras 3, and refusal of code."""

from __future__ import annotations

import numpy as np
import pytest

import tfquant
from tfquant.errors import ModelLoadError
from tfquant.models import load_model

from checks import assert_every_op_integer


@pytest.mark.parametrize("fmt, flavor", [("keras", "keras2"), ("h5", "keras2"), ("saved_model", "saved_model")])
def test_formats_give_the_same_signature(model_files, fmt, flavor):
    loaded = load_model(model_files[fmt])
    assert loaded.flavor == flavor
    assert loaded.inputs[0].shape == (None, 8, 8, 1)
    assert loaded.outputs[0].shape == (None, 10)


def test_keras3_file_converts_to_full_int8(digits, tmp_path, train_npz, test_npz):
    """A .keras file saved by Keras 3 (which tf_keras cannot load) takes the supported path."""
    from tfquant._keras import keras3

    k3 = keras3()
    k3.utils.set_random_seed(0)
    model = k3.Sequential([
        k3.Input((8, 8, 1)), k3.layers.Conv2D(16, 3, activation="relu"), k3.layers.Flatten(),
        k3.layers.Dense(10, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(digits["x"], digits["y"], epochs=3, verbose=0)
    path = tmp_path / "k3.keras"
    model.save(path)
    loaded = load_model(path)
    assert loaded.flavor == "keras3" and loaded.outputs[0].shape == (None, 10)
    result = tfquant.quantize(path, train_npz, eval_data=test_npz, calib_samples=100, bench_runs=2)
    assert_every_op_integer(result.info)
    assert result.report.float_file.accuracy > 0.9
    assert result.report.accuracy_drop <= 0.02


def test_lambda_in_keras_file_is_refused(tmp_path):
    from tfquant._keras import keras

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t + 1.0)(inputs))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(ModelLoadError, match="lambda.keras: expected a model without code"):
        load_model(path)
    assert load_model(path, safe_mode=False).flavor == "keras2"


def test_folder_without_saved_model(tmp_path):
    with pytest.raises(ModelLoadError, match="expected a SavedModel folder \\(with saved_model.pb\\), found a folder without"):
        load_model(tmp_path)


def test_unbuilt_model(tmp_path):
    from tfquant._keras import keras

    with pytest.raises(ModelLoadError, match="expected a built model with a known input shape"):
        load_model(keras.Sequential([keras.layers.Dense(3)]))
    with pytest.raises(ModelLoadError, match="model: expected a Keras model .* found ndarray"):
        load_model(np.zeros(3))

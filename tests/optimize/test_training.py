"""The one fine-tuning loop: each output trained by what its labels are."""

from __future__ import annotations

import numpy as np
import pytest

from tfquant._keras import keras
from tfquant.data import Dataset
from tfquant.optimize.training import fit, keras_accuracy, outputs_probabilities


def _digits_dataset(digits, labels):
    return Dataset("digits", {"x": digits["x"]}, labels)


@pytest.mark.parametrize("case", ["binary sigmoid", "logits with float class labels", "two heads", "a dict of two heads",
                                  "multi-label"])
def test_each_output_is_trained_by_what_its_labels_are(case, digits):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="x")
    hidden = keras.layers.Dense(32, activation="relu")(keras.layers.Flatten()(inputs))
    even = (digits["y"] % 2 == 0).astype(np.int64)
    if case == "binary sigmoid":
        model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="even")(hidden))
        data = _digits_dataset(digits, {"even": even})
    elif case == "logits with float class labels":
        model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(hidden))
        data = _digits_dataset(digits, {"logits": digits["y"].astype(np.float32)})
    elif case == "multi-label":
        y = digits["y"]
        tags = np.stack([y % 2 == 0, y >= 5, np.isin(y, [2, 3, 5, 7]), y % 3 == 0], axis=-1).astype(np.int64)
        model = keras.Model(inputs, keras.layers.Dense(4, activation="sigmoid", name="tags")(hidden))
        data = _digits_dataset(digits, {"tags": tags})
    elif case == "two heads":
        ink = 10 * digits["x"].mean(axis=(1, 2, 3)).astype(np.float32)[:, None]
        model = keras.Model(inputs, [keras.layers.Dense(10, activation="softmax", name="digit")(hidden),
                                     keras.layers.Dense(1, name="ink")(hidden)])
        data = _digits_dataset(digits, {"digit": digits["y"], "ink": ink})
    else:  # keys that are not the layers' names, in an order that is not sorted
        ink = 10 * digits["x"].mean(axis=(1, 2, 3)).astype(np.float32)[:, None]
        digit = keras.layers.Dense(10, activation="softmax", name="dense_b")(hidden)
        model = keras.Model(inputs, {"ink": keras.layers.Dense(1, name="dense_a")(hidden), "digit": digit})
        data = _digits_dataset(digits, {"digit": digits["y"], "ink": ink})
    probabilities = outputs_probabilities(model)
    assert sorted(probabilities) == sorted(data.labels)  # by output layer (a dict's key), in the model's order
    history = fit(model, data, epochs=5, learning_rate=3e-3, probabilities=probabilities)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    if case == "multi-label":  # each unit its own 0/1 decision, by binary cross-entropy
        assert type(model.loss).__name__ == "BinaryCrossentropy"
        decisions = model.predict(digits["x"], verbose=0) > 0.5
        assert np.mean(decisions == data.labels["tags"].astype(bool)) > 0.9
        assert keras_accuracy(model, data, probabilities) is None  # no single class to be right about
        return
    assert keras_accuracy(model, data, probabilities) > 0.9
    if case in ("two heads", "a dict of two heads"):
        predicted = model.predict(digits["x"], verbose=0)
        ink = predicted["ink"] if isinstance(predicted, dict) else predicted[1]
        ink_error = np.abs(ink - data.labels["ink"]).mean()
        assert ink_error < 0.5 * np.abs(data.labels["ink"] - data.labels["ink"].mean()).mean()

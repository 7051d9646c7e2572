"""Compile and fit a classifier for fine-tuning: the one training loop the QAT and pruning stages share."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

from .._keras import keras
from ..data import Dataset


def outputs_probabilities(model) -> bool:
    """True when the model ends in softmax/sigmoid (probabilities), False for logits."""
    last = model.layers[-1]
    while hasattr(last, "layer"):  # QuantizeWrapper, PruneLowMagnitude
        last = last.layer
    activation = getattr(last, "activation", None)
    name = getattr(activation, "__name__", "") or type(last).__name__.lower()
    return name in ("softmax", "sigmoid")


def fit(
    model,
    train: Dataset,
    *,
    epochs: int,
    batch_size: int = 32,
    learning_rate: float = 1e-4,
    validation: Optional[Dataset] = None,
    callbacks: Optional[list[Any]] = None,
    verbose: int = 0,
    probabilities: Optional[bool] = None,
):
    """Compile `model` for integer labels (Adam, sparse categorical cross-entropy) and fit it.

    `probabilities` says whether the model ends in softmax/sigmoid; pass it for wrapped models,
    whose wrappers hide the original activation. Defaults to reading it off `model`.
    """
    if probabilities is None:
        probabilities = outputs_probabilities(model)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities),
        metrics=["accuracy"],
    )
    validation_data = None if validation is None else (_inputs(validation), validation.labels)
    return model.fit(_inputs(train), train.labels, epochs=epochs, batch_size=batch_size, shuffle=True,
                     validation_data=validation_data, callbacks=callbacks or [], verbose=verbose)


@dataclass
class Start:
    """What every training stage begins with: validated inputs, the tf_keras model, the float reference."""

    loaded: Any
    calibration: Optional[Dataset]
    evaluation: Optional[Dataset]
    train: Dataset
    keras_model: Any
    float_tflite: bytes
    seconds: float


def start(model, train_data, *, stage: str, epochs: int, calibration_data, eval_data, recipe, max_drop,
          safe_mode: bool) -> Start:
    """Check the options, load and validate model and data, get a tf_keras model and its float32 file."""
    from ..convert import convert
    from ..errors import RecipeError
    from ..pipeline import check_budget, load_inputs
    from ..types import Mode, Recipe
    from .qat import keras2_model

    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise RecipeError(f"epochs: expected a whole number >= 1, found {epochs!r}")
    check_budget(max_drop, eval_data)
    started = time.perf_counter()
    loaded, calibration, evaluation, train = load_inputs(model, calibration_data, eval_data, recipe=recipe,
                                                         train_data=train_data, safe_mode=safe_mode)
    keras_model = keras2_model(loaded, stage)
    float_tflite = convert(loaded, Recipe(mode=Mode.FLOAT32))
    return Start(loaded, calibration, evaluation, train, keras_model, float_tflite, time.perf_counter() - started)


def keras_accuracy(model, data: Dataset) -> float:
    """Top-1 accuracy of the Keras model itself (what training sees, before any conversion)."""
    import numpy as np

    scores = model.predict(_inputs(data), batch_size=256, verbose=0)
    return float(np.mean(np.argmax(scores, axis=1) == data.labels))


def _inputs(data: Dataset):
    arrays = list(data.inputs.values())
    return arrays[0] if len(arrays) == 1 else dict(data.inputs)

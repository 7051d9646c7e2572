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
    validation_data = None if validation is None else (_inputs(validation), _labels(validation))
    steps = -(-len(train) // batch_size)
    return model.fit(_inputs(train), _labels(train), epochs=epochs, batch_size=batch_size, shuffle=True,
                     validation_data=validation_data, callbacks=[epoch_progress(epochs, steps), *(callbacks or [])],
                     verbose=verbose)


def epoch_progress(epochs: int, steps: int):
    """A Keras callback that shows each epoch as a step (a bar over its batches) and its loss after it."""
    from .. import console

    class EpochProgress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._shown = console.step(f"training epoch {epoch + 1}/{epochs}", total=steps)
            self._bar = self._shown.__enter__()

        def on_train_batch_end(self, batch, logs=None):
            self._bar.advance()

        def on_epoch_end(self, epoch, logs=None):
            self._shown.__exit__(None, None, None)
            logs = logs or {}
            found = ", ".join(f"{k} {v:.4f}" for k, v in logs.items() if isinstance(v, (int, float)))
            console.note(f"epoch {epoch + 1}/{epochs}: {found}")

    return EpochProgress()


@dataclass
class Start:
    """What every training stage begins with: validated inputs, the tf_keras model, the float reference."""

    prepared: Any
    keras_model: Any
    seconds: float

    @property
    def loaded(self):
        return self.prepared.loaded

    @property
    def train(self) -> Dataset:
        return self.prepared.train

    @property
    def calibration(self) -> Optional[Dataset]:
        return self.prepared.calibration

    @property
    def evaluation(self) -> Optional[Dataset]:
        return self.prepared.evaluation


def start(model, train_data, *, stage: str, calibration_data, eval_data, recipe, max_drop,
          safe_mode: bool) -> Start:
    """Load and validate model and data, get a tf_keras model and its float32 file."""
    from ..errors import RecipeError
    from ..prepare import check_budget, prepare

    check_budget(max_drop, eval_data)
    started = time.perf_counter()
    prepared = prepare(model, recipe=recipe, calibration_data=calibration_data, eval_data=eval_data,
                       train_data=train_data, safe_mode=safe_mode)
    classes = [name for name in prepared.train.labels]
    if len(prepared.loaded.outputs) != 1:
        raise RecipeError(f"{stage} fine-tunes classifiers with one output; the model has "
                          f"{len(prepared.loaded.outputs)} outputs ({', '.join(s.name for s in prepared.loaded.outputs)})")
    if not classes:
        raise RecipeError(f"{stage} needs labels 'y' in the training data")
    sample = {name: array[:16] for name, array in prepared.train.inputs.items()}
    keras_model = keras2_model(prepared.loaded, stage, samples=next(iter(sample.values())) if len(sample) == 1 else sample)
    return Start(prepared, keras_model, time.perf_counter() - started)


def keras_accuracy(model, data: Dataset) -> Optional[float]:
    """Top-1 accuracy of the Keras model itself (what training sees, before any conversion)."""
    import numpy as np

    if not data.labels:
        return None
    scores = model.predict(_inputs(data), batch_size=256, verbose=0)
    return float(np.mean(np.argmax(scores, axis=-1) == _labels(data)))


def _inputs(data: Dataset):
    arrays = list(data.inputs.values())
    return arrays[0] if len(arrays) == 1 else dict(data.inputs)


def _labels(data: Dataset):
    """Integer class labels of the one output (one-hot rows become ids)."""
    import numpy as np

    (labels,) = data.labels.values()
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = labels.argmax(axis=1)
    return np.asarray(labels).reshape(len(labels)).astype(np.int64)


def keras2_model(loaded, stage: str, samples=None):
    """The tf_keras model behind `loaded` (a Keras 3 model rebuilt, outputs checked on `samples`),
    or a clear error for what tfmot cannot wrap."""
    from ..errors import ModelLoadError

    if loaded.flavor == "keras3":
        from ..rebuild import to_keras2

        return _checked(to_keras2, loaded.keras_model, samples, f"{loaded.source}: expected a Keras 3 model that "
                        f"rebuilds as tf_keras for {stage} (tensorflow-model-optimization needs Keras 2)")
    if loaded.keras_model is None:  # a SavedModel folder: tf_keras can revive its own
        from ..models import revive_keras2

        try:
            return revive_keras2(loaded)
        except ModelLoadError as exc:
            raise ModelLoadError(f"{exc}; {stage} needs a SavedModel written by tf_keras") from None
    if not getattr(loaded.keras_model, "_is_graph_network", False) and not isinstance(loaded.keras_model, keras.Sequential):
        raise ModelLoadError(f"{loaded.source}: expected a functional or Sequential model for {stage} "
                             "(tensorflow-model-optimization rebuilds a model layer by layer from its graph), found the "
                             f"subclassed model {type(loaded.keras_model).__name__} {loaded.keras_model.name!r}: build it "
                             "with keras.Input, or quantize it without training (tfquant convert)")
    nested = [layer.name for layer in loaded.keras_model.layers if isinstance(layer, keras.Model)]
    if not nested:
        return loaded.keras_model
    from ..rebuild import inline_nested

    # tensorflow-model-optimization wraps layers, not models: the nested models' layers are called in place
    return _checked(inline_nested, loaded.keras_model, samples, f"{loaded.source}: expected a model whose nested models "
                    f"({', '.join(map(repr, nested[:3]))}) can be inlined for {stage} (tensorflow-model-optimization "
                    "wraps layers, not models)")


def _checked(make, original, samples, expected: str):
    """`make(original)`, its outputs checked against the original's on `samples`; else the error `expected`."""
    from ..errors import ModelLoadError
    from ..rebuild import RebuildError, check_outputs

    try:
        made = make(original)
        if samples is not None:
            check_outputs(original, made, samples)
        return made
    except RebuildError as exc:
        raise ModelLoadError(f"{expected}, found {exc}") from None

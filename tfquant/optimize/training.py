"""Compile and fit a classifier for fine-tuning: the one training loop the QAT and pruning stages share."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

from .._keras import keras, output_keys
from ..data import Dataset


def outputs_probabilities(model) -> dict[str, bool]:
    """Per output, by the name of the layer that makes it (a dict's key) and in the model's output order: True when
    it ends in softmax/sigmoid (probabilities), False otherwise (logits, a regression, an embedding)."""
    layers = [getattr(getattr(t, "_keras_history", None), "layer", None) for t in (model.outputs or [])]
    if not layers or None in layers:
        layers = [model.layers[-1]]
    found = {}
    for layer in layers:
        name = layer.name
        while hasattr(layer, "layer"):  # QuantizeWrapper, PruneLowMagnitude
            layer = layer.layer
        activation = getattr(layer, "activation", None)
        kind = getattr(activation, "__name__", "") or type(layer).__name__.lower()
        found[name] = kind in ("softmax", "sigmoid")
    keys = output_keys(model)  # a dict of outputs is named by its keys, as tfquant.models names it
    if keys is not None and len(keys) == len(found):
        found = dict(zip(keys, found.values()))
    return found


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
    probabilities: Optional[dict[str, bool]] = None,
):
    """Compile `model` (Adam) and fit it: an output with class labels by sparse categorical
    cross-entropy, one with multi-hot 0/1 rows by binary cross-entropy, one with other float labels
    by mean squared error, one without labels not at all.

    `probabilities` (from `outputs_probabilities`) names the outputs in the model's order and says
    which end in softmax/sigmoid; pass it for wrapped models, whose wrappers hide both. Defaults to
    reading it off `model`.
    """
    if probabilities is None:
        probabilities = outputs_probabilities(model)
    # Each output's kind, decided once from the training labels; validation targets follow it.
    units = _units(model)
    labelled = _each_output(train, probabilities)
    classes = [None if labels is None else _class_labels(labels, width) for labels, width in zip(labelled, units)]
    losses, metrics = [], []
    for probs, is_class, width, labels in zip(probabilities.values(), classes, units, labelled):
        if is_class is None:
            losses.append(None)
            metrics.append([])
        elif is_class:
            loss = keras.losses.BinaryCrossentropy if width == 1 else keras.losses.SparseCategoricalCrossentropy
            losses.append(loss(from_logits=not probs))
            metrics.append(["accuracy"])
        elif _multi_hot(labels):  # independent 0/1 decisions, one per unit
            losses.append(keras.losses.BinaryCrossentropy(from_logits=not probs))
            metrics.append([])
        else:
            losses.append(keras.losses.MeanSquaredError())
            metrics.append([])
    single = len(losses) == 1
    by_key = output_keys(model) is not None and not single  # a dict of outputs takes dicts, keyed alike
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=losses[0] if single else dict(zip(probabilities, losses)) if by_key else losses,
                  metrics=metrics[0] if single else dict(zip(probabilities, metrics)) if by_key else metrics)
    validation_data = None if validation is None else \
        (_inputs(validation), _targets(validation, probabilities, classes, by_key))
    steps = -(-len(train) // batch_size)
    return model.fit(_inputs(train), _targets(train, probabilities, classes, by_key), epochs=epochs, batch_size=batch_size,
                     shuffle=True, validation_data=validation_data,
                     callbacks=[epoch_progress(epochs, steps), *(callbacks or [])], verbose=verbose)


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
    if not prepared.train.labels:
        raise RecipeError(f"{stage} needs labels 'y' in the training data")
    sample = {name: array[:16] for name, array in prepared.train.inputs.items()}
    keras_model = keras2_model(prepared.loaded, stage, samples=next(iter(sample.values())) if len(sample) == 1 else sample)
    return Start(prepared, keras_model, time.perf_counter() - started)


def keras_accuracy(model, data: Dataset, probabilities: Optional[dict[str, bool]] = None) -> Optional[float]:
    """Top-1 accuracy of the Keras model itself (what training sees, before any conversion), on its
    first output that has class labels. `probabilities` as for `fit` (a wrapped model's layers are
    renamed), by default read off `model`."""
    import numpy as np

    probabilities = probabilities or outputs_probabilities(model)
    scores = model.predict(_inputs(data), batch_size=256, verbose=0)
    if isinstance(scores, dict):  # a dict of outputs: in the order of `probabilities`, which its keys name
        scores = [scores[name] for name in probabilities]
    scores = list(scores) if isinstance(scores, (list, tuple)) else [scores]
    for probs, labels, score in zip(probabilities.values(), _each_output(data, probabilities), scores):
        width = score.shape[-1] if score.ndim > 1 else 1
        if labels is not None and _class_labels(labels, width):
            chosen = np.argmax(score, axis=-1) if width > 1 else (score.reshape(len(score)) > (0.5 if probs else 0.0))
            return float(np.mean(chosen == _class_ids(labels)))
    return None


def _inputs(data: Dataset):
    arrays = list(data.inputs.values())
    return arrays[0] if len(arrays) == 1 else dict(data.inputs)


def _units(model) -> list[int]:
    """The last dim of each output (1 where it is open)."""
    return [int(t.shape[-1]) if t.shape.rank and t.shape[-1] is not None else 1 for t in model.outputs]


def _class_labels(labels, units: int) -> bool:
    """Integer class ids, one-hot rows, or (for an output of several units) whole numbers stored as floats."""
    import numpy as np

    labels = np.asarray(labels)
    if _multi_hot(labels):
        return False
    if labels.dtype.kind in "biu":
        return True
    if labels.ndim == 2 and labels.shape[1] > 1:
        return bool(np.isin(labels, (0, 1)).all())
    return units > 1 and labels.size > 0 and bool((labels == np.round(labels)).all()) and labels.min() >= 0


def _multi_hot(labels) -> bool:
    """0/1 rows that are not one-hot: a multi-label output's labels, fitted as they are."""
    import numpy as np

    labels = np.asarray(labels)
    return labels.ndim == 2 and labels.shape[1] > 1 and bool(np.isin(labels, (0, 1)).all()) and \
        not bool((labels.sum(axis=1) == 1).all())


def _class_ids(labels):
    import numpy as np

    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = labels.argmax(axis=1)
    return labels.reshape(len(labels)).astype(np.int64)


def _each_output(data: Dataset, probabilities: dict[str, bool]) -> list:
    """Each output's labels in the model's order, or None (a one-output model's labels, whatever their name)."""
    if len(probabilities) == 1:
        return [next(iter(data.labels.values()), None)]
    return [data.labels.get(name) for name in probabilities]


def _targets(data: Dataset, probabilities: dict[str, bool], classes: list[Optional[bool]], by_key: bool = False):
    """Each output's training targets in the model's order (zeros where an output has no labels); by
    output name for a model whose outputs are a dict."""
    import numpy as np

    found = []
    for labels, is_class in zip(_each_output(data, probabilities), classes):
        if labels is None or is_class is None:
            found.append(np.zeros((len(data), 1), np.float32))
        else:
            found.append(_class_ids(labels) if is_class else np.asarray(labels, np.float32))
    if len(found) == 1:
        return found[0]
    return dict(zip(probabilities, found)) if by_key else found


def check_trainable(loaded, stage: str) -> None:
    """A ModelLoadError for a model no training stage can take: a .tflite file holds no trainable model, and
    a quantization-aware one is trained already (`prepare.refuse_quantization_aware`)."""
    from ..errors import ModelLoadError
    from ..prepare import refuse_quantization_aware

    if loaded.flavor == "tflite":
        raise ModelLoadError(f"{loaded.source}: expected a Keras model (.keras, .h5) or SavedModel for {stage}, which "
                             "trains its layers, found a .tflite file, which holds no trainable model")
    refuse_quantization_aware(loaded, f"{stage} to train")


def keras2_model(loaded, stage: str, samples=None):
    """The tf_keras model behind `loaded` (a Keras 3 model rebuilt, outputs checked on `samples`),
    or a clear error for what tfmot cannot wrap."""
    from ..errors import ModelLoadError

    if loaded.flavor == "keras3":
        from ..rebuild import to_keras2

        return _checked(to_keras2, loaded.keras_model, samples, f"{loaded.source}: expected a Keras 3 model that "
                        f"rebuilds as tf_keras for {stage} (tensorflow-model-optimization needs Keras 2)")
    check_trainable(loaded, stage)
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

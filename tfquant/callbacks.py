"""Keras callbacks that measure the int8 file while training, on the interpreter.

    model.fit(x, y, validation_data=(x_val, y_val), callbacks=[
        tfquant.callbacks.Int8Validation(calibration_data=x[:200], validation_data=(x_val, y_val)),
        tfquant.callbacks.Int8Checkpoint("best_int8.tflite"),
    ])

`val_int8_accuracy` and `val_int8_gap` land in the Keras logs, so they appear in `History`,
in TensorBoard and to other callbacks (EarlyStopping can monitor them). They work for plain,
QAT and pruning models; tfmot's pruning callbacks are re-exported here for one import.
"""

from __future__ import annotations

import math
import re
import weakref
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ._keras import keras
from .errors import RecipeError

# The latest int8 file of each model being trained: Int8Validation writes, Int8Checkpoint reads.
_LATEST: "weakref.WeakKeyDictionary[Any, tuple[int, bytes]]" = weakref.WeakKeyDictionary()


def __getattr__(name: str):
    if name in ("UpdatePruningStep", "PruningSummaries"):
        import tensorflow_model_optimization as tfmot

        return getattr(tfmot.sparsity.keras, name)
    raise AttributeError(f"module 'tfquant.callbacks' has no attribute {name!r}")


def _files(model, calibration) -> tuple[bytes, bytes]:
    """The float32 file `model` exports to as it is now, and its full-int8 file (QAT, pruning and
    clustering wrappers handled)."""
    from .convert import convert, convert_quantization_aware
    from .export import export
    from .prepare import export_for_int8
    from .models import load_model
    from .types import Mode, Recipe

    recipe = Recipe(mode=Mode.INT8)
    # The names the data is bound by are those of the model being trained; loading strips its pruning and
    # clustering wrappers and tells a QAT one (`models`), whose weights are then exported as they are.
    loaded = load_model(model)
    if loaded.quantization_aware:
        exported = export(loaded, shapes=calibration.sample_shapes(), keep_weights=loaded.keep_weights)
        return exported.tflite, convert_quantization_aware(exported, recipe, calibration)
    exported = export_for_int8(loaded, calibration, shapes=calibration.sample_shapes(),
                               keep_weights=loaded.keep_weights)
    return exported.tflite, convert(exported, recipe, calibration=calibration)


class Int8Validation(keras.callbacks.Callback):
    """Every `every` epochs, convert the current weights to full int8 and measure the file.

    Logs `val_int8_accuracy` (top-1 of the .tflite file on the interpreter) and `val_int8_gap`
    (the Keras model's own accuracy on the same data minus the int8 file's); for a regression output
    `val_int8_rmse` (against the labels) and `val_int8_rel_rmse` (against the float file, over its
    standard deviation), for an embedding `val_int8_cosine` and `val_int8_retrieval`.

    Example:
        >>> model.fit(x, y, epochs=5, callbacks=[Int8Validation((x[:200]), (x_val, y_val))])  # doctest: +SKIP
        >>> history.history["val_int8_accuracy"]

    Args:
        calibration_data: representative inputs (see `tfquant.data.load_data`).
        validation_data: labelled data.
        every: convert every N epochs. Defaults to `1`.
        calib_samples: samples drawn for calibration. Defaults to `200`.
    """

    def __init__(self, calibration_data, validation_data, *, every: int = 1, calib_samples: int = 200):
        super().__init__()
        if not isinstance(every, int) or every < 1:
            raise RecipeError(f"every: expected a whole number >= 1, found {every!r}")
        self.calibration_data = calibration_data
        self.validation_data_source = validation_data
        self.every = every
        self.calib_samples = calib_samples

    def on_train_begin(self, logs=None):
        from .data import load_data
        from .models import load_model

        loaded = load_model(self.model)
        self._calibration = load_data(self.calibration_data, loaded.inputs, labels="ignored",
                                      name="calibration data").calibration_subset(self.calib_samples)
        self._validation = load_data(self.validation_data_source, loaded.inputs, outputs=loaded.outputs,
                                     labels="required", name="validation data")

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None):
        if (epoch + 1) % self.every:
            return
        from . import tasks
        from .harness import Runner
        from .optimize.training import keras_accuracy

        float_tflite, tflite = _files(self.model, self._calibration)
        outputs = Runner(tflite).predict(self._validation, progress=False)
        reference = Runner(float_tflite).predict(self._validation, progress=False)
        chosen, labels = tasks.choose(reference, self._validation.labels, {}, self._validation.source)
        judged = tasks.judge(outputs, chosen, labels, reference=reference)
        primary = judged.primary()
        if logs is not None and primary is not None and primary.accuracy is not None:
            logs["val_int8_accuracy"] = primary.accuracy
            keras = keras_accuracy(self.model, self._validation)
            if keras is not None:
                logs["val_int8_gap"] = keras - primary.accuracy
        if logs is not None:
            logs.update(_other_outputs(judged, several=len(judged.outputs) > 1))
        _LATEST[self.model] = (epoch, tflite)


def _other_outputs(judged, *, several: bool) -> dict[str, float]:
    """Regression and embedding outputs, each against the float file (and its labels): `val_int8_rmse`
    (against the labels) and `val_int8_rel_rmse` (against float, over its standard deviation);
    `val_int8_cosine` (mean, to float) and `val_int8_retrieval`. With several outputs, each name
    ends in `_<output>`."""
    found = {}
    for name, metrics in judged.outputs.items():
        suffix = f"_{name}" if several else ""
        values = {"rmse": metrics.label_rmse, "rel_rmse": metrics.rel_rmse} if metrics.task == "regression" else \
            {"cosine": metrics.mean_cosine, "retrieval": metrics.retrieval} if metrics.task == "embedding" else {}
        found.update({f"val_int8_{key}{suffix}": value for key, value in values.items() if value is not None})
    return found


class Int8Checkpoint(keras.callbacks.Callback):
    """Keep the best int8 .tflite file seen so far, judged by `monitor`; needs an `Int8Validation` before it.

    The file is written atomically, so an interrupted run leaves the previous best intact.

    Args:
        path: the .tflite file to write.
        monitor: a logged metric. Defaults to `"val_int8_accuracy"`.
        mode: `"max"` or `"min"`. Defaults to `"max"` (`"min"` for a `gap`, `loss` or `rmse`, also as
            `val_int8_rmse_<output>`).
    """

    def __init__(self, path, *, monitor: str = "val_int8_accuracy", mode: Optional[str] = None):
        super().__init__()
        self.path = Path(path)
        self.monitor = monitor
        lower = re.search(r"(gap|loss|rmse)(_|$)", monitor) is not None  # val_int8_rmse_<output> too
        self.mode = mode or ("min" if lower else "max")
        if self.mode not in ("min", "max"):
            raise RecipeError(f"mode: expected 'min' or 'max', found {self.mode!r}")

    def on_train_begin(self, logs=None):
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch: Optional[int] = None
        self._seen = False
        self._logged: list[str] = []  # what Int8Validation logged, where `monitor` was not among it

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None):
        from .files import write_all

        value = (logs or {}).get(self.monitor)
        latest = _LATEST.get(self.model)
        if latest is None or latest[0] != epoch:
            return  # no conversion this epoch (Int8Validation's `every`)
        if value is None:
            self._logged = [key for key in logs or {} if key.startswith("val_int8_")]
            return
        self._seen = True
        better = value < self.best if self.mode == "min" else value > self.best
        if better and not np.isnan(value):
            self.best, self.best_epoch = float(value), epoch
            write_all({self.path: latest[1]}, overwrite=True)

    def on_train_end(self, logs=None):
        if not self._seen and self._logged:
            raise RecipeError(f"Int8Checkpoint: expected the logged metric {self.monitor!r}, found "
                              f"{', '.join(self._logged)}: pass monitor= one of them (a model without a "
                              "classifier logs no accuracy)")
        if not self._seen:
            raise RecipeError(f"Int8Checkpoint: expected an Int8Validation callback before it in `callbacks`, "
                              f"logging {self.monitor!r}; found no int8 result in any epoch")

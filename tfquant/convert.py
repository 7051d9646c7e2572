"""The TFLiteConverter stage: one function, one registered configuration per mode."""

from __future__ import annotations

import re
import warnings
from typing import Callable, Iterator, Optional

import numpy as np

from . import _keras
from .data import Dataset
from .errors import ConversionError, RecipeError, problem
from .models import LoadedModel
from .types import IOType, Mode, Recipe

tf = _keras.tf

_IO_DTYPES = {IOType.INT8: tf.int8, IOType.UINT8: tf.uint8, IOType.INT16: tf.int16, IOType.FLOAT32: tf.float32}
_CONFIGURE: dict[Mode, Callable[[object, Recipe], None]] = {}


def _configures(mode: Mode):
    def wrap(func):
        _CONFIGURE[mode] = func
        return func

    return wrap


@_configures(Mode.INT8)
def _int8(converter, recipe: Recipe) -> None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    # TFLITE_BUILTINS_INT8 alone makes the converter fail on an op with no int8 kernel instead of
    # silently leaving it in float.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    _set_io(converter, recipe)


@_configures(Mode.INT16X8)
def _int16x8(converter, recipe: Recipe) -> None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    _set_io(converter, recipe)


@_configures(Mode.DYNAMIC)
def _dynamic(converter, recipe: Recipe) -> None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]


@_configures(Mode.FLOAT16)
def _float16(converter, recipe: Recipe) -> None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]


@_configures(Mode.FLOAT32)
def _float32(converter, recipe: Recipe) -> None:
    pass


def _set_io(converter, recipe: Recipe) -> None:
    if recipe.io is not IOType.FLOAT32:
        converter.inference_input_type = _IO_DTYPES[recipe.io]
        converter.inference_output_type = _IO_DTYPES[recipe.io]


def representative_dataset(model: LoadedModel, calibration: Dataset) -> Callable[[], Iterator]:
    """TFLite's representative dataset: one sample per step, inputs in the model's order."""
    arrays = list(calibration.inputs.values())
    names = list(calibration.inputs)

    def generate():
        for i in range(len(calibration)):
            sample = [a[i:i + 1].astype(np.float32) for a in arrays]
            # A SavedModel signature takes its inputs by name.
            yield dict(zip(names, sample)) if model.flavor == "saved_model" else sample

    return generate


def convert(model: LoadedModel, recipe: Recipe, calibration: Optional[Dataset] = None) -> bytes:
    """Convert `model` as `recipe` says and return the .tflite bytes.

    Example:
        >>> model = load_model("build/digits_cnn.keras")                 # doctest: +SKIP
        >>> calib = load_data("data/digits_train.npz", model.inputs).calibration_subset(200)
        >>> tflite = convert(model, Recipe(mode="int8"), calib)

    Args:
        model: from `tfquant.models.load_model`.
        recipe: mode, IO type, per-channel and denylist settings.
        calibration: the representative samples (already drawn); required for int8 and int16x8.

    Raises:
        RecipeError: a calibrating mode without calibration data.
        ConversionError: the converter refused the model; the message holds its error lines.
    """
    if recipe.needs_calibration and calibration is None:
        raise RecipeError(f"--mode {recipe.mode.value} needs calibration data (--calib)")
    converter = model.converter()
    _CONFIGURE[recipe.mode](converter, recipe)
    if recipe.needs_calibration:
        converter.representative_dataset = representative_dataset(model, calibration)
    if not recipe.per_channel:
        converter._experimental_disable_per_channel = True  # no public switch exists
    if recipe.denylist:
        raise RecipeError("denylist: selective quantization needs the calibrate-once path (tfquant.ladder)")
    with _keras.captured_stderr() as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = converter.convert()
        except Exception as exc:
            raise ConversionError(_conversion_failure(model.source, recipe, exc, log.read())) from None
    return bytes(result)


def _conversion_failure(source: str, recipe: Recipe, exc: Exception, log: str) -> str:
    text = " ".join(str(exc).split())
    errors = [m.strip() for m in re.findall(r"error: ([^\n]+)", str(exc) + "\n" + log)]
    detail = "; ".join(dict.fromkeys(errors)) if errors else text
    hint = ""
    if recipe.mode is Mode.INT8 and ("INT8" in detail or "quantiz" in detail.lower()):
        hint = " (an op has no int8 kernel: try --mode int16x8 or --mode dynamic)"
    return problem(source, f"a model TFLiteConverter can convert with --mode {recipe.mode.value}", f"{detail[:500]}{hint}")

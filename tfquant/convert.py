"""The TFLiteConverter stage.

Integer modes calibrate once: TFLiteConverter runs the representative dataset through the float
model and returns it with every activation's min/max (`calibrate`); quantizing that calibrated
model is then a fraction of a second (`quantize_calibrated`), so the fallback ladder, selective
quantization and recipe replay all reuse one calibration. This is the same pair of steps the
converter performs inside `convert()` (calibrate, then the MLIR quantizer), made explicit.
Modes without calibration (dynamic, float16, float32) use the converter directly.
"""

from __future__ import annotations

import collections
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

_NUMPY_IO = {IOType.INT8: np.int8, IOType.UINT8: np.uint8, IOType.INT16: np.int16, IOType.FLOAT32: np.float32}
_TF_IO = {IOType.INT8: tf.int8, IOType.UINT8: tf.uint8, IOType.INT16: tf.int16, IOType.FLOAT32: tf.float32}

# How often each expensive step ran in this process: "calibrate", "convert:<mode>" and the cheap
# "quantize:<mode>". Reports and tests use it to show that a ladder calibrated only once.
CALLS: collections.Counter = collections.Counter()

# Modes that the converter performs in one go, and modes quantized from a calibrated model.
_CONFIGURE: dict[Mode, Callable[[object], None]] = {}
_FROM_CALIBRATED: dict[Mode, Callable[[bytes, Recipe], bytes]] = {}


def _registers(table: dict, mode: Mode):
    def wrap(func):
        table[mode] = func
        return func

    return wrap


@_registers(_CONFIGURE, Mode.DYNAMIC)
def _dynamic(converter) -> None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]


@_registers(_CONFIGURE, Mode.FLOAT16)
def _float16(converter) -> None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]


@_registers(_CONFIGURE, Mode.FLOAT32)
def _float32(converter) -> None:
    pass


@_registers(_FROM_CALIBRATED, Mode.INT8)
def _int8(calibrated: bytes, recipe: Recipe) -> bytes:
    from tensorflow.lite.python.convert import mlir_quantize

    return mlir_quantize(
        calibrated,
        disable_per_channel=not recipe.per_channel,
        input_data_type=_TF_IO[recipe.io],
        output_data_type=_TF_IO[recipe.io],
        denylisted_nodes=list(recipe.denylist) or None,
    )


@_registers(_FROM_CALIBRATED, Mode.INT16X8)
def _int16x8(calibrated: bytes, recipe: Recipe) -> bytes:
    from tensorflow.lite.python.optimize.calibrator import Calibrator

    io = np.dtype(_NUMPY_IO[recipe.io]).num
    # The statistics are already in the model: quantize without feeding the dataset again.
    return Calibrator(calibrated)._calibrator.QuantizeModel(
        io, io, False, np.dtype(np.int16).num, np.dtype(np.int64).num, not recipe.per_channel, False
    )


def representative_dataset(model: LoadedModel, calibration: Dataset) -> Callable[[], Iterator]:
    """TFLite's representative dataset: one sample per step, inputs in the model's order."""
    names = list(calibration.inputs)

    def generate():
        for sample in calibration.samples():
            # A SavedModel signature takes its inputs by name.
            yield dict(zip(names, sample)) if model.flavor == "saved_model" else sample

    return generate


def calibrate(model: LoadedModel, calibration: Dataset) -> bytes:
    """Run the representative dataset through the float model once; return it with min/max statistics.

    Example:
        >>> calibrated = calibrate(model, calib)                        # doctest: +SKIP
        >>> int8 = quantize_calibrated(calibrated, Recipe(mode="int8"))
        >>> int16 = quantize_calibrated(calibrated, Recipe(mode="int16x8"))
    """
    converter = model.converter()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(model, calibration)
    converter._experimental_calibrate_only = True  # no public switch: the step QuantizationDebugger uses too
    CALLS["calibrate"] += 1
    return _run(model.source, Recipe(mode=Mode.INT8), converter.convert)


def quantize_calibrated(calibrated: bytes, recipe: Recipe, *, source: str = "<model>") -> bytes:
    """Quantize a calibrated model as `recipe` says (int8 or int16x8), without running any data."""
    quantize = _FROM_CALIBRATED.get(recipe.mode)
    if quantize is None:
        raise RecipeError(f"--mode {recipe.mode.value} is not quantized from calibration statistics")
    from tensorflow.lite.python.convert import deduplicate_readonly_buffers

    CALLS[f"quantize:{recipe.mode.value}"] += 1
    model = _run(source, recipe, lambda: quantize(calibrated, recipe))
    return bytes(deduplicate_readonly_buffers(model))


def convert(
    model: LoadedModel, recipe: Recipe, calibration: Optional[Dataset] = None, *, calibrated: Optional[bytes] = None
) -> bytes:
    """Convert `model` as `recipe` says and return the .tflite bytes.

    Example:
        >>> model = load_model("build/digits_cnn.keras")                 # doctest: +SKIP
        >>> calib = load_data("data/digits_train.npz", model.inputs).calibration_subset(200)
        >>> tflite = convert(model, Recipe(mode="int8"), calib)

    Args:
        model: from `tfquant.models.load_model`.
        recipe: mode, IO type, per-channel and denylist settings.
        calibration: the representative samples (already drawn); int8 and int16x8 need these
            or `calibrated`.
        calibrated: the output of `calibrate()` for this model, to skip calibrating again.

    Raises:
        RecipeError: a calibrating mode without calibration data.
        ConversionError: the converter refused the model; the message holds its error lines.
    """
    if model.quantization_aware:
        return _convert_quantization_aware(model, recipe, calibration)
    if recipe.needs_calibration:
        if calibrated is None:
            if calibration is None:
                raise RecipeError(f"--mode {recipe.mode.value} needs calibration data (--calib)")
            calibrated = calibrate(model, calibration)
        return quantize_calibrated(calibrated, recipe, source=model.source)
    converter = model.converter()
    _CONFIGURE[recipe.mode](converter)
    CALLS[f"convert:{recipe.mode.value}"] += 1
    return bytes(_run(model.source, recipe, converter.convert))


def _convert_quantization_aware(model: LoadedModel, recipe: Recipe, calibration: Optional[Dataset]) -> bytes:
    """A QAT model carries its ranges in fake-quant ops; the converter quantizes from them directly.

    The representative dataset is still given: the converter needs it for integer input and output.
    """
    if recipe.mode is not Mode.INT8 or recipe.denylist:
        raise RecipeError(f"a quantization-aware model converts to plain int8, found --mode {recipe.mode.value}")
    if calibration is None:
        raise RecipeError("a quantization-aware model needs calibration data for integer input and output")
    converter = model.converter()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(model, calibration)
    if recipe.io is not IOType.FLOAT32:
        converter.inference_input_type = _TF_IO[recipe.io]
        converter.inference_output_type = _TF_IO[recipe.io]
    CALLS["convert:qat"] += 1
    return fuse_requantize(bytes(_run(model.source, recipe, converter.convert)))


def fuse_requantize(tflite: bytes) -> bytes:
    """Replace DEQUANTIZE(int) -> QUANTIZE(int) pairs by one int -> int QUANTIZE (a requantize).

    Two fake-quant ranges in a row (an input followed by an affine layer the converter folds
    into scales, such as Rescaling or Normalization) come out of the converter as a round trip
    through float. TFLite's QUANTIZE op requantizes between integer types directly.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    codes = [flatbuffer_utils.get_builtin_code_from_operator_code(c) for c in model.operatorCodes]
    integer = {schema.TensorType.INT8, schema.TensorType.UINT8, schema.TensorType.INT16}
    changed = False
    for subgraph in model.subgraphs:
        operators = list(subgraph.operators or [])
        readers: dict[int, list] = {}
        for op in operators:
            for index in op.inputs:
                readers.setdefault(int(index), []).append(op)
        outputs = {int(i) for i in subgraph.outputs}
        for op in list(operators):
            if codes[op.opcodeIndex] != schema.BuiltinOperator.DEQUANTIZE:
                continue
            source, middle = int(op.inputs[0]), int(op.outputs[0])
            following = readers.get(middle, [])
            if (subgraph.tensors[source].type not in integer or middle in outputs or len(following) != 1
                    or codes[following[0].opcodeIndex] != schema.BuiltinOperator.QUANTIZE
                    or subgraph.tensors[int(following[0].outputs[0])].type not in integer):
                continue
            following[0].inputs = [source]
            operators.remove(op)
            changed = True
        subgraph.operators = operators
    if not changed:
        return tflite
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _run(source: str, recipe: Recipe, step: Callable[[], bytes]) -> bytes:
    """Run a converter step with its C++ log captured: shown, condensed, only when it fails."""
    with _keras.captured_stderr() as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return step()
        except Exception as exc:
            raise ConversionError(_conversion_failure(source, recipe, exc, log.read())) from None


def _conversion_failure(source: str, recipe: Recipe, exc: Exception, log: str) -> str:
    text = " ".join(str(exc).split())
    errors = [m.strip() for m in re.findall(r"error: ([^\n]+)", str(exc) + "\n" + log)]
    detail = "; ".join(dict.fromkeys(errors)) if errors else text
    return problem(source, f"a model TFLiteConverter can convert with --mode {recipe.mode.value}", detail[:500])

"""Quantize the float file: calibrate it once on the interpreter, then quantize from the calibration.

The float `.tflite` made by `tfquant.export` is the pivot. `calibrate` runs the representative
samples through it with TFLite's calibrator, which records every activation's min/max in the
file; `quantize_calibrated` turns that into an int8 (or int16x8) file with the MLIR quantizer in
a fraction of a second, so the fallback ladder, selective quantization and recipe replay all
reuse one calibration and one export. Modes without calibration (dynamic range, float16) and
quantization-aware models (whose ranges are in their fake-quant ops) go through TFLiteConverter
on the export's frozen function; float32 is the float file itself.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import numpy as np

from . import _keras
from .console import captured_stderr
from .data import Dataset
from .errors import ConversionError, RecipeError, TfquantError, one_line, problem
from .export import Exported, conversion_failure
from .types import IOType, Mode, Recipe

tf = _keras.tf
log = logging.getLogger("tfquant")

_NUMPY_IO = {IOType.INT8: np.int8, IOType.UINT8: np.uint8, IOType.INT16: np.int16, IOType.FLOAT32: np.float32}
_TF_IO = {IOType.INT8: tf.int8, IOType.UINT8: tf.uint8, IOType.INT16: tf.int16, IOType.FLOAT32: tf.float32}

# Modes the converter performs on the frozen function, and modes quantized from a calibrated file.
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

    from .int16 import for_int16x8, repair_zero_scales, with_integer_ops, without_integer_ops
    from .int16_islands import int8_islands
    from .int16_io import with_io

    # Quantized with int16 inputs and outputs, then given float32 or int8 ones (`int16_io.with_io`).
    io = np.dtype(np.int16).num
    # The statistics are already in the model: quantize without feeding the dataset again.
    prepared, stand_ins = for_int16x8(calibrated)
    bare, hidden = without_integer_ops(prepared)
    quantized = Calibrator(bare)._calibrator.QuantizeModel(
        io, io, False, np.dtype(np.int16).num, np.dtype(np.int64).num, not recipe.per_channel, False
    )
    data = int8_islands(repair_zero_scales(with_integer_ops(quantized, hidden), prepared)[0], stand_ins)
    if recipe.io is IOType.INT8:
        return with_io(data, "int8", _int8(calibrated, Recipe(mode=Mode.INT8, per_channel=recipe.per_channel)))
    return with_io(data, "float32") if recipe.io is IOType.FLOAT32 else data


def calibrate(float_tflite: bytes, calibration: Dataset, *, source: str = "<model>") -> bytes:
    """Run the representative samples through the float file once; return it with min/max statistics.

    Samples are fed by the signature's input names, each in the dtype the file takes.

    Example:
        >>> calibrated = calibrate(exported.tflite, calib)              # doctest: +SKIP
        >>> int8 = quantize_calibrated(calibrated, Recipe(mode="int8"))
        >>> int16 = quantize_calibrated(calibrated, Recipe(mode="int16x8"))
    """
    from tensorflow.lite.python.optimize.calibrator import Calibrator

    from .flatbuffer import read_model, write_model
    from .limits import floor_model_ranges

    calibrated = _run(source, "a float file the calibrator can run",
                      lambda: Calibrator(float_tflite).calibrate(calibration.samples))
    model = read_model(calibrated)
    return write_model(model) if floor_model_ranges(model) else calibrated


def quantize_calibrated(calibrated: bytes, recipe: Recipe, *, source: str = "<model>") -> bytes:
    """Quantize a calibrated file as `recipe` says (int8 or int16x8), without running any data."""
    quantize = _FROM_CALIBRATED.get(recipe.mode)
    if quantize is None:
        raise RecipeError(f"mode {recipe.mode.value} is not quantized from calibration statistics")
    from .postquantize import after_quantizer

    data = _run(source, f"a model TFLiteConverter can quantize to {recipe.mode.value}", lambda: quantize(calibrated, recipe))
    data = after_quantizer(data, int8=recipe.mode is Mode.INT8)
    if recipe.mode is Mode.INT8:  # a scale an int8 kernel cannot take would abort the interpreter: say so instead
        from .limits import refuse_unrunnable

        refuse_unrunnable(data, source, "an int8 file the interpreter's kernels take")
    return data


def deduplicated(tflite: bytes) -> bytes:
    """One buffer for identical constants (zero biases, shared shapes), one tensor for identical
    constant tensors and short names (`flatbuffer.slimmed`): the file as it is shipped."""
    from tensorflow.lite.python.convert import deduplicate_readonly_buffers

    from .flatbuffer import slimmed

    return slimmed(bytes(deduplicate_readonly_buffers(tflite)))[0]


@dataclass
class Calibration:
    """What every quantized candidate starts from: the calibrated float file (ranges chosen) and the
    statistics bias correction needs."""

    float_tflite: bytes  # the float file quantized from: the export, or the export with its mismatched joins split
    calibrated: bytes
    input_means: dict = field(default_factory=dict)
    input_moments: dict = field(default_factory=dict)  # for GPTQ weight rounding (`tfquant.rounding`)
    ranges: str = "minmax"
    samples: list = field(default_factory=list)  # the calibration samples, for LiteRT Quantizer
    rewrites: list = field(default_factory=list)  # the joins split in the float file (`tfquant.joins`)
    float_io: list = field(default_factory=list)  # inputs and outputs in float32, normalized in float (`float_io`)

    def quantize(self, recipe: Recipe, *, source: str = "<model>", final: bool = True) -> bytes:
        """The file `recipe` asks for. `final=False` (a candidate that is only measured) skips merging
        identical buffers, which changes the bytes and never the outputs."""
        if recipe.quantizer == "litert":
            from . import litert

            return litert.quantize(self.float_tflite, self.samples, recipe, source=source)
        heads = self.float_io if recipe.mode is Mode.INT8 else []
        if heads:  # kept float by the quantizer, then given their float inputs
            from .float_io import as_float

            kept = tuple(dict.fromkeys(recipe.denylist + tuple(op for head in heads for op in head.ops)))
            try:
                data = as_float(quantize_calibrated(self.calibrated, replace(recipe, denylist=kept), source=source),
                                heads)
            except ValueError as exc:
                raise ConversionError(problem(source, "a file whose float inputs and outputs can be given float32",
                                              str(exc))) from None
        else:
            data = quantize_calibrated(self.calibrated, recipe, source=source)
        if recipe.mode is Mode.INT8 and recipe.weight_scales == "mse":
            from .weights import mse_scales

            data = mse_scales(data, self.float_tflite)[0]  # before bias correction, which reads the rounded weights
        if recipe.mode in (Mode.INT8, Mode.INT16X8) and recipe.weight_rounding == "gptq" and self.input_moments:
            from .rounding import round_weights

            data = round_weights(data, self.float_tflite, self.input_moments)[0]  # on the scales chosen above
        if recipe.mode in (Mode.INT8, Mode.INT16X8) and recipe.bias_correction and self.input_means:
            from .bias import correct

            # Before deduplication: each bias has a buffer of its own to be corrected in place.
            data = correct(data, self.float_tflite, self.input_means)[0]
        return deduplicated(data) if final else data


def calibration_for(exported: Exported, calibration: Dataset, recipe: Recipe, *, source: str = "<model>",
                    headroom: Optional[set[str]] = None) -> tuple[Calibration, Recipe]:
    """Calibrate the float file once, gather the statistics and choose the activation ranges.

    The outputs named in `headroom` (all when None) get room beyond their calibrated range where
    no op bounds them (`headroom.output_headroom`), and auto tries MSE ranges for them: give it the
    regression outputs, not a logits head, whose top classes want the finer scale. Returns the
    calibration and the recipe with `ranges` resolved ("auto" -> what was chosen).
    """
    found, recipe = _calibration_for(exported, calibration, recipe, source=source, regression=headroom)
    if found.calibrated:
        from .headroom import with_headroom

        found = replace(found, calibrated=with_headroom(found.calibrated, headroom))
    return found, recipe


def _calibration_for(exported: Exported, calibration: Dataset, recipe: Recipe, *, source: str = "<model>",
                     regression: Optional[set[str]] = None) -> tuple[Calibration, Recipe]:
    from . import ranges, statistics
    from .headroom import unbounded_outputs

    if recipe.quantizer == "litert":  # it calibrates the float file itself, on the same samples
        return Calibration(exported.tflite, b"", samples=list(calibration.samples())), recipe
    float_tflite, rewrites = exported.tflite, []
    if recipe.mode in (Mode.INT8, Mode.INT16X8):
        float_tflite, rewrites = folded(float_tflite, calibration)
    heads = []
    if recipe.float_io_norm == "on" and recipe.mode is Mode.INT8:  # "auto" is resolved by the options (`spec`)
        float_tflite, heads, normalized = _float_io(float_tflite, calibration, recipe, source, regression)
        rewrites += normalized
    if recipe.equalize and not recipe.per_channel and recipe.mode is Mode.INT8:
        from .equalize import equalize

        float_tflite, equalized = _checked(float_tflite, calibration, equalize, "weights not equalized")
        rewrites += equalized
    calibrated = exported.calibrated_on(float_tflite, calibration) or calibrate(float_tflite, calibration, source=source)
    if recipe.split_joins and recipe.mode is Mode.INT8:
        float_tflite, calibrated, splits = _joins_split(float_tflite, calibrated, calibration, source)
        rewrites += splits
    # int16x8 keeps min/max ranges (its steps are 256 times finer) unless the recipe names others, and judges
    # bias correction as int8 does.
    int16 = recipe.mode is Mode.INT16X8
    integer = recipe.mode in (Mode.INT8, Mode.INT16X8)
    rounding = recipe.weight_rounding == "gptq" and integer
    kept = "minmax" if int16 and recipe.ranges == "auto" else recipe.ranges  # what auto means at int16x8
    if not (rounding or (integer and (kept != "minmax" or recipe.bias_correction))):
        return Calibration(float_tflite, calibrated, ranges="minmax", rewrites=rewrites, float_io=heads), \
            replace(recipe, ranges="minmax") if integer else recipe
    # One pass over the samples, in two halves: auto fits ranges on each half in turn and checks
    # them on the other, then checks bias correction the same way; the method is then fitted on
    # both (the same arithmetic whether auto chose it or a recipe names it, so a replayed recipe,
    # which names the method and whether the biases were corrected, gives the same bytes).
    halves = calibration.halves()
    auto = recipe.ranges == "auto"
    candidates = ("minmax",) if int16 else \
        ranges.WITH_MSE if auto and unbounded_outputs(calibrated, regression) else ranges.AUTO
    try:
        stats = [statistics.collect(calibrated, half, counts=recipe.ranges == "mse" or "mse" in candidates,
                                    moments=rounding) for half in halves]
    except (RuntimeError, ValueError) as exc:  # an interpreter that cannot keep every tensor of this graph
        log.info("calibration statistics skipped: %s", one_line(exc, 160))
        return Calibration(float_tflite, calibrated, rewrites=rewrites, float_io=heads), \
            replace(recipe, ranges="minmax")

    def quantize(candidate: bytes) -> bytes:
        """A candidate's int8 file as it is rounded (biases not corrected; buffers not merged, so that
        each bias can still be corrected in place)."""
        return Calibration(float_tflite, candidate, float_io=heads).quantize(recipe, source=source, final=False)

    def correct(quantized: bytes, fitted: statistics.Statistics) -> bytes:
        from .bias import correct as corrected

        return corrected(quantized, float_tflite, fitted.input_means)[0]

    choice = ranges.choose(float_tflite, calibrated, list(zip(stats, halves)), quantize,
                           method=recipe.ranges, candidates=candidates,
                           correct=correct if auto and recipe.bias_correction else None)
    bias = choice.bias_correction if auto else recipe.bias_correction
    merged = stats[0].merge(stats[1])
    return Calibration(float_tflite, choice.calibrated, merged.input_means if bias else {},
                       merged.input_moments if rounding else {}, ranges=choice.method, rewrites=rewrites,
                       float_io=heads), replace(recipe, ranges=choice.method, bias_correction=bias)


EQUAL_FLOAT = 1e-4  # a rewrite of the float file may move an output by this much of its largest value (rounding)


def folded(float_tflite: bytes, calibration: Dataset, *, quiet: bool = False) -> tuple[bytes, list]:
    """The float file with the ops that read only constants computed once (`constants.fold`) and the
    per-token ops after an embedding lookup computed on its table (`tables.fold`), each checked
    (`_checked`), and the rewrites made."""
    from . import constants
    from .tables import fold

    float_tflite, rewrites = _checked(float_tflite, calibration, constants.fold, "constant ops not folded",
                                      quiet=quiet)
    float_tflite, tables = _checked(float_tflite, calibration, fold, "embedding tables not folded", quiet=quiet)
    return float_tflite, rewrites + tables


def _checked(float_tflite: bytes, calibration: Dataset, rewrite: Callable[[bytes], tuple[bytes, list]],
             refused: str, *, quiet: bool = False) -> tuple[bytes, list]:
    """The float file as `rewrite` leaves it (weights equalized across layers, `tfquant.equalize`; per-token
    ops computed on their embedding tables, `tfquant.tables`), once its outputs on a few calibration samples
    are checked to be the float file's (to `EQUAL_FLOAT` of each output's largest value); else the file as
    it was, and `refused` logged with the difference. Each rewrite is noted on the terminal unless `quiet`
    (a candidate the caller may not keep)."""
    from . import console
    from .harness import Runner

    rewritten, done = rewrite(float_tflite)
    if not done:
        return float_tflite, []
    few = calibration.take(np.arange(min(8, len(calibration))))
    before = Runner(float_tflite).predict(few, progress=False)
    try:
        after = Runner(rewritten).predict(few, progress=False)
    except (TfquantError, RuntimeError, ValueError) as exc:  # a rewrite the interpreter does not run: not kept
        log.info("%s: the rewritten file does not run (%s)", refused, one_line(exc, 160))
        return float_tflite, []
    for name, values in before.items():
        scale = float(np.abs(values).max()) or 1.0
        if not np.allclose(after[name], values, rtol=0, atol=EQUAL_FLOAT * scale):
            log.info("%s: output %r moved by %.3g of its largest value", refused, name,
                     float(np.abs(after[name] - values).max()) / scale)
            return float_tflite, []
    for made in [] if quiet else done:
        console.note(made.describe())
    return rewritten, done



def _float_io(float_tflite: bytes, calibration: Dataset, recipe: Recipe, source: str,
              regression: Optional[set[str]] = None) -> tuple[bytes, list, list]:
    """The float file, the inputs and outputs to give float32 with their normalization in float, and the
    rewrites that put one around dense layers for them (`tfquant.float_io`): first the inputs, then the
    outputs, each where int8's one scale leaves one of its features fewer than 8 levels
    (`float_io.RUINED`), or an input's LOG or SQRT would read its small values as 0, and the file so quantized keeps the outputs clearly closer to float than the
    file without (`clearly_better`); else the file as it was and none."""
    from .float_folds import rescale_outputs, standardize
    from .float_io import RUINED, compressive, plan, plan_outputs
    from .harness import Runner
    from .lint import narrowest

    def ruined(arrays: dict) -> bool:  # float values, or integer ones a CAST may turn into floats
        return any(v.dtype.kind in "fiu" and narrowest(v.astype(np.float32, copy=False), threshold=RUINED) is not None
                   for v in arrays.values())

    chosen, rewrites = [], []
    inputs_of = lambda data, half: plan(data, half.inputs)  # noqa: E731 - the heads as that half sees them
    if ruined(calibration.inputs) or compressive(float_tflite):  # raw columns, or a LOG that may head an input
        candidate, standardized = _checked(float_tflite, calibration, lambda data: standardize(
            data, calibration.inputs), "inputs not standardized", quiet=True)
        heads = plan(candidate, calibration.inputs)
        if heads and clearly_better(calibration, recipe.per_channel, source, (float_tflite, lambda data, half: []),
                                    (candidate, inputs_of), "float inputs", regression):
            float_tflite, rewrites, chosen = candidate, standardized, heads
    outputs = Runner(float_tflite).predict(calibration, progress=False)
    if ruined(outputs):
        before = inputs_of if chosen else (lambda data, half: [])
        candidate, rescaled = _checked(float_tflite, calibration, lambda data: rescale_outputs(data, outputs),
                                       "outputs not rescaled", quiet=True)

        def with_outputs(data: bytes, half: Dataset) -> list:
            return before(data, half) + plan_outputs(data, Runner(data).predict(half, progress=False))

        tails = plan_outputs(candidate, outputs)
        if tails and clearly_better(calibration, recipe.per_channel, source, (float_tflite, before),
                                    (candidate, with_outputs), "float outputs", regression):
            float_tflite, rewrites, chosen = candidate, rewrites + rescaled, chosen + tails
    if chosen:
        from . import console

        for made in rewrites:
            console.note(made.describe())
    return float_tflite, chosen, rewrites


def clearly_better(calibration: Dataset, per_channel: bool, source: str, base: tuple, candidate: tuple,
                   what: str, regression: Optional[set[str]] = None, *, rmse_only: bool = False,
                   rough: bool = False) -> bool:
    """Whether the `candidate` (a float file, and a function of it and some samples giving the inputs and
    outputs to keep float) keeps the outputs clearly closer to float than `base` (`ranges.pick`), each
    calibrated on one half of the calibration samples and judged on the other (min/max ranges,
    `ranges.extreme_ranges`, with the headroom `regression` outputs get), so that values one half never
    showed (a rare value of a sparse feature, clipped) count. Both files compute the same function: the
    base's outputs are the reference. Each sample's error is `ranges.sample_errors`' (with `rmse_only`).
    With `rough`, the calibrator's own ranges, with no statistics pass and no headroom: half the time, for
    a choice that does not turn on rare values."""
    from . import statistics
    from .harness import Runner
    from .headroom import with_headroom
    from .ranges import apply_ranges, extreme_ranges, pick, sample_errors

    def calibrated(data: bytes, half: Dataset) -> bytes:
        """Min/max ranges: the calibrator's own (`rough`), or as the statistics see them, with headroom."""
        own = calibrate(data, half, source=source)
        if rough:
            return own
        return with_headroom(apply_ranges(own, extreme_ranges(statistics.collect(own, half, counts=False))),
                             regression)

    trial = Recipe(mode=Mode.INT8, per_channel=per_channel)
    halves = calibration.halves()
    errors = {}
    try:
        reference = [Runner(base[0]).predict(half, progress=False) for half in halves]
        for name, (data, planned) in (("as it was", base), ("rewritten", candidate)):
            folds = []
            for fold, half in enumerate(halves):
                ends = planned(data, half)
                quantized = Calibration(data, calibrated(data, half), float_io=ends).quantize(
                    trial, source=source, final=False)
                folds.append(sample_errors(reference[1 - fold], Runner(quantized).predict(
                    halves[1 - fold], progress=False), per_column=True, rmse_only=rmse_only))
            errors[name] = np.concatenate(folds)
    except (TfquantError, RuntimeError, ValueError) as exc:  # an interpreter that cannot keep every tensor, say
        log.info("%s not tried: %s", what, one_line(exc, 160))
        return False
    log.info("%s: mean error on %d held-out calibration samples: %s", what, len(errors["as it was"]),
             ", ".join(f"{name} {e.mean():.4g}" for name, e in errors.items()))
    return pick(errors) == "rewritten"


def _joins_split(float_tflite: bytes, calibrated: bytes, calibration: Dataset, source: str):
    """The float file with the readers of its mismatched joins split (`tfquant.joins`) and calibrated again,
    or as it was."""
    from . import console
    from .lint import range_lint
    from .joins import split_joins

    joins = [w.tensor for w in range_lint(calibrated) if w.op == "CONCATENATION"]
    if not joins:
        return float_tflite, calibrated, []
    rewritten, rewrites = split_joins(float_tflite, joins)
    if not rewrites:
        return float_tflite, calibrated, []
    for rewrite in rewrites:
        console.note(rewrite.describe())
    return rewritten, calibrate(rewritten, calibration, source=source), rewrites


def convert(exported: Exported, recipe: Recipe, *, calibrated: Optional[Calibration] = None,
            calibration: Optional[Dataset] = None, source: str = "<model>") -> bytes:
    """The file `recipe` asks for, from the export (and its calibration, for int8 and int16x8).

    Example:
        >>> exported = export(load_model("build/digits_cnn.keras"))      # doctest: +SKIP
        >>> tflite = convert(exported, Recipe(mode="int8"), calibration=calib)

    Raises:
        RecipeError: a calibrating mode without calibration data.
        ConversionError: the converter refused the model; the message holds its error lines.
    """
    if recipe.mode is Mode.FLOAT32:
        return exported.tflite
    if recipe.needs_calibration:
        if calibrated is None:
            if calibration is None:
                raise RecipeError(f"mode {recipe.mode.value} needs calibration data")
            calibrated, recipe = calibration_for(exported, calibration, recipe, source=source)
        return calibrated.quantize(recipe, source=source)
    if exported.function is None:
        from .export import TFLITE_ROUTE

        found = "a .tflite file given as the model (the converter starts that mode from a Keras model or SavedModel)" \
            if exported.route == TFLITE_ROUTE else "one converted only through its SavedModel"
        raise ConversionError(problem(source, f"a graph that can be frozen for mode {recipe.mode.value}", found))
    return exported.convert(_CONFIGURE[recipe.mode], source=source)


def convert_quantization_aware(exported: Exported, recipe: Recipe, calibration: Optional[Dataset], *,
                               source: str = "<model>") -> bytes:
    """A QAT model carries its ranges in fake-quant ops; the converter quantizes from them directly.

    The representative dataset is still given: the converter needs it for integer input and output.
    """
    if recipe.mode is not Mode.INT8 or recipe.denylist:
        raise RecipeError(f"a quantization-aware model converts to plain int8, found mode {recipe.mode.value}")
    if calibration is None:
        raise RecipeError("a quantization-aware model needs calibration data for integer input and output")
    names = [spec.name for spec in exported.inputs]

    def configure(converter) -> None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        # The frozen function has no signature: samples go in its input order.
        converter.representative_dataset = lambda: ([sample[n] for n in names] for sample in calibration.samples())
        if recipe.io is not IOType.FLOAT32:
            converter.inference_input_type = _TF_IO[recipe.io]
            converter.inference_output_type = _TF_IO[recipe.io]

    from .postquantize import fuse_requantize

    return fuse_requantize(exported.convert(configure, source=source))


def _run(source: str, expected: str, step: Callable[[], bytes]) -> bytes:
    """Run a converter step with its C++ log captured: shown, condensed, only when it fails."""
    with captured_stderr() as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return bytes(step())
        except Exception as exc:
            raise ConversionError(conversion_failure(source, expected, exc, log.read())) from None

"""The pipeline: prepare (load, validate, export) -> calibrate -> quantize (or climb the ladder) -> verify.

`quantize()` is the one entry point; the command, the callbacks and the service call it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

from . import console, ladder
from .convert import calibration_for, convert
from .data import ImageOptions
from .errors import one_line
from .float_io import FloatInput, FloatOutput, squeezed_inputs
from .diagnose import Sweep, layer_errors, ranked_by_outputs, whole_error
from .lint import data_lint, input_lint, range_lint
from .prepare import Prepared, check_budget, prepare
from .spec import ConvertSpec
from .types import Mode, Recipe
from .sizes import gzip_size, gzip_size_soon
from .verify import QuantizationResult, Reference, verify

log = logging.getLogger("tfquant")

DIAGNOSTICS_IN_REPORT = 20

__all__ = ["quantize", "QuantizationResult", "gzip_size"]


def quantize(
    model: Any,
    calibration_data: Any,
    *,
    eval_data: Any = None,
    spec: Optional[ConvertSpec] = None,
    recipe: Optional[Recipe] = None,
    images: ImageOptions = ImageOptions(),
    safe_mode: bool = True,
    progress: Optional[bool] = None,
    **options: Any,
) -> QuantizationResult:
    """Convert a Keras model to a .tflite file and measure it against the float model on the interpreter.

    Example:
        >>> import tfquant
        >>> result = tfquant.quantize("build/digits_cnn.keras", "data/digits_train.npz",
        ...                           eval_data="data/digits_test.npz", max_drop=0.01)   # doctest: +SKIP
        >>> result.report.quantized.fully_integer, result.report.accuracy_drop
        (True, 0.0)
        >>> result.save("build/digits_int8.tflite")                                        # doctest: +SKIP

    Args:
        model: a Keras 2 or 3 model, or a path to `.keras`, `.h5` or a SavedModel folder.
        calibration_data: representative inputs (see `tfquant.data.load_data`).
        eval_data: evaluation data, labels `y` or `y_<output>`; when given, the report measures
            every output with its task's metrics.
        spec: every option of the conversion (`tfquant.spec.ConvertSpec`). Defaults to the
            defaults, with `options` applied.
        recipe: a `Recipe` (e.g. replayed from a report) whose choices override the spec's.
        images: how image folders are read (size, pixel scale).
        safe_mode: refuse model files that hold code. Defaults to `True`.
        progress: progress bars. Defaults to: when stderr is a terminal.
        **options: any option of `ConvertSpec`, by name: `mode` (`"int8"`), `io`, `calib_samples`
            (200), `quantizer`, `ranges`, `bias_correction`, `fallback` (`"off"`), `max_drop`
            (a fraction: 0.01 is one point; needs `eval_data`), `max_rel_rmse` (0.05),
            `min_cosine` (0.99), `strict`, `tasks` ({output: task}), `input_shapes`,
            `diagnose`, `num_threads`, `bench_runs`. An unknown name is a `RecipeError`.

    Raises:
        ModelLoadError, DataError, RecipeError, ConversionError: bad input, before any output.
        AccuracyBudgetError: an output is outside its budget (`.result` holds the result).
        StrictModeError: the file is not fully integer (`.result` holds the result).
    """
    spec = ConvertSpec.from_options(spec, **options)
    if recipe is not None:
        spec = spec.with_recipe(recipe)
    check_budget(spec.max_drop, eval_data, fallback=spec.fallback)
    prepared = prepare(model, recipe=spec.recipe, calibration_data=calibration_data, eval_data=eval_data,
                       images=images, safe_mode=safe_mode, input_shapes=spec.input_shapes)
    return quantize_prepared(prepared, spec, progress=progress)


def quantize_prepared(prepared: Prepared, spec: ConvertSpec, *, progress: Optional[bool] = None) -> QuantizationResult:
    """Calibrate, quantize (or climb the ladder) and verify a prepared model."""
    recipe, budget, tasks, num_threads = spec.recipe, spec.budget, spec.tasks, spec.num_threads
    seconds: dict[str, float] = {}
    source = prepared.source
    gzip_size_soon(prepared.exported.tflite)  # the report's float gzip bytes, while the conversion goes on
    reference = None
    if prepared.evaluation is not None:  # first: the outputs' tasks, and a classifier without a budget stops here
        reference = Reference.measure(prepared.exported.tflite, prepared.evaluation, chosen=tasks,
                                      num_threads=num_threads, progress=progress)
        if spec.fallback == "auto":
            ladder.check_classifier_budget(reference, budget)
    if prepared.loaded.quantization_aware:
        return _from_fake_quant(prepared, spec, reference, progress)
    started = time.perf_counter()
    calibrated = None
    if recipe.needs_calibration:
        with console.step(f"calibrating on {len(prepared.calibration)} samples"):
            calibrated, recipe = calibration_for(prepared.exported, prepared.calibration, recipe, source=source,
                                                 headroom=_regression_outputs(prepared, reference, tasks))
    seconds["calibrate"] = time.perf_counter() - started

    diagnostics, lint = [], []
    # What in the data misleads int8's input ranges, first: where a budget is missed, it is named first.
    float_io = [] if calibrated is None or recipe.mode is not Mode.INT8 else calibrated.float_io
    taken_as_float = {end.name for end in float_io if isinstance(end, FloatInput)}
    narrow_inputs = []
    if recipe.mode is Mode.INT8:
        kept = {name: values for name, values in prepared.calibration.inputs.items() if name not in taken_as_float}
        narrow_inputs = data_lint(prepared.calibration, prepared.evaluation) + input_lint(kept) + (
            squeezed_inputs(prepared.exported.tflite, kept, quantizer=recipe.quantizer)
            if recipe.float_io_norm != "on" or recipe.quantizer == "litert" else [])
    for message in narrow_inputs:
        console.warn(message)
    if spec.diagnose and calibrated is not None and calibrated.calibrated and recipe.mode is Mode.INT8:
        started = time.perf_counter()
        diagnostics, lint = _diagnose(calibrated, prepared.evaluation or prepared.calibration, recipe,
                                      parallel=spec.parallel)
        for warning in lint:
            console.warn(warning.message)
        seconds["diagnose"] = time.perf_counter() - started

    started = time.perf_counter()
    climbed, outputs, notes = None, None, []
    if spec.fallback == "auto":
        climbed = ladder.climb(
            prepared, recipe, calibrated, reference, budget=budget, suspect_tensors=ladder.suspects(lint, diagnostics),
            num_threads=num_threads, io_pinned=spec.io is not None, parallel=spec.parallel,
            on_candidate=lambda c: console.note(
                f"candidate {c.name:<24} " + ("" if c.accuracy is None else f"accuracy {c.accuracy:.4f}  drop {c.drop:+.4f}  ")
                + (f"refused by the converter: {c.refused}" if c.refused else "accepted" if c.accepted else "over budget")),
        )
        changed = ladder.io_change(recipe, climbed.chosen.recipe)
        if changed:
            console.warn(changed)
            notes.append(changed)
        recipe, tflite, outputs = climbed.chosen.recipe, climbed.tflite, climbed.outputs
    else:
        with console.step(f"quantizing to {recipe.mode.value}"):
            tflite = convert(prepared.exported, recipe, calibrated=calibrated, source=source)
    # An IO change, said on the terminal and in the report, where the file chosen is int8 (not a ladder's int16x8).
    io_notes = [end.describe() for end in float_io] if recipe.mode is Mode.INT8 else []
    for message in io_notes:
        console.warn(message)
    gzip_size_soon(tflite)  # while it is evaluated
    seconds["convert"] = time.perf_counter() - started

    rank_on_miss = None
    # A missed budget names where the error starts: the data first (`narrow_inputs`), else the op that costs
    # the outputs most, measured then (the lint's findings have been measured already).
    if spec.fallback != "auto" and diagnostics and not lint and not narrow_inputs and recipe.mode is Mode.INT8 \
            and recipe.quantizer == "converter":
        def rank_on_miss():
            data = prepared.evaluation or prepared.calibration
            with console.step("measuring what each suspect op does to the outputs"):
                sweep = Sweep.of(calibrated, recipe, data)
                ranked = ranked_by_outputs(sweep, diagnostics, lint, parallel=spec.parallel)
                return ranked[:DIAGNOSTICS_IN_REPORT], whole_error(sweep)

    return verify(prepared, recipe, tflite, seconds=seconds, budget=budget, reference=reference,
                  quantized_outputs=outputs, tasks_chosen=tasks, strict=spec.strict, allow_float=spec.fallback == "auto",
                  num_threads=num_threads, bench_runs=spec.bench_runs, progress=progress,
                  spec=spec.with_recipe(recipe).replace(fallback="off"),
                  rewrites=[] if calibrated is None else [r.describe() for r in calibrated.rewrites],
                  warnings=narrow_inputs + io_notes + [w.message for w in lint] + notes, narrow_inputs=narrow_inputs,
                  rank_on_miss=rank_on_miss,
                  float_outputs={end.name for end in float_io if isinstance(end, FloatOutput)} if io_notes else set(),
                  extra={"diagnostics": diagnostics[:DIAGNOSTICS_IN_REPORT], "range_lint": lint,
                         "ladder": [] if climbed is None else climbed.candidates,
                         "chosen": None if climbed is None else climbed.candidates.index(climbed.chosen)})


def _from_fake_quant(prepared: Prepared, spec: ConvertSpec, reference, progress) -> QuantizationResult:
    """A quantization-aware model: the converter makes its int8 file from the ranges its fake-quant layers
    learned (calibrating it again would put other ranges beside theirs). Nothing here chooses ranges,
    corrects biases or climbs a ladder; a budget is checked as for any file."""
    from .convert import convert_quantization_aware

    recipe = spec.recipe  # int8 by the converter: `prepare` refused any other for this model
    if spec.fallback == "auto":
        console.warn("a quantization-aware model has one int8 file, from its fake-quant ranges: --fallback auto "
                     "has no other to try")
    started = time.perf_counter()
    with console.step("quantizing to int8 from the model's fake-quant ranges"):
        tflite = convert_quantization_aware(prepared.exported, recipe, prepared.calibration, source=prepared.source)
    seconds = {"convert": time.perf_counter() - started}
    return verify(prepared, recipe, tflite, seconds=seconds, budget=spec.budget, reference=reference,
                  tasks_chosen=spec.tasks, strict=spec.strict, allow_float=False, num_threads=spec.num_threads,
                  bench_runs=spec.bench_runs, progress=progress, spec=spec.replace(fallback="off"))


def _regression_outputs(prepared: Prepared, reference: Optional[Reference], chosen: dict[str, str]) -> set[str]:
    """The outputs whose int8 range gets headroom: regression outputs, as the evaluation data shows
    them; without it, every output no `--task` names otherwise."""
    if reference is not None:
        return {name for name, task in reference.tasks.items() if task == "regression"}
    chosen = chosen or {}
    return {spec.name for spec in prepared.exported.outputs if chosen.get(spec.name, "regression") == "regression"}


def _diagnose(calibrated, data, recipe: Recipe, *, parallel: int = 1) -> tuple[list, list]:
    """Per-tensor int8 errors and the range lint of a calibrated file. When the lint finds something, the
    suspects are ranked by the error each one alone puts on the outputs (`diagnose.output_sensitivity`)."""
    diagnostics = []
    with console.step("ranking tensors by int8 error and linting their ranges"):
        try:
            diagnostics = layer_errors(calibrated.calibrated, data, per_channel=recipe.per_channel)
        except (RuntimeError, ValueError) as exc:  # the debugger's interpreter cannot run every graph
            log.info("per-tensor diagnostics skipped: %s", one_line(exc, 160))
        lint = range_lint(calibrated.calibrated)
    in_float = {op for end in calibrated.float_io for op in end.ops}  # heads and tails in float: no int8 to judge
    diagnostics = [d for d in diagnostics if d.tensor not in in_float]
    lint = [w for w in lint if w.tensor not in in_float]
    if lint and diagnostics:
        with console.step("measuring what each suspect op does to the outputs"):
            diagnostics = ranked_by_outputs(Sweep.of(calibrated, recipe, data), diagnostics, lint, parallel=parallel)
    return diagnostics, lint

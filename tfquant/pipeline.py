"""The pipeline: prepare (load, validate, export) -> calibrate -> quantize (or climb the ladder) -> verify.

`quantize()` is the one entry point; the command, the callbacks and the service call it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

from . import ladder
from .convert import calibration_for, convert
from .data import ImageOptions
from .diagnose import layer_errors, range_lint
from .errors import RecipeError
from .prepare import Prepared, check_budget, parse_shapes, prepare
from .tasks import parse_tasks
from .types import Budget, Mode, Recipe
from .verify import QuantizationResult, Reference, gzip_size, verify

log = logging.getLogger("tfquant")

FALLBACKS = ("off", "auto")
DIAGNOSTICS_IN_REPORT = 20

__all__ = ["quantize", "QuantizationResult", "gzip_size"]


def quantize(
    model: Any,
    calibration_data: Any,
    *,
    mode: str | Mode = "int8",
    io: Optional[str] = None,
    eval_data: Any = None,
    max_drop: Optional[float] = None,
    max_rel_rmse: float = 0.05,
    min_cosine: float = 0.99,
    fallback: str = "off",
    strict: bool = False,
    calib_samples: int = 200,
    recipe: Optional[Recipe] = None,
    tasks: Optional[dict[str, str]] = None,
    input_shapes: Optional[dict[str, tuple]] = None,
    diagnose: bool = True,
    num_threads: Optional[int] = None,
    bench_runs: int = 30,
    images: ImageOptions = ImageOptions(),
    safe_mode: bool = True,
    progress: Optional[bool] = None,
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
        mode: `int8`, `int16x8`, `dynamic`, `float16` or `float32`. Defaults to `"int8"`.
        io: dtype of the file's float inputs and outputs (integer inputs such as token ids stay
            integer). Defaults to the mode's own (int8 for int8).
        eval_data: evaluation data, labels `y` or `y_<output>`; when given, the report measures
            every output with its task's metrics.
        max_drop: largest accepted accuracy drop of a classification output (and retrieval
            drop of an embedding), as a fraction (0.01 = one point); needs `eval_data`. With it,
            regression and embedding outputs are held to `max_rel_rmse` and `min_cosine`.
            Defaults to no limit.
        max_rel_rmse: regression RMSE against the float file, as a fraction of the float
            output's standard deviation. Defaults to `0.05`.
        min_cosine: embeddings' mean cosine to the float file's. Defaults to `0.99`.
        fallback: `"auto"` climbs the ladder (int8, int8 with the worst ops in float, int16x8,
            dynamic, float16, float32) until every output is within budget; needs `eval_data`
            and `max_drop`. Defaults to `"off"`.
        strict: raise when any op other than the IO adapters is float, in any mode. (int8 and
            int16x8 always raise, naming each float op's layer, unless the ladder chose float
            ops.) Defaults to `False`.
        calib_samples: samples drawn for the representative dataset. Defaults to `200`.
        recipe: a full `Recipe` (e.g. replayed from JSON); overrides mode, io and calib_samples.
        tasks: per output name, `"classification"`, `"regression"` or `"embedding"`. Defaults
            to the task detected from the float file's outputs.
        input_shapes: per input name, the shape of one sample, for dims the model leaves open
            (a sequence length). Defaults to the data's shapes.
        diagnose: add per-tensor errors and the range lint to the report (int8). Defaults to `True`.
        num_threads: interpreter threads for evaluation and latency. Defaults to every core.
        bench_runs: timed invokes per file for the report's latency. Defaults to `30`.
        safe_mode: refuse model files that hold code. Defaults to `True`.
        progress: progress bars. Defaults to: when stderr is a terminal.

    Raises:
        ModelLoadError, DataError, RecipeError, ConversionError: bad input, before any output.
        AccuracyBudgetError: an output is outside its budget (`.result` holds the result).
        StrictModeError: the file is not fully integer (`.result` holds the result).
    """
    if fallback not in FALLBACKS:
        raise RecipeError(f"fallback: unknown value {fallback!r}; expected one of: {', '.join(FALLBACKS)}")
    if recipe is None:
        recipe = Recipe(mode=mode, io=io, calib_samples=calib_samples)
    check_budget(max_drop, eval_data)
    budget = Budget(max_drop=max_drop, max_rel_rmse=max_rel_rmse, min_cosine=min_cosine)
    if fallback == "auto" and max_drop is None:
        raise RecipeError("fallback 'auto' needs max_drop: the budget the ladder climbs to")
    chosen_tasks = parse_tasks(tasks)
    prepared = prepare(model, recipe=recipe, calibration_data=calibration_data, eval_data=eval_data, images=images,
                       safe_mode=safe_mode, input_shapes=parse_shapes(input_shapes))
    return quantize_prepared(prepared, recipe, budget=budget, fallback=fallback, strict=strict, tasks=chosen_tasks,
                             diagnose=diagnose, num_threads=num_threads, bench_runs=bench_runs, progress=progress)


def quantize_prepared(prepared: Prepared, recipe: Recipe, *, budget: Budget, fallback: str = "off",
                      strict: bool = False, tasks: Optional[dict[str, str]] = None, diagnose: bool = True,
                      num_threads: Optional[int] = None, bench_runs: int = 30,
                      progress: Optional[bool] = None) -> QuantizationResult:
    """Calibrate, quantize (or climb the ladder) and verify a prepared model."""
    if fallback == "auto" and recipe.quantizer != "converter":
        raise RecipeError(f"fallback 'auto' climbs with the converter quantizer (it keeps single ops float), "
                          f"found quantizer {recipe.quantizer}")
    seconds: dict[str, float] = {}
    source = prepared.source
    started = time.perf_counter()
    calibrated = None
    if recipe.needs_calibration:
        log.info("calibrating on %d samples", len(prepared.calibration))
        calibrated, recipe = calibration_for(prepared.exported, prepared.calibration, recipe, source=source)
    seconds["calibrate"] = time.perf_counter() - started

    diagnostics, lint = [], []
    if diagnose and calibrated is not None and calibrated.calibrated and recipe.mode is Mode.INT8:
        started = time.perf_counter()
        try:
            diagnostics = layer_errors(calibrated.calibrated, prepared.evaluation or prepared.calibration,
                                       per_channel=recipe.per_channel)
        except (RuntimeError, ValueError) as exc:  # the debugger's interpreter cannot run every graph
            log.info("per-tensor diagnostics skipped: %s", " ".join(str(exc).split())[:160])
        lint = range_lint(calibrated.calibrated)
        for warning in lint:
            log.warning("%s", warning.message)
        seconds["diagnose"] = time.perf_counter() - started

    started = time.perf_counter()
    reference, climbed, outputs = None, None, None
    if fallback == "auto":
        reference = Reference.measure(prepared.exported.tflite, prepared.evaluation, chosen=tasks,
                                      num_threads=num_threads, progress=False)
        climbed = ladder.climb(
            prepared, recipe, calibrated, reference, budget=budget, suspect_tensors=ladder.suspects(lint, diagnostics),
            num_threads=num_threads,
            on_candidate=lambda c: log.info("candidate %-24s %s  %s", c.name,
                                            "" if c.accuracy is None else f"accuracy {c.accuracy:.4f}  drop {c.drop:+.4f}",
                                            "accepted" if c.accepted else "over budget"),
        )
        recipe, tflite, outputs = climbed.chosen.recipe, climbed.tflite, climbed.outputs
    else:
        log.info("quantizing to %s", recipe.mode.value)
        tflite = convert(prepared.exported, recipe, calibrated=calibrated, source=source)
    seconds["convert"] = time.perf_counter() - started

    return verify(prepared, recipe, tflite, seconds=seconds, budget=budget, reference=reference,
                  quantized_outputs=outputs, tasks_chosen=tasks, strict=strict, allow_float=fallback == "auto",
                  num_threads=num_threads, bench_runs=bench_runs, progress=progress,
                  warnings=[w.message for w in lint],
                  extra={"diagnostics": diagnostics[:DIAGNOSTICS_IN_REPORT], "range_lint": lint,
                         "ladder": [] if climbed is None else climbed.candidates,
                         "chosen": None if climbed is None else climbed.candidates.index(climbed.chosen)})

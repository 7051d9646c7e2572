"""The pipeline: load -> calibrate and convert -> verify on the interpreter -> report.

`quantize()` is the one entry point; the command, the callbacks and the service call it.
"""

from __future__ import annotations

import gzip
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional


from . import harness, ladder
from ._version import __version__
from .convert import calibrate, convert, quantize_calibrated
from .data import Dataset, ImageOptions, load_data
from .diagnose import layer_errors, range_lint
from .errors import AccuracyBudgetError, RecipeError, StrictModeError
from .inspect import inspect
from .models import LoadedModel, load_model
from .report import write_report_files
from .types import Agreement, FileSummary, Mode, ModelInfo, Recipe, Report

log = logging.getLogger("tfquant")

FALLBACKS = ("off", "auto")
DIAGNOSTICS_IN_REPORT = 20
GZIP_LEVEL = 9


def gzip_size(data: bytes) -> int:
    """Bytes after gzip -9: what an app store download or an OTA update actually costs."""
    return len(gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0))


@dataclass(frozen=True)
class QuantizationResult:
    """The converted file, the float reference file and the report that proves the former."""

    tflite: bytes
    float_tflite: bytes
    report: Report
    info: ModelInfo

    def save(self, path: str | Path, *, overwrite: bool = False, reports: bool = False,
             extra: Optional[dict[Path, bytes]] = None) -> Path:
        """Write the .tflite file atomically; with `reports=True` also `report.json`, `.md` and `.html` beside it.

        Example:
            >>> result.save("build/digits_int8.tflite", overwrite=True)   # doctest: +SKIP
        """
        path = Path(path)
        files = {path: self.tflite}
        if reports:
            files.update(write_report_files(self.report, path.parent))
        files.update(extra or {})
        from .files import write_all

        write_all(files, overwrite=overwrite)
        return path


def quantize(
    model: Any,
    calibration_data: Any,
    *,
    mode: str | Mode = "int8",
    io: Optional[str] = None,
    eval_data: Any = None,
    max_drop: Optional[float] = None,
    fallback: str = "off",
    strict: bool = False,
    calib_samples: int = 200,
    recipe: Optional[Recipe] = None,
    diagnose: bool = True,
    num_threads: Optional[int] = None,
    bench_runs: int = 30,
    images: ImageOptions = ImageOptions(),
    safe_mode: bool = True,
    progress: Optional[bool] = None,
) -> "QuantizationResult":
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
        io: dtype of the file's inputs and outputs. Defaults to the mode's own (int8 for int8).
        eval_data: labelled data; when given, the report holds both files' accuracy and agreement.
        max_drop: largest accepted accuracy drop, as a fraction (0.01 = one point); needs
            `eval_data`. Defaults to no limit.
        fallback: `"auto"` climbs the ladder (int8, int8 with the worst ops in float, int16x8,
            dynamic, float16, float32) until the drop is within `max_drop`; needs `eval_data`
            and `max_drop`. Defaults to `"off"`.
        strict: raise when any op other than the IO adapters is float. Defaults to `False`.
        calib_samples: samples drawn for the representative dataset. Defaults to `200`.
        recipe: a full `Recipe` (e.g. replayed from JSON); overrides mode, io and calib_samples.
        diagnose: add per-tensor errors and the range lint to the report (int8). Defaults to `True`.
        num_threads: interpreter threads for evaluation and latency. Defaults to every core.
        bench_runs: timed invokes per file for the report's latency. Defaults to `30`.
        safe_mode: refuse model files that hold code. Defaults to `True`.
        progress: progress bars. Defaults to: when stderr is a terminal.

    Raises:
        ModelLoadError, DataError, RecipeError, ConversionError: bad input, before any output.
        AccuracyBudgetError: the drop exceeds `max_drop` (`.result` holds the result).
        StrictModeError: `strict` and the file is not fully integer (`.result` holds the result).
    """
    if fallback not in FALLBACKS:
        raise RecipeError(f"unknown fallback {fallback!r}; expected one of: {', '.join(FALLBACKS)}")
    if recipe is None:
        recipe = Recipe(mode=mode, io=io, calib_samples=calib_samples)
    check_budget(max_drop, eval_data)
    if fallback == "auto" and max_drop is None:
        raise RecipeError("fallback 'auto' needs max_drop (--max-drop): the budget the ladder climbs to")
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    loaded, calibration, evaluation = load_inputs(model, calibration_data, eval_data, recipe=recipe, images=images,
                                                  safe_mode=safe_mode)
    seconds["load"] = time.perf_counter() - started

    log.info("converting %s to float32 (reference) and %s", loaded.source, recipe.mode.value)
    started = time.perf_counter()
    float_tflite = convert(loaded, Recipe(mode=Mode.FLOAT32))
    seconds["convert_float"] = time.perf_counter() - started
    started = time.perf_counter()
    calibrated = calibrate(loaded, calibration) if recipe.needs_calibration else None
    seconds["calibrate"] = time.perf_counter() - started

    diagnostics, lint = [], []
    if diagnose and calibrated is not None and recipe.mode is Mode.INT8:
        started = time.perf_counter()
        diagnostics = layer_errors(calibrated, evaluation or calibration, per_channel=recipe.per_channel)
        lint = range_lint(calibrated)
        for warning in lint:
            log.warning("%s", warning.message)
        seconds["diagnose"] = time.perf_counter() - started

    started = time.perf_counter()
    ladder_result, known_scores = None, None
    if fallback == "auto":
        float_scores = harness.Runner(float_tflite, num_threads=num_threads).predict(evaluation, progress=False)
        float_accuracy = harness.metrics(float_scores, evaluation.labels, 0.0).accuracy
        ladder_result = ladder.climb(
            loaded, recipe, calibrated, float_tflite, evaluation, float_accuracy=float_accuracy, max_drop=max_drop,
            suspect_tensors=ladder.suspects(lint, diagnostics),
            num_threads=num_threads,
            on_candidate=lambda c: log.info("candidate %-24s accuracy %.4f  drop %+.4f  %s", c.name, c.accuracy, c.drop,
                                            "accepted" if c.accepted else "over budget"),
        )
        recipe, tflite = ladder_result.chosen.recipe, ladder_result.tflite
        known_scores = {"float": float_scores, "quantized": ladder_result.scores}
    elif calibrated is not None:
        tflite = quantize_calibrated(calibrated, recipe, source=loaded.source)
    else:
        tflite = convert(loaded, recipe)
    seconds["convert"] = time.perf_counter() - started

    return verify(loaded, recipe, tflite, float_tflite, calibration, evaluation, seconds=seconds,
                  max_drop=max_drop, strict=strict, num_threads=num_threads, bench_runs=bench_runs,
                  progress=progress, warnings=[w.message for w in lint], scores=known_scores,
                  extra={"diagnostics": diagnostics[:DIAGNOSTICS_IN_REPORT], "range_lint": lint,
                         "ladder": [] if ladder_result is None else ladder_result.candidates,
                         "chosen": None if ladder_result is None else ladder_result.candidates.index(ladder_result.chosen)})


def check_budget(max_drop: Optional[float], eval_data: Any) -> None:
    """`max_drop` is a fraction in [0, 1] and comes with labelled data to measure the drop on."""
    if max_drop is not None and (not isinstance(max_drop, (int, float)) or not 0 <= max_drop <= 1):
        raise RecipeError(f"max_drop: expected a fraction between 0 and 1 (0.01 = one point), found {max_drop!r}")
    if max_drop is not None and eval_data is None:
        raise RecipeError("max_drop needs eval_data (--eval): the drop is measured on labelled data")


def load_inputs(
    model: Any, calibration_data: Any, eval_data: Any, *, recipe: Recipe, images: ImageOptions = ImageOptions(),
    safe_mode: bool = True, train_data: Any = None,
) -> tuple[LoadedModel, Optional[Dataset], Optional[Dataset]] | tuple[LoadedModel, Optional[Dataset], Optional[Dataset], Dataset]:
    """Load the model and validate every data source against it, before any conversion or training.

    Returns `(model, calibration subset, evaluation)`, and the training data fourth when `train_data` is given.
    """
    loaded = load_model(model, safe_mode=safe_mode)
    train = None
    if train_data is not None:
        train = load_data(train_data, loaded.inputs, num_classes=loaded.num_classes, labels="required",
                          images=images, name="training data")
    calibration = None
    if recipe.needs_calibration:
        if calibration_data is None and train is None:
            raise RecipeError(f"--mode {recipe.mode.value} needs calibration data (--calib)")
        source = train if calibration_data is None else calibration_data
        calibration = load_data(source, loaded.inputs, labels="ignored", images=images, name="calibration data")
        calibration = calibration.calibration_subset(recipe.calib_samples)
    evaluation = None
    if eval_data is not None:
        evaluation = load_data(eval_data, loaded.inputs, num_classes=loaded.num_classes, labels="required",
                               images=images, name="eval data")
    if train_data is not None:
        return loaded, calibration, evaluation, train
    return loaded, calibration, evaluation


def verify(
    loaded: LoadedModel,
    recipe: Recipe,
    tflite: bytes,
    float_tflite: bytes,
    calibration: Optional[Dataset],
    evaluation: Optional[Dataset],
    *,
    seconds: dict[str, float],
    max_drop: Optional[float] = None,
    strict: bool = False,
    num_threads: Optional[int] = None,
    bench_runs: int = 30,
    progress: Optional[bool] = None,
    warnings: Optional[list[str]] = None,
    extra: Optional[dict[str, Any]] = None,
    scores: Optional[dict[str, Any]] = None,
) -> QuantizationResult:
    """Measure a converted file next to its float reference on the interpreter and build the report.

    `scores` holds class scores already measured on `evaluation` ("float", "quantized"), so that
    the same file is not run over the same data twice.
    """
    threads = num_threads or harness.default_threads()
    info = inspect(tflite)
    float_info = inspect(float_tflite)
    notes = list(warnings or [])
    if recipe.mode is Mode.INT8 and not info.fully_integer:
        notes.append(f"not fully integer: float ops {', '.join(info.float_ops)}")

    accuracy = {}
    agreement = None
    drop = None
    if evaluation is not None:
        started = time.perf_counter()
        scores = dict(scores or {})
        for key, data in (("float", float_tflite), ("quantized", tflite)):
            if key not in scores:
                scores[key] = harness.Runner(data, num_threads=threads).predict(evaluation, progress=progress)
            accuracy[key] = harness.metrics(scores[key], evaluation.labels, 0.0)
        agreement = Agreement(top1=harness.agreement(scores["float"], scores["quantized"]), samples=len(evaluation))
        drop = accuracy["float"].accuracy - accuracy["quantized"].accuracy
        seconds["evaluate"] = time.perf_counter() - started
        if agreement.top1 < 0.9:
            notes.append(f"top-1 agreement with the float file is only {agreement.top1:.3f}: "
                         "run `tfquant diagnose` to find the layers that lose accuracy")

    started = time.perf_counter()
    float_bench, quant_bench = harness.benchmark(float_tflite, tflite, runs=bench_runs, warmup=3, num_threads=threads)
    seconds["benchmark"] = time.perf_counter() - started

    def summary(data: bytes, file_info: ModelInfo, key: str) -> FileSummary:
        metrics = accuracy.get(key)
        return FileSummary(
            tflite_bytes=len(data), gzip_bytes=gzip_size(data), fully_integer=file_info.fully_integer,
            float_ops=file_info.float_ops, op_counts=file_info.op_counts(),
            accuracy=None if metrics is None else metrics.accuracy,
            top5_accuracy=None if metrics is None else metrics.top5_accuracy,
        )

    report = Report(
        model=loaded.source,
        recipe=recipe,
        float_file=summary(float_tflite, float_info, "float"),
        quantized=summary(tflite, info, "quantized"),
        latency_ms={"float": float_bench.inference_ms, "quantized": quant_bench.inference_ms},
        runtime=quant_bench.runtime,
        calibration_samples=0 if calibration is None else len(calibration),
        eval_samples=None if evaluation is None else len(evaluation),
        accuracy_drop=None if drop is None else round(drop, 6),
        max_drop=max_drop,
        agreement=agreement,
        warnings=notes,
        seconds={k: round(v, 3) for k, v in seconds.items()},
        tfquant_version=__version__,
        **(extra or {}),
    )
    result = QuantizationResult(tflite=tflite, float_tflite=float_tflite, report=report, info=info)
    if strict and not info.fully_integer:
        raise StrictModeError(
            f"{loaded.source}: expected a fully integer file (--strict), found float ops {', '.join(info.float_ops)}",
            result,
        )
    if max_drop is not None and drop is not None and drop > max_drop + 1e-9:
        raise AccuracyBudgetError(
            f"{loaded.source}: expected an accuracy drop of at most {max_drop:.4f} (--max-drop), found "
            f"{drop:.4f} (float {accuracy['float'].accuracy:.4f}, {recipe.mode.value} {accuracy['quantized'].accuracy:.4f})",
            result,
        )
    return result

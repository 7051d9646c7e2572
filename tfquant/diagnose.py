"""Find where int8 loses accuracy: per-tensor quantization error and a lint of mismatched ranges.

Both work on the calibrated model from `convert.calibrate`, so they cost no extra calibration.
Per-tensor errors come from TensorFlow's QuantizationDebugger (a debug model with NumericVerify
ops that compare every quantized tensor with its float twin); the range lint reads the min/max
that calibration recorded for the inputs of ops that put several tensors on one int8 scale.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Optional

from .console import captured_stderr
from .data import Dataset
from .errors import RecipeError
from .lint import DEFAULT_RANGE_RATIO, range_lint
from .types import LayerError, RangeWarning, Record

log = logging.getLogger("tfquant")

DEFAULT_DEBUG_SAMPLES = 64


def layer_errors(calibrated: bytes, data: Dataset, *, samples: int = DEFAULT_DEBUG_SAMPLES,
                 per_channel: bool = True) -> list[LayerError]:
    """Per-tensor error of full int8 against float on `samples` inputs, worst (by RMSE/scale) first.

    RMSE/scale near 0.29 (= 1/sqrt(12)) is plain rounding noise; well above 1 means the tensor's
    values are lost, not just rounded.
    """
    from . import _keras
    from tensorflow.lite.python.convert import mlir_quantize

    from .harness import Runner
    from .postquantize import after_quantizer

    tf = _keras.tf
    subset = data.calibration_subset(samples)
    names = [port.name for port in Runner(calibrated, num_threads=1).inputs]  # the debugger feeds by position
    with captured_stderr(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        debug_model = after_quantizer(mlir_quantize(calibrated, disable_per_channel=not per_channel,
                                                    enable_numeric_verify=True), int8=True)
        debugger = tf.lite.experimental.QuantizationDebugger(
            quant_debug_model_content=debug_model,
            debug_dataset=lambda: ([sample[n] for n in names] for sample in subset.samples()),
            debug_options=tf.lite.experimental.QuantizationDebugOptions(),
        )
        debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    dump.seek(0)
    rows, undefined = [], []
    for row in csv.DictReader(dump):
        scale = float(row["scale"])
        mse = float(row["mean_squared_error"])
        if not math.isfinite(mse):  # the float op on the rounded input is not finite (LOG of a zero)
            undefined.append(row["tensor_name"])
            continue
        rows.append(LayerError(
            tensor=row["tensor_name"], op=row["op_name"],
            rmse_per_scale=math.sqrt(mse) / scale if scale else float("inf"),
            mean_error=float(row["mean_error"]), max_abs_error=float(row["max_abs_error"]), scale=scale,
        ))
    if undefined:
        log.info("no per-tensor error for %s: the float op run on its int8 input is not finite there",
                 ", ".join(undefined))
    return sorted(rows, key=lambda r: -r.rmse_per_scale)


SENSITIVITY_CANDIDATES = 10  # ops whose effect on the outputs is measured: the lint's, then the worst by RMSE/scale


@dataclass(frozen=True)
class Sweep:
    """What measuring ops alone in int8 needs: the calibration, the samples, their float outputs, every op.
    Built once (`Sweep.of`) for the ops measured alone and the whole int8 file, on the same samples."""

    calibration: object
    recipe: object
    subset: Dataset
    reference: dict
    ops: tuple[str, ...]

    @classmethod
    def of(cls, calibration, recipe, data: Dataset, samples: int = DEFAULT_DEBUG_SAMPLES) -> "Sweep":
        from .harness import Runner

        subset = data.calibration_subset(samples)
        reference = Runner(calibration.float_tflite).predict(subset, progress=False)
        return cls(calibration, recipe, subset, reference, tuple(_op_outputs(calibration.calibrated)))


def output_sensitivity(sweep: Sweep, candidates: list[str], *, parallel: int = 1) -> dict[str, float]:
    """Per candidate op (by its output tensor's name), the outputs' error against float when that op alone
    is int8 and every other op float: the error it propagates to what the model answers.

    A tensor can have a large error in units of its own scale and cost the outputs nothing (a MEAN
    of a near-constant feature), or a small one and cost everything (a concatenation whose shared
    scale erases one input). Measured on the sweep's samples, one quantization per candidate, each
    independent of the others: `parallel` > 1 measures them that many at a time (`tfquant.fanout`),
    with the same numbers.
    """
    from .fanout import fan_out

    names = [name for name in dict.fromkeys(candidates) if name in sweep.ops]
    return dict(zip(names, fan_out(_alone_error, sweep, names, parallel=parallel)))


def whole_error(sweep: Sweep) -> float:
    """The outputs' mean error against float with every op int8, on the sweep's samples: what the ops alone
    in int8 add up to."""
    return _error_with(sweep, ())


def _alone_error(sweep: Sweep, name: str) -> float:
    """The outputs' mean error when op `name` alone is int8."""
    return _error_with(sweep, tuple(n for n in sweep.ops if n != name))


def _error_with(sweep: Sweep, denylist: tuple[str, ...]) -> float:
    """The outputs' mean error with the ops in `denylist` float and every other op int8."""
    from dataclasses import replace

    from .harness import Runner
    from .ranges import sample_errors

    quantized = sweep.calibration.quantize(replace(sweep.recipe, denylist=denylist), final=False)
    return float(sample_errors(sweep.reference, Runner(quantized).predict(sweep.subset, progress=False)).mean())


def ranked_by_outputs(sweep: Sweep, errors: list[LayerError], lint: list[RangeWarning] = (), *,
                      parallel: int = 1) -> list[LayerError]:
    """`errors` with the sensitivity sweep's candidates (`sensitivity_candidates`, with the calibrated file's
    `amplified_inputs`) measured alone in int8, ranked by what each does to the outputs (`rank_by_outputs`)."""
    candidates = sensitivity_candidates(errors, lint, amplified_inputs(sweep.calibration.calibrated))
    return rank_by_outputs(errors, output_sensitivity(sweep, candidates, parallel=parallel), lint)


def rank_by_outputs(errors: list[LayerError], sensitivity: dict[str, float],
                    lint: list[RangeWarning] = ()) -> list[LayerError]:
    """The per-tensor errors with their output error filled in, the ops that hurt the outputs most first.

    Ops whose output errors are equal (to 1e-4) are ordered with the lint's first: when an op's
    shared scale erases one of its inputs, the op that reads its output alone in int8 fails the
    same way, and the cause is the one the lint names."""
    from dataclasses import replace

    flagged = {w.tensor for w in lint}
    ranked = [replace(e, output_error=sensitivity.get(e.tensor)) for e in errors]
    return sorted(ranked, key=lambda e: (e.output_error is None, -round(e.output_error or 0.0, 4),
                                         e.tensor not in flagged, -e.rmse_per_scale))


def sensitivity_candidates(errors: list[LayerError], lint: list[RangeWarning], amplified: list[str] = ()) -> list[str]:
    """The ops the sweep measures: the lint's, those whose output an op amplifies (`amplified_inputs`), then the
    worst by RMSE/scale, `SENSITIVITY_CANDIDATES` of them beyond the first two kinds."""
    first = list(dict.fromkeys([w.tensor for w in lint] + list(amplified)))
    return list(dict.fromkeys(first + [e.tensor for e in errors]))[:SENSITIVITY_CANDIDATES + len(first)]


# Ops whose output grows fast as their input nears 0 (by the operand index they read it at): int8's one
# scale for that input leaves small values a few steps or none, and the op multiplies what the rounding did.
AMPLIFIERS = ("RSQRT", 0), ("SQRT", 0), ("LOG", 0), ("DIV", 1)


def amplified_inputs(tflite: bytes) -> list[str]:
    """The output tensor names of the ops whose output an amplifier reads (a LayerNormalization's
    variance before its RSQRT, a divisor): a small error of its own there can be a large one at the outputs,
    which a ranking by RMSE/scale does not show."""
    from ai_edge_litert import schema_py_generated as schema

    from .flatbuffer import builtin_codes, text

    operands = {getattr(schema.BuiltinOperator, name): at for name, at in AMPLIFIERS}
    model = schema.Model.GetRootAs(tflite, 0)
    codes = builtin_codes(model)
    graph = model.Subgraphs(0)
    made = {}  # tensor index -> whether an op (not a constant or an input) writes it
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        for k in range(op.OutputsLength()):
            made[op.Outputs(k)] = True
    found = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        at = operands.get(codes[op.OpcodeIndex()])
        if at is not None and at < op.InputsLength() and made.get(op.Inputs(at)):
            found.append(text(graph.Tensors(op.Inputs(at)).Name()))
    return found


def _op_outputs(tflite: bytes) -> list[str]:
    """The output tensor name of every op of the main graph, the names denylists speak of."""
    from ai_edge_litert import schema_py_generated as schema

    from .flatbuffer import text

    graph = schema.Model.GetRootAs(tflite, 0).Subgraphs(0)
    names = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if op.OutputsLength():
            names.append(text(graph.Tensors(op.Outputs(0)).Name()))
    return names


def summary(errors: list[LayerError], top: Optional[int] = 10) -> str:
    """The worst tensors as a fixed-width table: their error at the outputs (when measured), then their own."""
    lines = [f"{'outputs':>8}  {'rmse/scale':>10}  {'max|err|':>9}  {'op':16} tensor"]
    for e in errors[:top]:
        at_outputs = "" if e.output_error is None else f"{e.output_error:.4f}"
        lines.append(f"{at_outputs:>8}  {e.rmse_per_scale:10.3f}  {e.max_abs_error:9.4g}  {e.op:16} {e.tensor}")
    return "\n".join(lines)


@dataclass(frozen=True)
class Diagnosis(Record):
    """What `tfquant diagnose` finds: per-tensor errors (worst first) and range-lint warnings."""

    model: str
    errors: list[LayerError]
    range_lint: list[RangeWarning]
    float_accuracy: Optional[float] = None
    int8_accuracy: Optional[float] = None
    # The outputs' mean error with every op int8, measured as each op's `output_error` alone is: where no op
    # alone comes near it, the error is spread over the ops.
    int8_output_error: Optional[float] = None


def diagnose(
    model: Any,
    calibration_data: Any,
    *,
    eval_data: Any = None,
    calib_samples: int = 200,
    samples: int = DEFAULT_DEBUG_SAMPLES,
    threshold: float = DEFAULT_RANGE_RATIO,
    safe_mode: bool = True,
    split_joins: bool = True,
    parallel: int = 1,
) -> Diagnosis:
    """Calibrate `model` once, then rank its tensors by int8 error and lint its ranges.

    Example:
        >>> found = tfquant.diagnose("model.keras", "calib.npz", eval_data="test.npz")   # doctest: +SKIP
        >>> found.errors[0].tensor, [w.message for w in found.range_lint]

    Args:
        model: a Keras model or a path (see `tfquant.quantize`).
        calibration_data: representative inputs.
        eval_data: when given, the debug samples come from it and both files' accuracy is measured.
        calib_samples: samples for calibration. Defaults to `200`.
        samples: samples the debugger runs. Defaults to `64`.
        threshold: range ratio above which the lint warns. Defaults to `16`.
        split_joins: look at the file `convert` makes, its mismatched joins split (`tfquant.joins`);
            `False` looks at the model's own joins. Defaults to `True`.
        parallel: measure the per-op sensitivity sweep this many ops at a time (`tfquant.fanout`);
            the numbers are the serial ones. Defaults to `1`.
    """
    from .convert import calibration_for
    from .prepare import prepare, refuse_quantization_aware
    from .types import Mode, Recipe
    from .verify import Reference

    if not threshold > 1:
        raise RecipeError(f"threshold: expected a range ratio above 1, found {threshold!r}")
    recipe = Recipe(mode=Mode.INT8, calib_samples=calib_samples, split_joins=split_joins)
    prepared = prepare(model, recipe=recipe, calibration_data=calibration_data, eval_data=eval_data, safe_mode=safe_mode)
    refuse_quantization_aware(prepared.loaded, "tfquant diagnose to calibrate")
    calibrated, recipe = calibration_for(prepared.exported, prepared.calibration, recipe, source=prepared.source)
    data = prepared.evaluation or prepared.calibration
    errors = layer_errors(calibrated.calibrated, data, samples=samples)
    lint = range_lint(calibrated.calibrated, threshold=threshold)
    sweep = Sweep.of(calibrated, recipe, data, samples)
    errors = ranked_by_outputs(sweep, errors, lint, parallel=parallel)
    accuracies = [None, None]
    if prepared.evaluation is not None:
        from .harness import Runner

        reference = Reference.measure(prepared.exported.tflite, prepared.evaluation)
        int8 = calibrated.quantize(recipe, source=prepared.source)
        judged = reference.judge(Runner(int8).predict(prepared.evaluation))
        accuracies = [reference.score(reference.metrics), reference.score(judged)]
    return Diagnosis(model=prepared.source, errors=errors, range_lint=lint,
                     float_accuracy=accuracies[0], int8_accuracy=accuracies[1],
                     int8_output_error=whole_error(sweep))

"""The last stage of every pipeline: measure a quantized file next to its float reference, on the interpreter.

One place measures: every output of both files with its task's metrics (`tfquant.tasks`), the
budget, the op census, sizes and latency. PTQ, the ladder, QAT and pruning all end here, and the
report is built here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from . import harness, tasks, timing
from ._version import __version__
from .data import Dataset
from .errors import AccuracyBudgetError, StrictModeError, called
from .inspect import explain_float_ops, float_ops_message, inspect
from .lint import extrapolated, output_lint, quiet, quiet_samples
from .prepare import Prepared
from .report import write_report_files
from .sizes import gzip_size, larger_than_float
from .types import (Agreement, Budget, ExportInfo, FileSummary, IOTensor, Mode, ModelInfo, OutputReport, Recipe,
                    Report)

log = logging.getLogger("tfquant")
# A missed budget whose worst op alone in int8 costs the outputs less than this share of what every op in int8
# costs is spread over the ops (`_where_it_starts`): errors of independent ops add in squares, so keeping that
# op float would leave at least 0.87 of the error.
SPREAD = 0.5
REPORT_BENCH_SECONDS = 3.0  # the report's latency: more runs until the medians are known within +-5 %, or this




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
        from .files import write_all

        path = Path(path)
        files = {path: self.tflite}
        if reports:
            files.update(write_report_files(self.report, path.parent))
        files.update(extra or {})
        write_all(files, overwrite=overwrite)
        return path


@dataclass
class Reference:
    """The float file on the evaluation data: its outputs, each output's task and labels, its metrics."""

    outputs: dict[str, np.ndarray]
    tasks: dict[str, str]
    labels: dict[str, np.ndarray]
    metrics: tasks.Judged
    seconds: float

    @classmethod
    def measure(cls, float_tflite: bytes, evaluation: Dataset, *, chosen: Optional[dict[str, str]] = None,
                num_threads: Optional[int] = None, progress: Optional[bool] = None) -> "Reference":
        started = time.perf_counter()
        outputs = harness.Runner(float_tflite, num_threads=num_threads).predict(evaluation, progress=progress,
                                                                               label="the float32 file")
        found, labels = tasks.choose(outputs, evaluation.labels, chosen or {}, evaluation.source)
        return cls(outputs, found, labels, tasks.judge(outputs, found, labels), time.perf_counter() - started)

    def judge(self, outputs: dict[str, np.ndarray]) -> tasks.Judged:
        """The metrics of another file's outputs on the same data, compared with these."""
        return tasks.judge(outputs, self.tasks, self.labels, reference=self.outputs)

    def violations(self, judged: tasks.Judged, budget: Budget, *, retrained: bool = False) -> list[str]:
        return [v for name, m in judged.outputs.items()
                for v in tasks.violations(self.metrics.outputs[name], m, budget, retrained=retrained)]

    def score(self, judged: tasks.Judged) -> Optional[float]:
        """The primary classification accuracy (or agreement) of a file, for tables and charts."""
        primary = judged.primary()
        if primary is None:
            return None
        return primary.accuracy if primary.accuracy is not None else primary.agreement

    def budget_used(self, judged: tasks.Judged, budget: Budget, *, labels: bool = False) -> Optional[float]:
        """For a file without a classification output: the largest share of its budget an output's
        distance from float uses (a regression's RMSE over `max_rel_rmse`, an embedding's 1 - cosine
        over 1 - `min_cosine`); lower is closer. With `labels`, a regression output with labels is
        measured by its error against them (`tasks.label_budget_used`), as a retrained file is judged.
        None when a classification output decides instead."""
        if judged.primary() is not None:
            return None
        used = []
        for name, m in judged.outputs.items():
            on_labels = tasks.label_budget_used(self.metrics.outputs[name], m, budget) if labels else None
            if on_labels is not None:
                used.append(on_labels)
            elif m.rel_rmse is not None:
                used.append(m.rel_rmse / budget.max_rel_rmse)
            elif m.mean_cosine is not None:
                used.append((1 - m.mean_cosine) / max(1 - budget.min_cosine, 1e-12))
        return max(used) if used else None


def constant_output(name: str, values: np.ndarray) -> Optional[str]:
    """A warning when the float file gives one answer whatever the sample: a model that does not use
    its input (untrained, collapsed, or fed data scaled unlike its training data). Its int8 agreement
    and error then measure rounding between near ties, not the model."""
    if len(values) < 2 or values.dtype.kind != "f" or not np.isfinite(values).all():
        return None
    columns = values.reshape(len(values), -1).astype(np.float64)
    spread = np.ptp(columns, axis=0)
    if np.any(spread > 1e-5 * np.abs(columns).max(axis=0)):  # some value moves with the sample
        return None
    return (f"output {name!r}: the float file gives the same values for all {len(values)} evaluation samples "
            f"(they differ by at most {float(spread.max()):.2g}): the model does not use its input (untrained, "
            "collapsed, or fed data scaled unlike its training data), or the samples are all alike; agreement and "
            "error figures then compare rounding, not the model")


def near_ties(values: np.ndarray, step: float) -> Optional[tuple[int, int]]:
    """How many of a classifier's float predictions (a sample's, or each position's of a sequence) have
    their top two scores within `step` (the int8 file's output step) of each other, and of how many: int8
    rounding alone can swap those classes."""
    if values.ndim < 2 or values.shape[-1] < 2 or values.dtype.kind != "f":
        return None
    top = np.sort(values.reshape(-1, values.shape[-1]).astype(np.float64), axis=-1)[:, -2:]
    return int(np.sum(top[:, 1] - top[:, 0] < step)), len(top)


COLLAPSED = 0.01  # a regression output whose float σ is below this share of its labels' does not follow them


def ignores_labels(name: str, values: np.ndarray, labels: Optional[np.ndarray]) -> Optional[str]:
    """A warning when a regression output's float values barely vary next to its labels: a model that
    does not follow them (collapsed: a CNN regression of targets with σ 8.6 gave 11.02 ± 0.0036 for every
    digit). Its int8 error, relative to that σ, is then large (3.6 σ there) and says nothing of the model."""
    if labels is None or labels.size != values.size or values.dtype.kind != "f":
        return None
    spread, wanted = float(np.std(values)), float(np.std(labels.astype(np.float64)))
    if not wanted > 0 or spread >= COLLAPSED * wanted:
        return None
    return (f"output {name!r}: the float file's values barely vary (σ {spread:.3g} against the labels' {wanted:.3g}): "
            "the model does not follow its labels (untrained, collapsed, or fed data scaled unlike its training "
            "data); error figures relative to the float output's σ then compare rounding, not the model")


def verify(
    prepared: Prepared,
    recipe: Recipe,
    tflite: bytes,
    *,
    seconds: dict[str, float],
    budget: Budget = Budget(),
    reference: Optional[Reference] = None,
    quantized_outputs: Optional[dict[str, np.ndarray]] = None,
    tasks_chosen: Optional[dict[str, str]] = None,
    strict: bool = False,
    allow_float: bool = False,
    num_threads: Optional[int] = None,
    bench_runs: int = 30,
    progress: Optional[bool] = None,
    warnings: Optional[list[str]] = None,
    extra: Optional[dict[str, Any]] = None,
    spec: Any = None,
    rewrites: Optional[list[str]] = None,
    narrow_inputs: Optional[list[str]] = None,
    retrained: bool = False,
    rank_on_miss: Optional[Callable[[], tuple[list, float]]] = None,
    float_outputs: Optional[set[str]] = None,
) -> QuantizationResult:
    """Measure `tflite` next to the float file on the interpreter, build the report, apply the gates.

    A file in an integer mode that is not fully integer fails (`StrictModeError`, naming each
    float op's layer and why) unless `allow_float` (the ladder chose float islands); `strict`
    holds every mode to it. Outputs outside `budget` fail with `AccuracyBudgetError`, which names
    where the error starts: an input `lint.input_lint` found (`narrow_inputs`), else the op whose
    int8 output strays furthest, or, with `rank_on_miss` (the diagnostics ranked by what each op alone
    in int8 does to the outputs, measured only when a budget is missed, and the error of every op in
    int8 on the same samples), the op that costs the outputs most, or that no op alone costs much. A
    `retrained` file (QAT, pruning, clustering) has its regression and embedding outputs held to the
    labels where there are labels (`tasks.violations`). `float_outputs` (by name) are given float32
    with their per-column ops in float (`tfquant.float_io`): no one int8 scale to lint.
    """
    float_tflite = prepared.exported.tflite
    threads = num_threads or harness.default_threads()
    info, float_info = inspect(tflite), inspect(float_tflite)
    notes = list(warnings or [])
    layer_names = _layer_names(prepared.loaded.keras_model)
    integer_mode = recipe.mode in (Mode.INT8, Mode.INT16X8)
    float_ops = explain_float_ops(info, layer_names, integer_mode=integer_mode, mode=recipe.mode.value,
                                  denylist=recipe.denylist, quantizer=recipe.quantizer) if not info.fully_integer else []
    allow_float = allow_float or bool(recipe.denylist)  # float islands the recipe asks for

    judged = None
    outputs_report: list[OutputReport] = []
    violations: list[str] = []
    causes = list(narrow_inputs or [])  # what a budget failure names as where the error starts
    regression_missed = False  # a converted regression output outside its int8 budget: int16 activations may help
    converting = spec is None or spec.command == "convert"  # the commands with a mode to choose
    calibrated_outputs = None
    evaluation = prepared.evaluation
    if evaluation is not None:
        started = time.perf_counter()
        if reference is None:
            reference = Reference.measure(float_tflite, evaluation, chosen=tasks_chosen, num_threads=threads,
                                          progress=progress)
        if quantized_outputs is None:
            quantized_outputs = harness.Runner(tflite, num_threads=threads).predict(
                evaluation, progress=progress, label=f"the {recipe.mode.value} file")
        judged = reference.judge(quantized_outputs)
        runner = harness.Runner(tflite, num_threads=1)
        ports = {p.name: p for p in runner.outputs}
        dtypes = {name: port.dtype.name for name, port in ports.items()}
        constant = {name: message for name, values in reference.outputs.items()
                    if (message := constant_output(name, values))}
        for name, metrics in judged.outputs.items():
            per_output = reference.violations(tasks.Judged({name: metrics}), budget, retrained=retrained)
            violations += per_output
            outputs_report.append(OutputReport(name=name, task=metrics.task, dtype=dtypes.get(name, "?"),
                                               float=reference.metrics.outputs[name], quantized=metrics,
                                               within_budget=not per_output))
            narrow = None if metrics.task != "regression" or recipe.mode is not Mode.INT8 or \
                name in (float_outputs or ()) else \
                output_lint(name, reference.outputs[name], quantized_outputs[name])
            if narrow is not None:
                notes.append(narrow)
            regression_missed = regression_missed or bool(per_output and metrics.task == "regression"
                                                          and recipe.mode is Mode.INT8 and converting)
            flat = None if metrics.task != "regression" or name in constant else \
                ignores_labels(name, reference.outputs[name], reference.labels.get(name))
            if flat is not None:
                notes.append(flat)
                if per_output:
                    causes.insert(0, flat)
            if per_output and metrics.task == "regression" and prepared.calibration is not None:
                if calibrated_outputs is None:  # what the calibration samples give, once, for a missed budget
                    calibrated_outputs = harness.Runner(float_tflite, num_threads=threads).predict(
                        prepared.calibration, progress=False)
                unseen = extrapolated(name, calibrated_outputs[name], reference.outputs[name], quantized_outputs[name])
                if unseen is not None:
                    notes.append(unseen)
                    causes.append(unseen)
        notes += list(constant.values())
        seconds["evaluate"] = time.perf_counter() - started + reference.seconds
        primary = judged.primary()
        quiet_notes = [] if primary is None or primary.name in constant else \
            _quiet_inputs(runner.inputs, evaluation, tasks.changed_decisions(quantized_outputs[primary.name],
                                                                             reference.outputs[primary.name]))
        notes += quiet_notes
        causes[:0] = quiet_notes
        if primary is not None and primary.agreement is not None and primary.agreement < 0.9 and \
                primary.name not in constant:
            port = ports.get(primary.name)
            ties = None if port is None or not port.quantized else \
                near_ties(reference.outputs[primary.name], port.scale)
            if ties is not None and ties[0] >= round((1.0 - primary.agreement) * ties[1]):
                unit = "samples" if reference.outputs[primary.name].ndim == 2 else "predictions"
                notes.append(f"top-1 agreement with the float file is only {primary.agreement:.3f}, and on {ties[0]} "
                             f"of {ties[1]} {unit} the float file's top two scores lie within one int8 step "
                             f"({port.scale:.3g}) of each other: their class is rounding's to choose "
                             f"({'the quiet inputs above' if quiet_notes else 'an untrained or collapsed model, or data unlike its training data'}), "
                             "not a layer's loss")
            else:
                notes.append(f"top-1 agreement with the float file is only {primary.agreement:.3f}: "
                             "run `tfquant diagnose` to find the layers that lose accuracy")

    elif prepared.calibration is not None and integer_mode:  # no evaluation data: the calibration samples say
        notes += _quiet_calibration(tflite, float_tflite, prepared.calibration, tasks_chosen, threads)

    started = time.perf_counter()
    float_bench, quant_bench = timing.benchmark(float_tflite, tflite, runs=bench_runs, warmup=3, num_threads=threads,
                                                 max_seconds=REPORT_BENCH_SECONDS,
                                                 sample=evaluation if evaluation is not None else prepared.calibration)
    seconds["benchmark"] = time.perf_counter() - started

    primary_f = None if reference is None else reference.metrics.primary()
    primary_q = None if judged is None else judged.primary()

    def summary(data: bytes, file_info: ModelInfo, metrics) -> FileSummary:
        return FileSummary(
            tflite_bytes=len(data), gzip_bytes=gzip_size(data), fully_integer=file_info.fully_integer,
            float_ops=file_info.float_ops, op_counts=file_info.op_counts(),
            accuracy=None if metrics is None else metrics.accuracy,
            top5_accuracy=None if metrics is None else metrics.top5_accuracy,
        )

    float_file, quantized = summary(float_tflite, float_info, primary_f), summary(tflite, info, primary_q)
    if recipe.mode is not Mode.FLOAT32:
        larger = larger_than_float(tflite, float_tflite, recipe.mode.value,
                                   (quantized.gzip_bytes, float_file.gzip_bytes))
        notes += [larger] if larger else []
    drop = None if primary_q is None else tasks.drop(primary_f, primary_q)
    whole = None  # the outputs' error with every op int8, on the samples the ops alone were measured on
    if violations and rank_on_miss is not None:
        ranked, whole = rank_on_miss()
        extra = {**(extra or {}), "diagnostics": ranked}
    exported = prepared.exported
    report = Report(
        model=prepared.source,
        recipe=recipe,
        float_file=float_file,
        quantized=quantized,
        latency_ms={"float": float_bench.inference_ms, "quantized": quant_bench.inference_ms},
        runtime=quant_bench.runtime,
        calibration_samples=0 if prepared.calibration is None else len(prepared.calibration),
        eval_samples=None if evaluation is None else len(evaluation),
        accuracy_drop=None if drop is None else round(drop, 6),
        max_drop=budget.max_drop,
        agreement=None if primary_q is None or primary_q.agreement is None else
        Agreement(top1=primary_q.agreement, samples=len(evaluation)),
        warnings=notes,
        seconds={k: round(v, 3) for k, v in {**prepared.seconds, **seconds}.items()},
        outputs=outputs_report,
        io=_io(tflite),
        export=ExportInfo(route=exported.route, seconds=round(exported.seconds, 3),
                          notes=list(exported.notes) + list(rewrites or [])),
        float_ops=float_ops,
        budget=budget,
        spec={} if spec is None else {"command": spec.command, **spec.to_dict()},
        tfquant_version=__version__,
        **(extra or {}),
    )
    result = QuantizationResult(tflite=tflite, float_tflite=float_tflite, report=report, info=info)
    if not info.fully_integer and (strict or (integer_mode and not allow_float)):
        raise StrictModeError(float_ops_message(prepared.source, float_ops), result)
    if violations:
        raise AccuracyBudgetError(f"{prepared.source}: " + "; ".join(violations) +
                                  _where_it_starts(report, causes, regression=regression_missed, whole=whole), result)
    return result


def _quiet_inputs(inputs: list, data: Dataset, changed: np.ndarray, samples: str = "evaluation") -> list[str]:
    """`lint.quiet_samples` for each of the file's integer inputs `data` feeds."""
    return [message for port in inputs  # int8 inputs: int16 ones keep 256 times finer steps
            if port.quantized and port.dtype.itemsize == 1 and port.name in data.inputs
            and (message := quiet_samples(port.name, data.inputs[port.name], port.scale, changed, samples=samples))]


def _quiet_calibration(tflite: bytes, float_tflite: bytes, calibration: Dataset, chosen: Optional[dict[str, str]],
                       threads: int) -> list[str]:
    """`lint.quiet_samples` on the calibration samples, where there is no evaluation data: only where some of
    them are quiet for an integer input's scale (a cheap look at the inputs first), the decisions of the
    first classification output compared between the two files on them (in-sample, so a weaker sign)."""
    inputs = harness.Runner(tflite, num_threads=1).inputs
    if not any(port.quantized and port.dtype.itemsize == 1 and port.name in calibration.inputs and calibration.inputs[port.name].dtype.kind == "f"
               and quiet(calibration.inputs[port.name], port.scale).any() for port in inputs):
        return []
    expected = harness.Runner(float_tflite, num_threads=threads).predict(calibration, progress=False)
    found = tasks.choose(expected, {}, chosen or {}, calibration.source)[0]
    # Without labels, logits look like a regression: a model's one output of several scores a sample is taken
    # for a classifier's (its top-1); where there are several outputs, only one detected as a classifier's.
    name = next((n for n, task in found.items() if task == "classification"), None) or next(
        (n for n, v in expected.items() if len(expected) == 1 and not (chosen or {}).get(n) and v.ndim == 2
         and v.shape[1] > 1), None)
    if name is None:
        return []
    got = harness.Runner(tflite, num_threads=threads).predict(calibration, progress=False)
    return _quiet_inputs(inputs, calibration, tasks.changed_decisions(got[name], expected[name]), "calibration")


def _where_it_starts(report: Report, narrow_inputs: list[str], *, regression: bool = False,
                     whole: Optional[float] = None) -> str:
    """For a budget failure: an input whose int8 scale leaves a feature few levels (no op after it can
    win them back), else the diagnostics' first: the op that costs the outputs most where the ops were measured
    alone in int8, otherwise the one whose int8 output strays furthest from float.

    Where no op alone costs `SPREAD` of what every op in int8 costs (`whole`), the error is spread over
    the ops (an LSTM autoencoder: its worst op alone 0.0094 of the outputs' spread, the file 0.084) and
    float islands do not win it back; int16 activations do. A regression output that missed its int8
    budget is pointed to them too: its error is often spread over every op (a Transformer regression:
    5.9 % of σ in int8, 1.0 % in int16x8)."""
    if narrow_inputs:
        return "; " + narrow_inputs[0]
    worst = report.diagnostics[0] if report.diagnostics else None
    name = worst and worst.tensor.split(";")[0]  # a fused op's tensor is named after each op fused into it
    if worst is not None and worst.output_error is not None and whole is not None and \
            worst.output_error < SPREAD * whole:
        return (f"; no op alone in int8 costs the outputs more than {worst.output_error:.3g} (mean error; "
                f"{name!r}, {worst.op}) where the whole int8 file costs {whole:.3g}: the "
                f"error is spread over many ops, which float islands do not win back; {called('mode')} int16x8 "
                f"keeps the activations in int16 ({called('io')} int8 keeps the file's int8 inputs and outputs)")
    int16 = (f"; {called('mode')} int16x8 keeps a regression's activations in int16 (with int16 inputs and "
             "outputs)") if regression else ""
    if worst is None:
        return int16
    if worst.output_error is not None:
        return (f"; the op whose int8 output costs the outputs most is {name!r} ({worst.op}: alone in int8, "
                f"{worst.output_error:.3g} mean error at the outputs; {worst.rmse_per_scale:.3g} int8 steps RMS of "
                f"its own): {called('fallback')} auto with a budget may keep such ops float" + int16)
    return (f"; the largest int8 error is at {name!r} ({worst.op}, {worst.rmse_per_scale:.1f} int8 steps RMS): "
            f"{called('fallback')} auto with a budget may keep such ops float" + int16)


def _io(tflite: bytes) -> list[IOTensor]:
    """The file's inputs and outputs by their signature names, as an app feeds and reads them."""
    runner = harness.Runner(tflite, num_threads=1)
    return [IOTensor(name=p.name, kind=kind, dtype=p.dtype.name, shape=list(p.signature),
                     scale=p.scale if p.quantized else None, zero_point=p.zero_point if p.quantized else None)
            for kind, ports in (("input", runner.inputs), ("output", runner.outputs)) for p in ports]


def _layer_names(model) -> list[str]:
    if model is None:
        return []
    from ._keras import all_layers

    return [layer.name for layer in all_layers(model)]

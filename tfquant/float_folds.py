"""Heads and tails made where there are none: the float file's dense layers that read a ruined input or write
a ruined output directly, given a normalization in front or a rescaling after them with its inverse folded
into their weights (the same function in float), so that `tfquant.float_io` can run it in float around the
int8 graph.

An input whose raw features one int8 scale cannot hold (`float_io.RUINED`) and that only dense ops read gets
a head (`standardize`): each feature's calibration range onto [-1, 1]. An output that a dense op writes
with columns in different units gets a tail (`rescale_outputs`): each column divided by its largest
magnitude, and a MUL after it that gives it back. `chosen` keeps a head or tail only where the file so
quantized keeps the outputs clearly closer to float on held-out calibration samples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from .flatbuffer import (array_constant, builtin_of, float_constant, float_tensor_like, new_op, producers_of,
                         read_model, readers_of, text, write_model)
from .data import Dataset
from .errors import TfquantError, one_line
from .float_io import RUINED, _OPS, _head, _ruined, _tail, compressive, plan, plan_outputs, tails
from .types import Mode, Recipe

log = logging.getLogger("tfquant")


@dataclass(frozen=True)
class Rescaled:
    """A tail put after the dense op that writes an output whose columns differ in scale."""

    name: str
    writer: str

    def describe(self) -> str:
        return (f"divided each column of the dense op writing output {self.name!r} by its largest magnitude on the "
                "calibration data and put a MUL after it that gives it back (the same function in float), so that "
                "its columns share one int8 scale")


@dataclass(frozen=True)
class Standardized:
    """A head put in front of the dense layers that read an input's raw features."""

    name: str
    readers: tuple[str, ...]

    def describe(self) -> str:
        return (f"put a normalization (SUB, MUL: each feature's calibration range onto [-1, 1]) in front of the "
                f"{len(self.readers)} dense op(s) reading input {self.name!r} and folded its inverse into their "
                "weights (the same function in float)")


def standardize(float_tflite: bytes, inputs: dict[str, np.ndarray], *,
                threshold: float = RUINED) -> tuple[bytes, list[Standardized]]:
    """The float file with a head put in front of each float input that int8 would ruin and that only
    dense ops read (as their input, with constant weights): SUB the middle of each feature's
    calibration range and MUL by one over its half range, with each dense op's weights multiplied by
    the half range and its bias given the weights times the middle, so that the outputs are the same
    in float."""
    model = read_model(float_tflite)
    graph = model.subgraphs[0]
    readers = readers_of(graph)
    done = []
    for index, name, values, _ in list(_ruined(model, graph, graph.inputs, inputs, threshold)):
        ops = readers.get(index, [])
        if not ops or _head(model, graph, index):
            continue
        features = int(graph.tensors[index].shape[-1])
        weights = [float_constant(model, graph, int(op.inputs[1])) if builtin_of(model, op) == _OPS.FULLY_CONNECTED
                   and int(op.inputs[0]) == index and list(op.inputs).count(index) == 1 else None for op in ops]
        if any(w is None or w.ndim != 2 or w.shape[1] != features for w in weights) or \
                any(_bias(model, graph, op) is None for op in ops):
            continue
        rows = values.reshape(-1, features).astype(np.float64)
        low, high = rows.min(axis=0), rows.max(axis=0)
        middle, half = (low + high) / 2, _half_ranges(low, high, weights)
        near = graph.tensors[index].name
        centered = float_tensor_like(graph, index, near + b"/standardized/centered")
        scaled = float_tensor_like(graph, index, near + b"/standardized")
        head = [new_op(model, _OPS.SUB, [index, array_constant(model, graph, middle.astype(np.float32), near,
                                                                 b"standardized/middle")], [centered]),
                new_op(model, _OPS.MUL, [centered, array_constant(model, graph, (1 / half).astype(np.float32),
                                                                  near, b"standardized/inverse_half_range")], [scaled])]
        for op, w in zip(ops, weights):
            op_name = graph.tensors[int(op.outputs[0])].name
            shift = w.astype(np.float64) @ middle
            old_bias = _bias(model, graph, op)
            inputs_of = [scaled,
                         array_constant(model, graph, (w * half).astype(np.float32), op_name, b"standardized/w"),
                         array_constant(model, graph, (old_bias + shift).astype(np.float32), op_name,
                                        b"standardized/b")]
            op.inputs = inputs_of + [int(i) for i in op.inputs[3:]]
        graph.operators[0:0] = head
        done.append(Standardized(name, tuple(text(graph.tensors[int(op.outputs[0])].name) for op in ops)))
    if not done:
        return float_tflite, []
    return write_model(model), done


def _bias(model, graph, op) -> Optional[np.ndarray]:
    """A dense op's bias (zeros where it has none), or None where it is not a float constant."""
    weights = graph.tensors[int(op.inputs[1])]
    if len(op.inputs) < 3 or int(op.inputs[2]) < 0:
        return np.zeros(int(weights.shape[0]))
    bias = float_constant(model, graph, int(op.inputs[2]))
    return None if bias is None else bias.astype(np.float64).reshape(-1)


def _half_ranges(low: np.ndarray, high: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    """Each feature's half range, which maps its calibration values onto [-1, 1], so that every feature
    gets int8's 256 levels over its own range (a deviation would stretch a rare value of a sparse
    feature, one nearly always 0, far beyond the others and size their shared scale for it); for a
    feature constant there (a flag always set), the factor that gives its weights no larger a column
    than the largest of the others, so that it does not size the dense ops' per-channel int8 scales
    (its weights multiply a centered 0 and carry nothing, while a model with a normalization folded
    into them can hold weights thousands of times larger there)."""
    half = (high - low) / 2
    constant = half <= 0
    if not constant.any():
        return half
    half = np.where(constant, 1.0, half)
    factor = np.full(len(half), np.inf)
    for w in weights:
        columns = np.abs(w.astype(np.float64)).max(axis=0)
        others = (columns * half)[~constant].max(initial=0.0)
        fits = np.where(columns > 0, others / np.where(columns > 0, columns, 1.0), np.inf)
        factor = np.minimum(factor, fits)
    return np.where(constant & np.isfinite(factor) & (factor > 0), factor, half)


def rescale_outputs(float_tflite: bytes, outputs: dict[str, np.ndarray], *,
                    threshold: float = RUINED) -> tuple[bytes, list[Rescaled]]:
    """The float file with a tail put after the dense op writing each float output that int8 would ruin
    and that has none: the op's columns divided by their largest magnitude on the calibration data,
    and a MUL after it that gives it back, so that the outputs are the same in float. Not centered:
    each column keeps 0 in its range, as its int8 scale did, and keeps at least the levels it had."""
    model = read_model(float_tflite)
    graph = model.subgraphs[0]
    producers, readers = producers_of(graph), readers_of(graph)
    done = []
    for index, name, values, _ in list(_ruined(model, graph, graph.outputs, outputs, threshold)):
        writer = producers.get(index)
        if writer is None or readers.get(index) or _tail(model, graph, index) or \
                builtin_of(model, writer) != _OPS.FULLY_CONNECTED or \
                writer.builtinOptions.fusedActivationFunction != schema.ActivationFunctionType.NONE:
            continue
        weights = float_constant(model, graph, int(writer.inputs[1]))
        old_bias = _bias(model, graph, writer)
        columns = values.reshape(-1, values.shape[-1]).astype(np.float64)
        if weights is None or weights.ndim != 2 or weights.shape[0] != columns.shape[1] or old_bias is None:
            continue
        reach = np.abs(columns).max(axis=0)
        reach = np.where(reach > 0, reach, 1.0)
        near = graph.tensors[index].name
        scaled = float_tensor_like(graph, index, near + b"/rescaled")
        writer.inputs = [int(writer.inputs[0]),
                         array_constant(model, graph, (weights / reach[:, None]).astype(np.float32), near,
                                        b"rescaled/w"),
                         array_constant(model, graph, (old_bias / reach).astype(np.float32), near,
                                        b"rescaled/b")] + [int(i) for i in writer.inputs[3:]]
        writer.outputs = [scaled]
        at = next(k for k, op in enumerate(graph.operators) if op is writer) + 1
        graph.operators[at:at] = [new_op(model, _OPS.MUL, [scaled, array_constant(
            model, graph, reach.astype(np.float32), near, b"rescaled/reach")], [index])]
        done.append(Rescaled(name, text(near)))
    if not done:
        return float_tflite, []
    return write_model(model), done


def chosen(float_tflite: bytes, calibration: Dataset, recipe: Recipe, source: str,
           regression: Optional[set[str]] = None) -> tuple[bytes, list, list]:
    """The float file, the inputs and outputs to give float32 with their normalization in float, and the
    rewrites that put one around dense layers for them (`tfquant.float_io`): first the inputs, then the
    outputs, each where int8's one scale leaves one of its features fewer than 8 levels
    (`float_io.RUINED`), or an input's LOG or SQRT would read its small values as 0, and the file so quantized keeps the outputs clearly closer to float than the
    file without (`_clearly_better`); else the file as it was and none."""
    from .convert import _checked
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
        if heads and _clearly_better(calibration, recipe, source, (float_tflite, lambda data, half: []),
                                     (candidate, inputs_of), "inputs", regression):
            float_tflite, rewrites, chosen = candidate, standardized, heads
    outputs = Runner(float_tflite).predict(calibration, progress=False)
    if ruined(outputs):
        before = inputs_of if chosen else (lambda data, half: [])
        candidate, rescaled = _checked(float_tflite, calibration, lambda data: rescale_outputs(data, outputs),
                                       "outputs not rescaled", quiet=True)

        def with_outputs(data: bytes, half: Dataset) -> list:
            return before(data, half) + plan_outputs(data, Runner(data).predict(half, progress=False))

        tails = plan_outputs(candidate, outputs)
        if tails and _clearly_better(calibration, recipe, source, (float_tflite, before), (candidate, with_outputs),
                                     "outputs", regression):
            float_tflite, rewrites, chosen = candidate, rewrites + rescaled, chosen + tails
    if chosen:
        from . import console

        for made in rewrites:
            console.note(made.describe())
    return float_tflite, chosen, rewrites


def _clearly_better(calibration: Dataset, recipe: Recipe, source: str, base: tuple, candidate: tuple,
                    what: str, regression: Optional[set[str]] = None) -> bool:
    """Whether the `candidate` (a float file, and a function of it and some samples giving the inputs and
    outputs to keep float) keeps the outputs clearly closer to float than `base` (`ranges.pick`), each
    calibrated on one half of the calibration samples and judged on the other (min/max ranges,
    `ranges.extreme_ranges`, with the headroom `regression` outputs get), so that values one half never
    showed (a rare value of a sparse feature, clipped) count."""
    from . import statistics
    from .convert import Calibration, calibrate
    from .harness import Runner
    from .ranges import apply_ranges, extreme_ranges, pick, sample_errors, with_headroom

    def calibrated(data: bytes, half: Dataset, ends: list) -> bytes:  # min/max ranges, as the statistics see them
        rough = calibrate(data, half, source=source)
        return with_headroom(apply_ranges(rough, extreme_ranges(statistics.collect(rough, half, counts=False))),
                             regression, through=tails(ends))

    trial = Recipe(mode=Mode.INT8, per_channel=recipe.per_channel)
    halves = calibration.halves()
    errors = {}
    try:
        reference = [Runner(base[0]).predict(half, progress=False) for half in halves]
        for name, (data, planned) in (("int8", base), ("float", candidate)):
            folds = []
            for fold, half in enumerate(halves):
                ends = planned(data, half)
                quantized = Calibration(data, calibrated(data, half, ends), float_io=ends).quantize(
                    trial, source=source, final=False)
                folds.append(sample_errors(reference[1 - fold], Runner(quantized).predict(
                    halves[1 - fold], progress=False), per_column=True))
            errors[name] = np.concatenate(folds)
    except (TfquantError, RuntimeError, ValueError) as exc:  # an interpreter that cannot keep every tensor, say
        log.info("float %s not tried: %s", what, one_line(exc, 160))
        return False
    log.info("float %s: mean error on %d held-out calibration samples: %s", what, len(errors["int8"]),
             ", ".join(f"{what} {name} {e.mean():.4g}" for name, e in errors.items()))
    return pick(errors) == "float"

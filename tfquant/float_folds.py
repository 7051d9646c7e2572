"""Heads and tails made where there are none: the float file's dense layers that read a ruined input or write
a ruined output directly, given a normalization in front or a rescaling after them with its inverse folded
into their weights (the same function in float), so that `tfquant.float_io` can run it in float around the
int8 graph.

An input whose raw features one int8 scale cannot hold (`float_io.RUINED`) and that only dense ops read gets
a head (`standardize`): each feature's calibration range onto [-1, 1]. An output that a dense op writes
with columns in different units gets a tail (`rescale_outputs`): each column divided by its largest
magnitude, and a MUL after it that gives it back. `convert` keeps a head or tail only where the file so
quantized keeps the outputs clearly closer to float on held-out calibration samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from .flatbuffer import (array_constant, builtin_of, float_constant, float_tensor_like, new_op, producers_of,
                         read_model, readers_of, text, write_model)
from .float_io import RUINED, _OPS, _head, _ruined, _tail


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

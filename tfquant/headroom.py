"""Headroom for outputs no op bounds: int8 room beyond the range calibration saw.

A regression head's (or a logits head's) range is the most extreme value the calibration samples
gave, and a held-out sample beyond it is clipped to it. `output_headroom` widens such an output's
range, and the ranges of what it rises with (an exponential head's input, a pool's per-step
outputs), by a quarter of their span on each side left open (`convert.calibration_for` does it
for the outputs the evaluation data shows to be regressions).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from .flatbuffer import (COPIES, builtin_of, float_constant, has_range, is_constant, producers_of, read_model,
                         signature_names, view_model, write_model)

HEADROOM = 0.25  # of its calibrated span, added beyond each side an unbounded output can still grow on
MAX_FOLLOWED = 12  # ops back from an output: a head's tail, not a residual trunk

_OPS = schema.BuiltinOperator
# Elementwise ops, reductions and pools whose output rises with their first input: an output they
# write is clipped where their input's range clips it, so that range gets the headroom too.
_RISING = frozenset({_OPS.EXP, _OPS.RELU, _OPS.LEAKY_RELU, _OPS.PRELU, _OPS.MEAN, _OPS.SUM, _OPS.REDUCE_MAX,
                     _OPS.REDUCE_MIN, _OPS.MAX_POOL_2D, _OPS.AVERAGE_POOL_2D})
_JOINS = frozenset({_OPS.CONCATENATION, _OPS.PACK})
_SHIFTS_AND_SCALES = frozenset({_OPS.ADD, _OPS.SUB, _OPS.MUL})
_NONNEGATIVE = frozenset({_OPS.EXP, _OPS.RELU})  # whose output's headroom stops at 0
_PRESERVING = frozenset(COPIES) | _JOINS | {_OPS.REDUCE_MAX, _OPS.REDUCE_MIN, _OPS.MAX_POOL_2D}  # some of what they read
_RELUS = frozenset({_OPS.RELU, _OPS.LEAKY_RELU, _OPS.PRELU})  # the values they read above 0, as they are
_AVERAGING = frozenset({_OPS.MEAN, _OPS.AVERAGE_POOL_2D})
# Ops whose output cannot leave a fixed range (a clip is a MAXIMUM and a MINIMUM), or is not a float.
_BOUNDED = frozenset({_OPS.SOFTMAX, _OPS.LOGISTIC, _OPS.TANH, _OPS.L2_NORMALIZATION, _OPS.RELU6, _OPS.RELU_N1_TO_1,
                      _OPS.RELU_0_TO_1, _OPS.ARG_MAX, _OPS.ARG_MIN, _OPS.MAXIMUM, _OPS.MINIMUM})
_LOG_FLOAT32_MAX = float(np.log(np.finfo(np.float32).max))


def with_headroom(calibrated: bytes, outputs: Optional[set[str]] = None) -> bytes:
    """`output_headroom` on a calibrated file, for the outputs named (by signature name; all when None)."""
    if outputs is not None and not outputs:  # a classifier: nothing to read the file for
        return calibrated
    model = read_model(calibrated)
    return write_model(model) if output_headroom(model, outputs) else calibrated


def output_headroom(model, outputs: Optional[set[str]] = None) -> int:
    """Widen the ranges of the graph's outputs that no op bounds, in place; returns how many were widened.

    A regression head's (or a logits head's) range is the most extreme value the calibration
    samples gave, and a sample beyond it is clipped to it: on a GRU regression calibrated on 200
    samples, the largest output seen was 0.769 and every held-out sample above it (up to 0.852)
    read 0.769, an RMSE of 7.5 % of the outputs' spread where int8 rounding alone costs about
    1 %. `HEADROOM` of the span is added beyond each side the op that writes the output leaves
    open (above only, after a ReLU); a softmax, sigmoid, tanh or L2 normalization bounds its output
    and keeps its range. It costs a quarter more rounding step on that one tensor, which a
    classifier's logits do not repay (a logits head lost one image in 359 with it): `outputs`
    names the outputs to widen, by their signature names; all when None.

    The ops between the output and the ops that leave it open are followed back where the output
    rises with what they read (`_rises_with`: copies and reshapes, reductions and pools, joins and
    sums, an exponential or a ReLU-like op, a shift or positive scaling by constants), up to
    `MAX_FOLLOWED` ops deep. Each tensor on the way is widened on the sides the open ops before it
    leave open, once however many outputs reach it, for the int8 range of what such an op reads
    clips what it writes: a Poisson head `exp(z)` whose `z` kept its calibrated range read no more
    than exp(max z) whatever its own range (6.0 % of σ against 3.0 % with `z` widened). The model's
    inputs keep the ranges their app feeds. A tensor that cannot be negative (an exponential's or a
    ReLU's output, and what copies, pools or positively scales only such tensors) is not widened
    below 0. A tensor's range also covers what the widened ranges it reads can give: an
    exponential's covers exp of its input's range, a copy's, a join's or a ReLU's the ranges it
    reads, and a mean or a sum of two tensors goes as far beyond its calibrated range as any of
    them does (a softplus head's relu term).
    """
    graph = model.subgraphs[0]
    producers = producers_of(graph)
    plan: dict[int, list] = {}  # tensor: [below, above, the tensors it rises with], producers first
    found = _open_outputs(model, outputs)
    for chain in found:
        for tensor, below, above, read in chain:
            sides = plan.setdefault(tensor, [False, False, read])
            sides[0], sides[1] = sides[0] or below, sides[1] or above
    calibrated = {t: (float(graph.tensors[t].quantization.min[0]), float(graph.tensors[t].quantization.max[0]))
                  for t in plan}
    ranges, positive = {}, {}
    for tensor, (below, above, read) in plan.items():
        low, high = calibrated[tensor]
        builtin = builtin_of(model, producers[tensor])
        read = [i for i in read if i in plan]
        shifted = builtin in (_OPS.ADD, _OPS.SUB) and len(read) == 1  # by a constant, or by an input
        positive[tensor] = low >= 0 and (builtin in _NONNEGATIVE or (
            bool(read) and not shifted and all(positive[i] for i in read)))
        span = HEADROOM * (high - low)
        new_low, new_high = low - span if below else low, high + span if above else high
        if read:  # what it reads may now go further than its own quarter span carries it
            if builtin == _OPS.EXP:
                new_low = min(new_low, float(np.exp(ranges[read[0]][0])))
                new_high = max(new_high, float(np.exp(min(ranges[read[0]][1], _LOG_FLOAT32_MAX))))
            elif builtin in _PRESERVING or builtin in _RELUS:  # some of the values it reads (above 0: all)
                new_low = min([new_low] + [ranges[i][0] for i in read])
                new_high = max([new_high] + [ranges[i][1] for i in read])
            elif builtin in _AVERAGING or builtin in (_OPS.ADD, _OPS.SUB):  # as far as any term goes
                new_low = low - max([low - new_low] + [calibrated[i][0] - ranges[i][0] for i in read])
                new_high = high + max([new_high - high] + [ranges[i][1] - calibrated[i][1] for i in read])
        if positive[tensor]:
            new_low = max(new_low, 0.0)
        ranges[tensor] = (new_low, new_high)
        q = graph.tensors[tensor].quantization
        q.min, q.max = [new_low], [new_high]
    return len(found)


def unbounded_outputs(calibrated: bytes, outputs: Optional[set[str]] = None) -> int:
    """How many of a calibrated file's outputs (those named in `outputs`, by signature name; all when None)
    no op bounds: a regression, logits or embedding head that no softmax, sigmoid, tanh or L2
    normalization ends."""
    return len(_open_outputs(view_model(calibrated), outputs))


def _open_outputs(model, outputs: Optional[set[str]] = None) -> list[list[tuple[int, bool, bool, list[int]]]]:
    """Per graph output (named in `outputs` by signature name; all when None) that the ops writing it
    leave open on a side: the output and the tensors it rises with, producers first, each with
    whether the open ops before it leave it open below and above (a graph input, or an op that
    bounds its output, leaves nothing open) and the tensors it rises with itself (`_rises_with`)."""
    found = []
    named = signature_names(model)
    graph = model.subgraphs[0]
    producers = producers_of(graph)
    sides: dict[int, tuple[bool, bool]] = {}
    reads: dict[int, list[int]] = {}

    def side(tensor: int, depth: int, chain: dict) -> tuple[bool, bool]:
        if tensor not in sides:
            op = producers.get(tensor)
            reads[tensor] = [] if op is None or depth >= MAX_FOLLOWED else _rises_with(model, graph, op)
            if op is None:  # a graph input keeps the range its app feeds
                sides[tensor] = (False, False)
            elif reads[tensor]:
                before = [side(i, depth + 1, chain) for i in reads[tensor]]
                sides[tensor] = (any(b for b, _ in before), any(a for _, a in before))
            else:
                sides[tensor] = _open_sides(model, op)
        if any(sides[tensor]) and tensor not in chain:
            chain[tensor] = (*sides[tensor], reads[tensor])
        return sides[tensor]

    for output in graph.outputs:
        if outputs is not None and named.get(int(output)) not in outputs:
            continue
        chain: dict = {}
        side(int(output), 0, chain)
        if chain and all(has_range(graph.tensors[t]) for t in chain):
            found.append([(t, *entry) for t, entry in chain.items()])
    return found


def _rises_with(model, graph, op) -> list[int]:
    """The tensors `op` reads where its output rises with each: a copy's or reshape's data input (the
    same scale), a rising function's (an exponential head, a reduction or pool over per-step outputs),
    each input of a join, both terms of a sum (softplus as `tfquant.legalize` writes it,
    relu(x) + log(1 + exp(-|x|)): its relu term), or what it shifts or positively scales by constants
    (a head that undoes its targets' standardization); none for any other op, nor a constant."""
    builtin = builtin_of(model, op)
    inputs = [int(i) for i in (op.inputs if op.inputs is not None else [])]
    variable = [i for i in inputs if i >= 0 and not is_constant(model, graph, i)]
    if builtin in COPIES:
        data = inputs[COPIES[builtin]] if COPIES[builtin] < len(inputs) else -1
        return [data] if data in variable else []
    if builtin in _RISING:
        return [inputs[0]] if inputs and inputs[0] in variable else []
    if builtin in _JOINS:
        return variable
    if builtin == _OPS.ADD and len(variable) == 2 and getattr(op.builtinOptions, "fusedActivationFunction", 0) == 0:
        return variable
    read = _shifted_or_scaled(model, graph, op)
    return [read] if read >= 0 else []


def _shifted_or_scaled(model, graph, op) -> int:
    """The tensor `op` reads where it adds a constant to it, subtracts one from it or multiplies it by a
    positive one; else -1."""
    builtin = builtin_of(model, op)
    if builtin not in _SHIFTS_AND_SCALES or op.inputs is None or len(op.inputs) != 2 or \
            getattr(op.builtinOptions, "fusedActivationFunction", 0) != 0:  # no fused activation
        return -1
    inputs = [int(i) for i in op.inputs]
    constant = [k for k, i in enumerate(inputs) if is_constant(model, graph, i)]
    if len(constant) != 1 or (builtin == _OPS.SUB and constant[0] != 1):
        return -1
    values = float_constant(model, graph, inputs[constant[0]])
    if values is None or (builtin == _OPS.MUL and not np.all(values > 0)):
        return -1
    return inputs[1 - constant[0]]


def _open_sides(model, op) -> tuple[bool, bool]:
    """Whether `op`'s output can go below and above anything calibration saw: (below, above)."""
    if builtin_of(model, op) in _BOUNDED:
        return False, False
    activation = getattr(op.builtinOptions, "fusedActivationFunction", schema.ActivationFunctionType.NONE)
    if activation == schema.ActivationFunctionType.NONE:
        return True, True
    if activation == schema.ActivationFunctionType.RELU:
        return False, True
    return False, False  # RELU6, RELU_N1_TO_1 and the like: bounded

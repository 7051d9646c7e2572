"""The range lint: ops whose int8 scales leave a tensor only a few of its 256 levels.

A CONCATENATION's or PACK's output holds every input as it is, on one scale: where the inputs'
calibrated ranges differ by more than `threshold`×, the narrow input keeps only a few levels.
An ADD or SUB is different: each input keeps its own scale, and the output's scale is sized for
the result, so a narrow input costs at most the output's own rounding. What an ADD or SUB can lose
is cancellation: an output far narrower than an input (x - mean(x) where x sits far from zero)
inherits that input's coarse steps, and keeps only a few of its own levels. A MUL is not linted:
a product keeps the relative precision of both inputs. Read from the calibrated float file; no
data runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .errors import called
from .types import RangeWarning

RANGE_OPS = ("CONCATENATION", "ADD", "SUB", "PACK")
DEFAULT_RANGE_RATIO = 16.0
TINY_FEATURE = 1e-6  # a feature this narrow next to its tensor's int8 span is a constant


def range_lint(calibrated: bytes, *, threshold: float = DEFAULT_RANGE_RATIO) -> list[RangeWarning]:
    """Flag CONCATENATION and PACK ops whose inputs' calibrated ranges differ by more than `threshold`×,
    and ADD and SUB ops whose output is more than `threshold`× narrower than an input.

    An input whose range is no wider than a constant's (`limits.TINY_RANGE`: the zero initial
    state of a recurrent step, a padding branch) carries nothing to lose and is not compared.
    """
    from .flatbuffer import OP_NAMES, builtin_of, text, view_model
    from .limits import TINY_RANGE, kernel_floor

    model = view_model(calibrated)
    found = []
    for subgraph in model.subgraphs:
        for op in subgraph.operators or []:
            op_name = OP_NAMES.get(builtin_of(model, op))
            if op_name not in RANGE_OPS:
                continue
            spans = []
            for index in op.inputs:
                tensor = subgraph.tensors[index] if index >= 0 else None
                q = tensor.quantization if tensor is not None else None
                if q is None or q.min is None or q.max is None or len(q.min) != 1:
                    continue  # constants and per-channel tensors carry no activation range
                # float32 storage of a floored range ([-0.0005, 0.0005]) reads back a hair wider
                if float(q.max[0]) - float(q.min[0]) > TINY_RANGE * (1 + 1e-6):
                    spans.append((text(tensor.name), float(q.min[0]), float(q.max[0])))
            output_tensor = subgraph.tensors[op.outputs[0]]
            output = text(output_tensor.name)
            if op_name in ("ADD", "SUB"):
                message, ratio = _cancellation(op_name, output, spans, output_tensor.quantization, threshold,
                                               floor=max(TINY_RANGE, kernel_floor(builtin_of(model, op), [
                                                   max(hi, 0.0) - min(lo, 0.0) for _, lo, hi in spans])))
            else:
                message, ratio = _mismatch(op_name, output, spans, threshold)
            if message is None:
                continue
            downstream = [text(subgraph.tensors[o.outputs[0]].name) for o in _downstream(subgraph, op)]
            found.append(RangeWarning(
                op=op_name, tensor=output, inputs=[n for n, _, _ in spans],
                ranges=[[lo, hi] for _, lo, hi in spans], ratio=ratio, message=message, downstream=downstream,
            ))
    return found


def _mismatch(op: str, output: str, spans, threshold: float):
    """(message, ratio) for a join whose inputs' ranges differ by more than `threshold`×, else (None, ratio)."""
    widths = [hi - lo for _, lo, hi in spans if hi - lo > 0]
    if len(spans) < 2 or len(widths) < 2:
        return None, 1.0
    ratio = max(widths) / min(widths)
    return (_range_message(op, output, spans, ratio) if ratio > threshold else None), ratio


def _cancellation(op: str, output: str, spans, quantization, threshold: float, *, floor: float = 0.0):
    """(message, ratio) for an ADD or SUB whose output's int8 span is more than `threshold`× narrower than
    an input's, else (None, ratio). Spans as int8 holds them: every range reaches zero.

    An output no wider than `floor` (the range calibration widens a constant to, for its kernel:
    `limits.floor_model_ranges`) was constant on the calibration data, x·r − x·r as a
    LayerNormalization over one feature computes its beta: nothing to lose, not named."""
    if not spans or quantization is None or quantization.min is None or quantization.max is None:
        return None, 1.0
    low, high = min(float(quantization.min[0]), 0.0), max(float(quantization.max[0]), 0.0)
    wide = max(spans, key=lambda s: max(s[2], 0.0) - min(s[1], 0.0))
    width = max(wide[2], 0.0) - min(wide[1], 0.0)
    if high - low <= floor * (1 + 1e-5):
        return None, 1.0
    ratio = width / (high - low)
    if ratio <= threshold:
        return None, ratio
    levels = max(1, int(255 / ratio))
    return (f"{op} {output!r} outputs [{low:.3g}, {high:.3g}], {ratio:.0f}× narrower than its input {wide[0]!r} "
            f"in [{wide[1]:.3g}, {wide[2]:.3g}]: that input's int8 steps leave the result about {levels} of 256 "
            f"levels. Fix: center or rescale that input before this op (e.g. subtract its offset where it is "
            f"made, or a Normalization layer), or keep the op in float ({called('fallback')} auto)"), ratio


def _downstream(subgraph, op) -> list:
    """Ops that depend on `op`'s output, breadth first (nearest consumers first)."""
    from .flatbuffer import readers_of

    readers = readers_of(subgraph)
    order, seen, frontier = [], {id(op)}, [int(i) for i in op.outputs]
    while frontier:
        following = []
        for tensor in frontier:
            for reader in readers.get(tensor, []):
                if id(reader) not in seen:
                    seen.add(id(reader))
                    order.append(reader)
                    following.extend(int(i) for i in reader.outputs)
        frontier = following
    return order


def _range_message(op: str, output: str, spans, ratio: float) -> str:
    small = min(spans, key=lambda s: s[2] - s[1])
    large = max(spans, key=lambda s: s[2] - s[1])
    levels = max(1, int(255 * (small[2] - small[1]) / (large[2] - large[1])))
    return (
        f"{op} {output!r} joins inputs whose ranges differ {ratio:.0f}×: {small[0]!r} in "
        f"[{small[1]:.3g}, {small[2]:.3g}] and {large[0]!r} in [{large[1]:.3g}, {large[2]:.3g}]; "
        f"one int8 scale leaves the small input about {levels} of 256 levels. Fix: rescale or normalize "
        f"the large input before this op (e.g. divide it, or a Normalization layer), or keep the op in "
        f"float ({called('fallback')} auto)"
    )


@dataclass(frozen=True)
class Narrow:
    """The feature (last axis) of a tensor that one int8 scale, sized for every feature and for 0, leaves
    the fewest levels."""

    feature: int
    features: int
    low: float  # its range
    high: float
    bottom: float  # the scale's range
    top: float
    setter: int  # the feature that reaches the scale's far end
    levels: float

    def describe(self, what: str, unit: str) -> str:
        def named(index: int) -> str:
            return f"{unit} {index}" if self.features > 1 else "its values"

        end = self.top if abs(self.top) >= abs(self.bottom) else self.bottom
        plural = self.features > 1
        return (f"{what}: its one int8 scale spans [{self.bottom:.4g}, {self.top:.4g}] ({named(self.setter)} "
                f"reach{'es' if plural else ''} {end:.4g}; int8 also holds 0), so {named(self.feature)}, in "
                f"[{self.low:.4g}, {self.high:.4g}], keep{'s' if plural else ''} about {self.levels:.2g} of 256 levels")


def narrowest(values: np.ndarray, *, threshold: float = DEFAULT_RANGE_RATIO) -> Optional[Narrow]:
    """The feature of `values` that keeps fewer than 256/`threshold` levels on the one int8 scale of all
    of them, if any. Constant features carry nothing to lose and are not compared."""
    if values.dtype.kind != "f" or values.size == 0:
        return None
    rows = values.reshape(-1, values.shape[-1] if values.ndim >= 2 else 1)
    low, high = rows.min(axis=0).astype(np.float64), rows.max(axis=0).astype(np.float64)
    bottom, top = min(float(low.min()), 0.0), max(float(high.max()), 0.0)
    widths = high - low
    live = np.flatnonzero(widths > TINY_FEATURE * (top - bottom))
    if top - bottom <= 0 or not len(live):
        return None
    worst = int(live[np.argmin(widths[live])])
    ratio = (top - bottom) / widths[worst]
    if ratio <= threshold:
        return None
    end = top if abs(top) >= abs(bottom) else bottom
    setter = int(np.argmax(high)) if end == top else int(np.argmin(low))
    return Narrow(worst, rows.shape[1], float(low[worst]), float(high[worst]), bottom, top, setter, 255 / ratio)


def input_lint(inputs: dict[str, np.ndarray], *, threshold: float = DEFAULT_RANGE_RATIO) -> list[str]:
    """Float inputs one of whose features gets fewer than 256/`threshold` of int8's levels.

    An int8 file takes each input on one scale, sized for every feature of it (the last axis: a
    table's columns, an image's channels) and for 0, which int8 must represent. A feature far from
    0 (a year, a raw price) or much narrower than its neighbours keeps only a few levels, and no
    later op can win them back.
    """
    found = []
    for name, values in inputs.items():
        narrow = narrowest(values, threshold=threshold)
        if narrow is not None:
            found.append(f"{narrow.describe(f'input {name!r}', 'feature')}. Fix: feed the model centered, scaled "
                         f"features (normalize in the app, not in the model), or leave {called('io')} unpinned (or "
                         f"float32) with {called('float_io_norm')} auto or on: the input is then taken as float32 "
                         "and normalized in float where that keeps the outputs clearly closer to float")
    return found


QUIET_STEPS = 4.0  # of an input's int8 steps: a sample that reaches fewer from 0 keeps little of itself
QUIET_SHARE = 0.5  # of the decisions int8 changed, carried by such samples, for them to be named
QUIET_RATE = 3.0  # and at least this many times as often as the other samples


def _steps(values: np.ndarray, scale: float) -> np.ndarray:
    """Per sample, how many steps of `scale` its largest magnitude reaches from 0."""
    if not len(values):
        return np.zeros(0)
    return np.abs(values.reshape(len(values), -1)).max(axis=1) / scale


def quiet(values: np.ndarray, scale: float) -> np.ndarray:
    """Per sample, whether it reaches fewer than `QUIET_STEPS` steps of `scale` from 0."""
    return _steps(values, scale) < QUIET_STEPS


def quiet_samples(name: str, values: np.ndarray, scale: float, changed: np.ndarray, *,
                  samples: str = "evaluation") -> Optional[str]:
    """Samples too quiet for an input's one int8 scale, where they carry most of the decisions int8 changed.

    The scale is sized for the loudest calibration sample. Where the samples' own magnitudes differ
    by orders (audio at every loudness, a magnitude spectrogram, a sensor at rest and in motion),
    a quiet sample reaches only a few steps from 0, and rounding erases it before any op runs.
    `values` are the evaluation inputs (the calibration ones, `samples="calibration"`, where there
    is no evaluation data), `scale` the file's input scale, `changed` per sample the share of its
    decisions int8 changed (`tasks.changed_decisions`). Named only where those changes fall mostly,
    and disproportionately, on the quiet samples.
    """
    if values.dtype.kind != "f" or scale <= 0 or len(values) != len(changed) or not len(values):
        return None
    reach = _steps(values, scale)
    hushed = reach < QUIET_STEPS
    lost, total = float(changed[hushed].sum()), float(changed.sum())
    if hushed.all() or not hushed.any() or total <= 0 or lost < QUIET_SHARE * total:
        return None
    rate, other = lost / hushed.sum(), (total - lost) / (~hushed).sum()
    if rate < QUIET_RATE * other:
        return None
    share = 100 * hushed.mean()
    return (f"input {name!r}: {_percent(share)} % of the {samples} samples reach fewer than {QUIET_STEPS:g} of its "
            f"int8 steps ({scale:.4g}) from 0 (the quietest reaches {float(reach.min()):.2g}), where the loudest calibration "
            f"samples set the scale, and they carry {_decisions(lost)} of the {_decisions(total)} decisions int8 "
            f"changed: one int8 scale cannot hold quiet and loud samples at once, and rounding erases the quiet "
            f"ones before the first op. Fix: bring every sample to a like scale before the model (normalize each "
            f"waveform's peak or loudness; feed a log-magnitude spectrogram, log(x + 1e-6), not a magnitude one), "
            f"or use int16x8 ({called('mode')} int16x8), whose activations keep 256× finer steps")


def _decisions(count: float) -> str:
    return f"{count:.0f}" if abs(count - round(count)) < 1e-6 else f"{count:.1f}"


FEW_CALIBRATION_SAMPLES = 32
OUTSIDE_SHARE = 0.01  # of the evaluation values, beyond the calibrated range by more than 1 % of it


def data_lint(calibration, evaluation=None, *, threshold: float = DEFAULT_RANGE_RATIO) -> list[str]:
    """What in the calibration data would mislead int8's input ranges: too few samples, or evaluation
    inputs outside the calibrated range (clipped) or in a sliver of it (few levels), as when the two
    sets are prepared differently (pixels in 0..255 against 0..1). `calibration` and `evaluation`
    are `tfquant.data.Dataset`s."""
    found = []
    if len(calibration) < FEW_CALIBRATION_SAMPLES:
        found.append(f"{calibration.source}: {len(calibration)} calibration sample{'s' * (len(calibration) != 1)}: "
                     "int8 ranges from so few rarely cover the inputs the model meets. Fix: calibrate on 100 to 500 "
                     f"samples of real inputs ({called('calib_samples')} draws up to 200 of them by default)")
    for name, values in calibration.inputs.items():
        if values.dtype.kind != "f" or evaluation is None or name not in evaluation.inputs:
            continue
        seen = evaluation.inputs[name]
        low, high = float(values.min()), float(values.max())
        seen_low, seen_high = float(seen.min()), float(seen.max())
        margin = 0.01 * (high - low)
        outside = sum(int(np.count_nonzero((part < low - margin) | (part > high + margin)))  # 256 samples at a time
                      for part in (seen[i:i + 256] for i in range(0, len(seen), 256))) / max(seen.size, 1)
        ranges = (f"the calibration data's range [{low:.4g}, {high:.4g}] ({calibration.source}; evaluation: "
                  f"[{seen_low:.4g}, {seen_high:.4g}])")
        fix = "Fix: calibrate on data prepared as the model's real inputs are (the same scaling and preprocessing)"
        if outside > OUTSIDE_SHARE:
            found.append(f"input {name!r}: {_percent(100 * outside)} % of the evaluation values lie outside {ranges}: "
                         f"int8 clips them. {fix}")
        elif high > low and seen_high > seen_low and len(seen) >= 8 and (seen_high - seen_low) * threshold < high - low:
            found.append(f"input {name!r}: the evaluation values fill under 1/{threshold:g} of {ranges}: int8 keeps "
                         f"few of its levels for them. {fix}")
    return found


BEYOND = 0.05  # of the calibration outputs' span, beyond which an evaluation sample's output is extrapolated
BEYOND_SHARE = 0.5  # of an output's squared int8 error, carried by such samples, for them to be named


def extrapolated(name: str, calibrated: np.ndarray, expected: np.ndarray, got: np.ndarray) -> Optional[str]:
    """A regression output whose int8 error is mostly that of evaluation samples the calibration never
    showed the like of: their float outputs lie beyond the calibration samples' (`calibrated`).

    Their inputs may each lie within the calibrated ranges (pixels in [0, 1]) while their combination
    drives hidden activations past ranges calibrated without them, and int8 clips those. A softplus
    regression calibrated on 200 digits whose outputs reached 3.81 met test digits up to 4.10: its
    median sample was 1.5 % of the spread off float, one sample 97 %. `expected` and `got` are the
    float and int8 outputs on the evaluation samples."""
    calibrated, expected = calibrated.astype(np.float64), expected.astype(np.float64)
    low, high = float(calibrated.min()), float(calibrated.max())
    margin = BEYOND * (high - low)
    count = len(expected)
    beyond = ((expected < low - margin) | (expected > high + margin)).reshape(count, -1).any(axis=1)
    squared = ((got.astype(np.float64).reshape(expected.shape) - expected) ** 2).reshape(count, -1).sum(axis=1)
    if not high > low or not beyond.any() or squared[beyond].sum() < BEYOND_SHARE * squared.sum():
        return None
    return (f"output {name!r}: {int(beyond.sum())} of {count} evaluation samples give float outputs beyond the "
            f"calibration samples' [{low:.4g}, {high:.4g}] (evaluation: [{expected.min():.4g}, {expected.max():.4g}]) "
            f"and carry {_percent(100 * squared[beyond].sum() / squared.sum())} % of its squared int8 error: int8 "
            "ranges inside the model, calibrated without their like, clip them. Fix: calibrate on samples that span "
            "the outputs' range")


def output_lint(name: str, expected: np.ndarray, got: np.ndarray, *,
                threshold: float = DEFAULT_RANGE_RATIO) -> Optional[str]:
    """A regression output one of whose columns (targets of different units: a price beside a count)
    keeps few levels on the output's one int8 scale, with that column's RMSE against float relative
    to its own spread: the output's relative RMSE is the wide column's, and says nothing of it."""
    narrow = narrowest(expected, threshold=threshold)
    if narrow is None:
        return None
    column = expected.reshape(-1, narrow.features)[:, narrow.feature].astype(np.float64)
    error = got.reshape(-1, narrow.features)[:, narrow.feature].astype(np.float64) - column
    spread = float(np.std(column)) or 1.0
    return (f"{narrow.describe(f'output {name!r}', 'column')}: its RMSE against float is "
            f"{_percent(100 * float(np.sqrt(np.mean(error ** 2))) / spread)} % of its own standard deviation. Fix: give "
            f"the targets similar scales (train on standardized targets, rescale in the app) or make each its own "
            f"output")


def _percent(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"

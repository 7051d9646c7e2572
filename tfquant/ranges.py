"""Activation ranges: the [min, max] each int8 activation scale is sized for, chosen on the calibration data.

TFLite's calibrator records min/max: the single most extreme value over all calibration samples.
That is a poor statistic for a range. It keeps growing with the number of samples, and one odd
sample widens the scale that every other sample is rounded with. In a deep network with
swish, squeeze-excite gates and depthwise convolutions (EfficientNet), the min/max range of most
activations is 2.5-4 times the range a typical sample spans, and the rounding noise that buys adds
up layer after layer: on a zoo EfficientNetB0, one output in five changes its top-1 class.
The calibrator's record is also not always what the tensor holds: on that EfficientNetB0 it
gives a sigmoid's output the range [-0.28, 9.24], and 50 of a small Transformer's 151 ranges
differ from the values the statistics pass reads from the same file.

Estimators (`ESTIMATORS`), each from the statistics of one pass (`tfquant.statistics`):

- `percentile`: per side, the `PERCENTILE` quantile over samples of each sample's own extreme:
  the range covers 19 samples in 20 entirely and clips only the few most extreme samples. It
  replaces the calibrated range only where that is more than `STRETCH` times as wide (a third of
  the int8 levels or more spent on values that 19 samples in 20 never reach); elsewhere clipping
  would save little resolution, and the file keeps its min/max. A quantile converges as samples
  are added (min/max does not), and unlike the mean it does not clip half of the samples, which
  tensors with a hard bound (ReLU6, a gate, a regression head) do not forgive. It also replaces
  calibrator records wider than anything the tensor held. On the zoo it changes 70 % of
  EfficientNetB0's ranges, 17-33 % of MobileNet's, about a quarter of a recurrent model's, 6 % of
  a Transformer's and none of a small dense model's.
- `average`: the mean over samples of each sample's extremes, what LiteRT Quantizer's moving
  average of per-sample min/max estimates. Close to `percentile` on EfficientNet, worse than
  min/max on most other models (recurrent, attention, regression, MobileNetV2): it clips half of
  the samples. `auto` does not try it.
- `mse`: per tensor, the range of least expected rounding-plus-clipping error on its histogram.
  `auto` tries it where an output is unbounded (a regression, logits or embedding head that no
  softmax, sigmoid, tanh or L2 normalization ends) and not known to be a classifier (the
  evaluation data's labels say which): on a Bidirectional GRU regression it held
  the int8 file to 4.1 % of the output's spread off float where percentile ranges gave 5.8 %.
- `minmax`: the calibrator's own, left as it is.

`auto` fits its candidates (`AUTO`) on one half of the calibration samples, quantizes with each
and runs the other half, and the other way round (two-fold cross-validation), so a range that
clips is judged on samples it was not fitted to and every sample is held out once. Each
held-out sample's error is measured by its task (a classifier's changed top-1 class, an
embedding's cosine, a relative RMSE otherwise). On a couple of hundred samples that is a noisy
measure, so the first candidate, `percentile`, is kept unless another one's error is lower by
more than `EVIDENCE` standard errors of the paired per-sample difference. Min/max is judged as
the calibrator recorded it, over all samples: having seen the held-out samples can only make it
look better, so auto errs on the side of not clipping. The chosen method is then fitted on all
the samples. Evaluation data is never looked at.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from .data import Dataset
from .statistics import Histogram, Statistics

log = logging.getLogger("tfquant")
LEVELS = 255
PERCENTILE = 0.95  # the share of calibration samples a `percentile` range covers entirely
STRETCH = 1.5  # `percentile` clips a tensor only where min/max is this many times as wide
# What `auto` tries; the first is kept unless another is clearly better. `mse` only where a regression
# output is unbounded (`WITH_MSE`): its per-tensor optimum does not track a classifier's top-1 (on the
# zoo's EfficientNetB0 it had the lowest output divergence and the worst agreement; a logits head that the
# evaluation data shows to be a classifier is not given it), and it costs two more quantizations and a
# histogram of every tensor; a regression's error is what it minimizes.
AUTO = ("percentile", "minmax")
WITH_MSE = AUTO + ("mse",)
EVIDENCE = 2.0  # standard errors of the paired difference by which another candidate must win

Ranges = dict[int, tuple[float, float]]  # per activation tensor index: [low, high], zero inside
ESTIMATORS: dict[str, Callable[[Statistics], Ranges]] = {}


def _estimator(name: str):
    def wrap(func: Callable[[Statistics], Ranges]) -> Callable[[Statistics], Ranges]:
        ESTIMATORS[name] = func
        return func

    return wrap


def _with_zero(low: float, high: float) -> tuple[float, float]:
    return min(0.0, float(low)), max(0.0, float(high))


@_estimator("minmax")
def minmax_ranges(stats: Statistics) -> Ranges:
    """None to change: the calibrator's min/max stays in the file."""
    return {}


def extreme_ranges(stats: Statistics) -> Ranges:
    """Per tensor, the least and greatest value over the samples, as the statistics saw them.

    Not the calibrator's min/max: TensorFlow's calibrator logs an op's inputs after the op has run,
    and where the interpreter runs an elementwise op in place (its output in its input's buffer),
    what it logs for the input is the output. A dense op's output in [-1, 1] read by a MUL by 727
    was given [-727, 727]; in MobileNetV2 the projections a residual ADD reads got up to 2.7 times
    their range, and in EfficientNetB0 63 of 254 tensors more than theirs. `minmax` keeps the
    calibrator's ranges all the same: with these, the zoo's embedding LSTM (Keras 3) lost 2.2 points
    where it had lost under 1, its cell states meeting values beyond what the calibration showed,
    which the wider ranges had held."""
    return {index: _with_zero(e[:, 0].min(), e[:, 1].max()) for index, e in stats.extremes.items() if len(e)}


@_estimator("percentile")
def percentile_ranges(stats: Statistics, share: float = PERCENTILE, stretch: float = STRETCH) -> Ranges:
    """Per side, the `share` quantile over samples of each sample's extreme (its min, its max), for
    the tensors whose calibrated range is more than `stretch` times as wide."""
    found = {}
    for index, e in stats.extremes.items():
        histogram = stats.histograms.get(index)
        if not len(e) or histogram is None:
            continue
        clipped = _with_zero(np.quantile(e[:, 0], 1.0 - share), np.quantile(e[:, 1], share))
        if histogram.high - histogram.low > stretch * (clipped[1] - clipped[0]):
            found[index] = clipped
    return found


@_estimator("average")
def average_ranges(stats: Statistics) -> Ranges:
    """Per side, the mean over samples of each sample's extreme."""
    return {index: _with_zero(e[:, 0].mean(), e[:, 1].mean()) for index, e in stats.extremes.items() if len(e)}


@_estimator("mse")
def mse_ranges(stats: Statistics) -> Ranges:
    """Per tensor, the range of least expected int8 error on its histogram."""
    return {index: _best_range(h) for index, h in stats.histograms.items() if h.counts.sum()}


def _best_range(histogram: Histogram) -> tuple[float, float]:
    """The [low, high] (zero inside) of least rounding-plus-clipping error for this histogram."""
    centers, counts = histogram.centers(), histogram.counts.astype(np.float64)
    total = counts.sum()
    low, high = histogram.low, histogram.high
    candidates = [(low, high)]  # as calibrated, then shrunk on both sides, on the high side, on the low side
    for shrink in np.linspace(0.3, 0.99, 24):
        for lo, hi in ((low * shrink, high * shrink), (low, high * shrink), (low * shrink, high)):
            lo, hi = min(lo, 0.0), max(hi, 0.0)
            if hi - lo > 0:
                candidates.append((lo, hi))
    errors = _errors(centers, counts, np.asarray(candidates, np.float64)) / total
    best, best_error = candidates[0], errors[0]
    for candidate, error in zip(candidates[1:], errors[1:]):
        if error < best_error * 0.98:  # clip only for a clear gain
            best, best_error = candidate, error
    return best


def _errors(centers: np.ndarray, counts: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """Per [low, high] row of `ranges`: the histogram's squared clipping error plus the rounding error of
    the values inside (uniform, a step squared over 12), in one pass over every candidate."""
    low, high = ranges[:, :1], ranges[:, 1:]
    step = (high[:, 0] - low[:, 0]) / LEVELS
    clipped = np.clip(centers, low, high)
    inside = (((centers >= low) & (centers <= high)) * counts).sum(axis=1)
    return np.sum(counts * (centers - clipped) ** 2, axis=1) + inside * step * step / 12


def apply_ranges(calibrated: bytes, ranges: Ranges) -> bytes:
    """The calibrated file with these activation ranges in place of its min/max.

    Vanishing ranges are widened again as after calibration (`limits.floor_model_ranges`): a tensor
    that is constant on most samples may have a percentile range of zero width.
    """
    from .flatbuffer import read_model, write_model
    from .limits import floor_model_ranges

    if not ranges:
        return calibrated
    model = read_model(calibrated)
    tensors = model.subgraphs[0].tensors
    for index, (low, high) in ranges.items():
        tensors[index].quantization.min, tensors[index].quantization.max = [float(low)], [float(high)]
    floor_model_ranges(model)
    return write_model(model)


@dataclass(frozen=True)
class Choice:
    method: str  # one of types.RANGE_METHODS other than auto
    calibrated: bytes  # the calibrated file with the method's ranges, fitted on all samples
    errors: dict[str, float]  # auto only: per candidate, its mean error on the held-out samples
    bias_correction: bool = False  # auto only: whether bias correction was kept (not clearly worse on held-out samples)


class HeldOut:
    """Two disjoint halves of the calibration samples: a file fitted on one half is judged on the
    other, both ways round, so every sample is held out once."""

    def __init__(self, float_tflite: bytes, halves: Sequence[tuple[Statistics, Dataset]]):
        from .harness import Runner

        self.halves = halves
        float_runner = Runner(float_tflite)
        self.references = [float_runner.predict(data, progress=False) for _, data in halves]
        self._files: dict = {}  # calibrated bytes -> quantized bytes
        self._judged: dict = {}  # (fold, quantized bytes) -> errors: candidates may coincide

    def errors(self, fitted: Sequence[bytes], quantize: Callable[[bytes], bytes],
               then: Optional[Callable[[bytes, Statistics], bytes]] = None) -> np.ndarray:
        """Per held-out sample, the error of `quantize(fitted[fold])` on the other half, each file
        passed through `then(file, statistics of the half it was fitted on)` if given.

        Each calibrated file is quantized once (min/max's is the same file for both folds, and a
        file judged again with `then` is not quantized again).
        """
        from .harness import Runner

        folds = []
        for fold, (statistics, _) in enumerate(self.halves):
            if fitted[fold] not in self._files:
                self._files[fitted[fold]] = quantize(fitted[fold])
            quantized = self._files[fitted[fold]]
            if then is not None:
                quantized = then(quantized, statistics)
            if (fold, quantized) not in self._judged:
                outputs = Runner(quantized).predict(self.halves[1 - fold][1], progress=False)
                self._judged[fold, quantized] = sample_errors(self.references[1 - fold], outputs)
            folds.append(self._judged[fold, quantized])
        return np.concatenate(folds)


def choose(float_tflite: bytes, calibrated: bytes, halves: Sequence[tuple[Statistics, Dataset]],
           quantize: Callable[[bytes], bytes], *, method: str = "auto", candidates: Sequence[str] = AUTO,
           correct: Optional[Callable[[bytes, Statistics], bytes]] = None) -> Choice:
    """The calibration to quantize from: `method`'s ranges or, for auto, the candidate chosen on
    held-out samples, fitted on all of them.

    `halves` are two disjoint parts of the calibration samples with their statistics; `quantize`
    turns a calibrated file into the int8 file. For auto, each of `candidates` is fitted on one half and
    judged on the other (`HeldOut`); then, if `correct` is given (an int8 file bias-corrected with
    the statistics it was fitted on), the chosen candidate is judged once more with it, and
    bias correction is kept unless the held-out samples show it clearly worse: it estimates a mean
    shift from the calibration samples, and with few samples or a shift that is already small, the
    estimate can add more error than it removes. Where the held-out samples cannot tell, it is kept:
    on the zoo's EfficientNetB0 fold models (Keras 3), where they could not, leaving it out cost
    1.0 point of accuracy on the held-out digits.
    """
    everything = halves[0][0].merge(halves[1][0])
    summary: dict[str, float] = {}
    bias = False
    if method == "auto":
        held_out = HeldOut(float_tflite, halves)
        fitted = {name: [apply_ranges(calibrated, ESTIMATORS[name](fit)) for fit, _ in halves] for name in candidates}
        errors = {name: held_out.errors(fitted[name], quantize) for name in candidates}
        method = pick(errors)
        summary = {name: float(e.mean()) for name, e in errors.items()}
        log.info("activation ranges: %s (mean error on %d held-out calibration samples: %s)", method,
                 len(errors[method]), ", ".join(f"{name} {e:.4g}" for name, e in summary.items()))
        if correct is not None:
            trial = {"bias corrected": held_out.errors(fitted[method], quantize, then=correct),
                     "as rounded": errors[method]}
            bias = pick(trial) == "bias corrected"
            summary["bias corrected"] = float(trial["bias corrected"].mean())
            log.info("bias correction: %s (mean held-out error %.4g, without %.4g)", "kept" if bias else "left out",
                     trial["bias corrected"].mean(), trial["as rounded"].mean())
    chosen = apply_ranges(calibrated, ESTIMATORS[method](everything))
    return Choice(method, chosen, summary, bias)


def pick(errors: dict[str, np.ndarray]) -> str:
    """The first candidate, unless another's mean per-sample error is lower by more than `EVIDENCE`
    standard errors of the paired difference (then the one with the lowest mean among those)."""
    default = next(iter(errors))
    chosen, gain = default, 0.0
    for name, error in errors.items():
        difference = errors[default] - error  # > 0 where `name` did better
        noise = float(difference.std(ddof=1) / np.sqrt(len(difference))) if len(difference) > 1 else np.inf
        if difference.mean() > max(EVIDENCE * noise, gain):
            chosen, gain = name, float(difference.mean())
    return chosen


def sample_errors(reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray], *,
                  per_column: bool = False, rmse_only: bool = False) -> np.ndarray:
    """Per sample, the mean over outputs of how far the quantized outputs stray from float, by task.

    A classifier's error is 1 where the top-1 class changed (what its accuracy feels) plus 0.01
    times the relative RMSE of its scores, a tie-break; an embedding's, one minus the cosine; any
    other output's, its RMSE relative to the float output's spread, or with `per_column` to each
    column's own (targets in different units: the narrow ones' error shows). With `rmse_only`, that
    relative RMSE for every output: a finer measure than changed classes on calibration samples, which
    the model was often trained on and few of which change.
    """
    from .tasks import detect

    errors = []
    for name, expected in reference.items():
        expected = expected.astype(np.float64)
        got = outputs[name].astype(np.float64).reshape(expected.shape)
        spread = float(np.std(expected)) or 1.0
        if per_column and expected.ndim >= 2:
            columns = expected.reshape(-1, expected.shape[-1]).std(axis=0)
            spread = np.where(columns > 0, columns, 1.0)
        count = len(expected)
        rmse = np.sqrt(np.mean(((got - expected) / spread).reshape(count, -1) ** 2, axis=1))
        task = "regression" if rmse_only else detect(expected)
        if task == "classification" and expected.ndim >= 2 and expected.shape[-1] > 1:
            changed = (got.argmax(axis=-1) != expected.argmax(axis=-1)).reshape(count, -1).mean(axis=1)
            errors.append(changed + 0.01 * rmse)
        elif task == "embedding":
            cosine = np.sum(got * expected, axis=-1) / np.maximum(
                np.linalg.norm(got, axis=-1) * np.linalg.norm(expected, axis=-1), 1e-12)
            errors.append(1.0 - cosine.reshape(count, -1).mean(axis=1))
        else:
            errors.append(rmse)
    return np.mean(errors, axis=0)

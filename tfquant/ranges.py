"""Activation ranges beyond min/max: MSE-optimal clipping, chosen on the calibration data.

Min/max calibration sizes every int8 scale for the single largest value seen, so a tensor with a
long tail (swish and depthwise outputs, attention scores) spends most of its 256 levels on
values that almost never occur. Here each activation's values over the calibration samples are
gathered in a histogram, and its range is the one that minimises the expected squared error of
int8 quantization — rounding error inside the range plus clipping error outside it — among
candidates that always include the min/max range itself.

Whether the refined ranges are used is decided on the calibration data too, never on the
evaluation data: both files are built and the one whose outputs stay closer to the float file's
on the calibration samples wins (`choose`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .data import Dataset
from .statistics import Histogram, Statistics

log = logging.getLogger("tfquant")
LEVELS = 255


def mse_ranges(stats: Statistics) -> dict[int, tuple[float, float]]:
    """Per activation tensor (by index in the calibrated file), the range of least expected int8 error."""
    return {index: _best_range(h) for index, h in stats.histograms.items() if h.counts.sum()}


def _best_range(histogram: Histogram) -> tuple[float, float]:
    """The [low, high] (zero inside) of least rounding-plus-clipping error for this histogram."""
    centers, counts = histogram.centers(), histogram.counts.astype(np.float64)
    total = counts.sum()
    low, high = histogram.low, histogram.high
    best, best_error = (low, high), _error(centers, counts, low, high) / total
    for shrink in np.linspace(0.3, 0.99, 24):
        for lo, hi in ((low * shrink, high * shrink), (low, high * shrink), (low * shrink, high)):
            lo, hi = min(lo, 0.0), max(hi, 0.0)
            if hi - lo <= 0:
                continue
            error = _error(centers, counts, lo, hi) / total
            if error < best_error * 0.98:  # clip only for a clear gain
                best, best_error = (lo, hi), error
    return best


def _error(centers: np.ndarray, counts: np.ndarray, low: float, high: float) -> float:
    step = (high - low) / LEVELS
    clipped = np.clip(centers, low, high)
    inside = counts[(centers >= low) & (centers <= high)].sum()
    return float(np.sum(counts * (centers - clipped) ** 2) + inside * step * step / 12)


def apply_ranges(calibrated: bytes, ranges: dict[int, tuple[float, float]]) -> bytes:
    """The calibrated file with these activation ranges in place of its min/max."""
    from .legalize import _read, _write

    model = _read(calibrated)
    tensors = model.subgraphs[0].tensors
    for index, (low, high) in ranges.items():
        tensors[index].quantization.min, tensors[index].quantization.max = [float(low)], [float(high)]
    return _write(model)


@dataclass(frozen=True)
class Choice:
    method: str  # one of types.RANGE_METHODS
    calibrated: bytes
    errors: dict[str, float]  # per method: the outputs' error against float on the calibration samples


def candidate_ranges(stats: Statistics) -> dict[str, dict[int, tuple[float, float]]]:
    """Per method other than min/max, the activation ranges it gives (by tensor index)."""
    return {"mse": mse_ranges(stats), "average": stats.average_extremes()}


def choose(float_tflite: bytes, calibrated: bytes, calibration: Dataset, stats: Statistics,
           quantize: Callable[[bytes], bytes], *, method: str = "auto") -> Choice:
    """The calibration to quantize from: min/max, MSE-optimal ranges, the average of each sample's
    extremes, or (auto) whichever keeps the quantized outputs closest to the float file's on the
    calibration samples."""
    if method == "minmax" or not stats.histograms:
        return Choice("minmax", calibrated, {})
    candidates = {"minmax": calibrated}
    for name, found in candidate_ranges(stats).items():
        if method in ("auto", name):
            candidates[name] = apply_ranges(calibrated, found)
    if method != "auto":
        return Choice(method, candidates[method], {})
    from .harness import Runner

    reference = Runner(float_tflite).predict(calibration, progress=False)
    errors = {name: _output_error(reference, Runner(quantize(candidate)).predict(calibration, progress=False))
              for name, candidate in candidates.items()}
    chosen = min(errors, key=lambda name: (errors[name], name != "minmax"))
    log.info("activation ranges: %s (output error on the calibration data: %s)", chosen,
             ", ".join(f"{name} {error:.4g}" for name, error in errors.items()))
    return Choice(chosen, candidates[chosen], errors)


def _output_error(reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> float:
    """Mean over outputs of how far the quantized outputs stray from float, each by its task.

    A classifier's error is the share of samples whose top-1 class changed (what its accuracy
    feels), with the RMSE of its probabilities as a tie-break; an embedding's, one minus the mean
    cosine; anything else, the RMSE relative to the float output's spread.
    """
    from .tasks import detect

    errors = []
    for name, expected in reference.items():
        got = outputs[name].astype(np.float64)
        spread = float(np.std(expected)) or 1.0
        rmse = float(np.sqrt(np.mean((got - expected) ** 2))) / spread
        task = detect(expected)
        if task == "classification" and expected.ndim >= 2 and expected.shape[-1] > 1:
            changed = float(np.mean(got.argmax(axis=-1) != expected.argmax(axis=-1)))
            errors.append(changed + 0.01 * rmse)
        elif task == "embedding":
            rows, ref = got.reshape(-1, got.shape[-1]), expected.reshape(-1, expected.shape[-1]).astype(np.float64)
            cosine = np.sum(rows * ref, axis=1) / np.maximum(np.linalg.norm(rows, axis=1) * np.linalg.norm(ref, axis=1), 1e-12)
            errors.append(1.0 - float(np.mean(cosine)))
        else:
            errors.append(rmse)
    return float(np.mean(errors))

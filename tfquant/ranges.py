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
METHODS = ("auto", "minmax", "mse")


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
    method: str  # "minmax" or "mse"
    calibrated: bytes
    errors: dict[str, float]  # per method: the outputs' error against float on the calibration samples


def choose(float_tflite: bytes, calibrated: bytes, calibration: Dataset, stats: Statistics,
           quantize: Callable[[bytes], bytes], *, method: str = "auto") -> Choice:
    """The calibration to quantize from: min/max, MSE-optimal ranges, or (auto) whichever keeps the
    quantized outputs closer to the float file's on the calibration samples."""
    if method == "minmax" or not stats.histograms:
        return Choice("minmax", calibrated, {})
    refined = apply_ranges(calibrated, mse_ranges(stats))
    if method == "mse":
        return Choice("mse", refined, {})
    from .harness import Runner

    reference = Runner(float_tflite).predict(calibration, progress=False)
    errors = {}
    for name, candidate in (("minmax", calibrated), ("mse", refined)):
        outputs = Runner(quantize(candidate)).predict(calibration, progress=False)
        errors[name] = _output_error(reference, outputs)
    chosen = "mse" if errors["mse"] < errors["minmax"] else "minmax"
    log.info("activation ranges: %s (output error on the calibration data: min/max %.4g, MSE %.4g)",
             chosen, errors["minmax"], errors["mse"])
    return Choice(chosen, refined if chosen == "mse" else calibrated, errors)


def _output_error(reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> float:
    """Mean over outputs of the RMSE against float, relative to each float output's spread."""
    errors = []
    for name, expected in reference.items():
        spread = float(np.std(expected)) or 1.0
        errors.append(float(np.sqrt(np.mean((outputs[name].astype(np.float64) - expected) ** 2))) / spread)
    return float(np.mean(errors))


def method_of(name: Optional[str]) -> str:
    from .errors import RecipeError

    name = name or "auto"
    if name not in METHODS:
        raise RecipeError(f"ranges: unknown method {name!r}; expected one of: {', '.join(METHODS)}")
    return name

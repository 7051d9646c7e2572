"""tfquant: a trained Keras model in, a verified fully integer (int8) .tflite file out.

tfquant needs Keras 2 (`tf_keras`) for tensorflow-model-optimization: importing a module that
uses TensorFlow sets `TF_USE_LEGACY_KERAS=1` (unless you set it) before TensorFlow is imported,
so `tf.keras` is Keras 2 in this process. Keras 3 models are still accepted by `quantize`.

The interpreter-only entry points (`evaluate`, `benchmark`, `inspect`) load no TensorFlow.

Example:
    >>> import tfquant
    >>> result = tfquant.quantize("model.keras", "calib.npz", eval_data="test.npz")  # doctest: +SKIP
    >>> result.save("model_int8.tflite")                                              # doctest: +SKIP
"""

from __future__ import annotations

import importlib

from ._version import __version__
from .errors import (
    AccuracyBudgetError,
    ConversionError,
    DataError,
    GateError,
    ModelLoadError,
    OutputError,
    RecipeError,
    StrictModeError,
    TFLiteFileError,
    TfquantError,
)
# These bind the functions over the submodules of the same name (both import no TensorFlow).
from .diagnose import diagnose
from .inspect import inspect
from .types import BenchmarkResult, IOType, Metrics, Mode, ModelInfo, Recipe, Report

# Public name -> module that defines it; imported on first use so that `tfquant inspect`
# and `tfquant bench` do not pay for (or measure) a TensorFlow import.
_LAZY = {
    "quantize": "pipeline",
    "qat": "optimize.qat",
    "prune": "optimize.prune",
    "cluster": "optimize.cluster",
    "collaborate": "optimize.cluster",
    "QuantizationResult": "pipeline",
    "evaluate": "harness",
    "load_model": "models",
    "load_data": "data",
    "keras": "_keras",
}


def benchmark(tflite, *, runs: int = 50, warmup: int = 5, threads=None, compare=None):
    """Latency of a .tflite file (and, interleaved in the same run, of `compare`).

    Returns one `BenchmarkResult`, or a pair `(result, compare_result)` when `compare` is given.
    """
    from .timing import benchmark as _bench

    results = _bench(tflite, *([compare] if compare is not None else []), runs=runs, warmup=warmup, num_threads=threads)
    return results[0] if compare is None else tuple(results)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tfquant' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "__version__", "quantize", "qat", "prune", "cluster", "collaborate", "diagnose", "evaluate", "benchmark", "inspect", "load_model", "load_data",
    "QuantizationResult", "Recipe", "Report", "Metrics", "ModelInfo", "BenchmarkResult", "Mode", "IOType",
    "TfquantError", "ModelLoadError", "DataError", "RecipeError", "ConversionError", "TFLiteFileError",
    "OutputError", "GateError", "AccuracyBudgetError", "StrictModeError",
]

"""The second quantizer: LiteRT Quantizer (`ai-edge-quantizer`) on the same float file.

Google's recommended path for a float `.tflite`; it needs no TensorFlow. Recipe
`static_wi8_ai8`: int8 symmetric weights per output channel, int8 activations from min/max
calibration, int32 biases. tfquant gives it the same calibration samples as TFLiteConverter's
quantizer, keyed by the signature's input names. The file's IO is int8 unless the recipe asks
for float32 (then LiteRT adds a QUANTIZE after each input and a DEQUANTIZE before each output).

LiteRT Quantizer leaves an op it cannot quantize in float without a word; tfquant's census
(`inspect`) finds those, so such a file is never called fully integer.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Iterable

import numpy as np

from .console import captured_stderr
from .errors import ConversionError, RecipeError, called
from .export import SIGNATURE, conversion_failure
from .legalize import shapes_read_integers
from .limits import refuse_unrunnable
from .types import IOType, Recipe

THREADS = 2


def available() -> bool:
    try:
        import ai_edge_quantizer  # noqa: F401
    except ImportError:
        return False
    return True


def quantize(float_tflite: bytes, samples: Iterable[dict[str, np.ndarray]], recipe: Recipe, *,
             source: str = "<model>") -> bytes:
    """The int8 file LiteRT Quantizer makes of `float_tflite`, calibrated on `samples` (batches of one)."""
    try:
        from ai_edge_quantizer import algorithm_manager, qtyping
        from ai_edge_quantizer import quantizer as litert_quantizer
        from ai_edge_quantizer import recipe as litert_recipe
    except ImportError as exc:
        raise RecipeError(f"quantizer litert needs the ai-edge-quantizer package: pip install 'tfquant[litert]' "
                          f"({exc})") from None
    quantizer = litert_quantizer.Quantizer(bytes(float_tflite))
    quantizer.load_quantization_recipe(litert_recipe.static_wi8_ai8())
    if recipe.io is IOType.FLOAT32:
        for edge in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
            quantizer.update_quantization_recipe(".*", edge, algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
    batches = [dict(sample) for sample in samples]
    # Its progress bars and the interpreter's notices go to a captured stderr, shown only on failure.
    with captured_stderr() as log, warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            ranges = quantizer.calibrate({SIGNATURE: batches}, num_threads=THREADS)
            result = quantizer.quantize(ranges, enable_progress_report=False)
        except Exception as exc:  # the quantizer raises plain ValueError/KeyError/RuntimeError on what it cannot take
            raise ConversionError(conversion_failure(source, "a float file LiteRT Quantizer can quantize to int8",
                                                     exc, log.read())) from None
    quantized = shapes_read_integers(bytes(result.quantized_model))[0]
    refuse_unrunnable(quantized, source, "an int8 file from LiteRT Quantizer that the interpreter's kernels take",
                      f"; tfquant's own quantizer ({called('quantizer')} converter) widens such ranges")
    return quantized

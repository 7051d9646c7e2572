"""Helpers of the end-to-end tests: holding a converted file to its promises, counting expensive steps."""

from __future__ import annotations

import collections
import contextlib
from unittest import mock

from tfquant.inspect import FLOAT_DTYPES
from tfquant.types import ModelInfo, Report

INTEGER_DTYPES = {"int8", "uint8", "int16", "int32", "int64", "bool"}


def assert_every_op_integer(info: ModelInfo) -> None:
    """Every tensor of every op is an integer type, apart from the float IO adapters."""
    for op in info.ops:
        dtypes = set(op.input_dtypes) | set(op.output_dtypes)
        if op.name in ("QUANTIZE", "DEQUANTIZE") and not op.float:
            continue
        assert dtypes <= INTEGER_DTYPES, f"{op.name}#{op.index} has {sorted(dtypes & FLOAT_DTYPES)}"
    assert info.fully_integer and info.float_ops == []


def assert_quantized_close(report: Report, *, max_drop: float, max_bytes_ratio: float) -> None:
    """Accuracy within `max_drop` of float and bytes at most `max_bytes_ratio` of float, as measured."""
    assert report.float_file.accuracy is not None and report.quantized.accuracy is not None
    drop = report.float_file.accuracy - report.quantized.accuracy
    assert abs(drop - report.accuracy_drop) < 1e-6
    assert drop <= max_drop, f"drop {drop:.4f} > {max_drop}"
    ratio = report.quantized.tflite_bytes / report.float_file.tflite_bytes
    assert ratio <= max_bytes_ratio, f"bytes ratio {ratio:.3f} > {max_bytes_ratio}"


@contextlib.contextmanager
def counted():
    """How often the expensive steps ran: the export, calibration, and quantizing from a calibration."""
    calls: collections.Counter = collections.Counter()

    def wrap(module, name, key):
        original = getattr(module, name)

        def counting(*args, **kwargs):
            calls[key] += 1
            return original(*args, **kwargs)

        return mock.patch.object(module, name, counting)

    from tfquant import convert as convert_stage
    from tfquant import pipeline, prepare

    with wrap(prepare, "export", "export"), wrap(pipeline, "calibration_for", "calibrate"), \
            wrap(convert_stage, "quantize_calibrated", "quantize"):
        yield calls

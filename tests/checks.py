"""Helpers of the end-to-end tests: holding a converted file to its promises, counting expensive steps."""

from __future__ import annotations

import collections
import contextlib
from unittest import mock

import numpy as np
import pytest

import tfquant
from tfquant.inspect import FLOAT_DTYPES
from tfquant.types import ModelInfo, Report

INTEGER_DTYPES = {"int8", "uint8", "int16", "int32", "int64", "bool"}


def assert_every_op_integer(info: ModelInfo) -> None:
    """Every tensor of every op is an integer type, apart from the float IO adapters (a QUANTIZE after a
    float input, a DEQUANTIZE before a float output, a float input's normalization, `tfquant.float_io`)."""
    for op in info.ops:
        dtypes = set(op.input_dtypes) | set(op.output_dtypes)
        if op.name in ("QUANTIZE", "DEQUANTIZE", "SUB", "ADD", "MUL", "DIV") and not op.float:
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


def constant_bytes(tflite: bytes) -> int:
    """Bytes of a file's constant buffers (weights, biases, shapes), its model metadata's not counted."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(tflite, 0)
    metadata = {m.buffer for m in model.metadata or []}
    return sum(len(b.data) for i, b in enumerate(model.buffers) if i not in metadata and b.data is not None)


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

    with wrap(prepare, "export", "export"), \
            wrap(pipeline, "calibration_for", "calibrate"), wrap(convert_stage, "quantize_calibrated", "quantize"):
        yield calls


def trained_and_quantized(k, model, digits, tmp_path, *, epochs: int, batch_size: int = 32, samples=None):
    """Fit `model` on the digits, save it as .keras and convert the file with default options."""
    model.compile(optimizer=k.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(digits["x"][:samples], digits["y"][:samples], batch_size=batch_size, epochs=epochs, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    np.savez(tmp_path / "calib.npz", image=digits["x"][:200])
    np.savez(tmp_path / "test.npz", image=digits["x_test"], y=digits["y_test"])
    return tfquant.quantize(path, tmp_path / "calib.npz", eval_data=tmp_path / "test.npz", bench_runs=1,
                            diagnose=False)


def assert_int8_follows_keras(model, result, digits, *, least: float) -> None:
    """Fully integer; the float file as accurate as Keras on the test digits (and above `least`); int8 agreeing
    with float on 97 % of them or more."""
    assert_every_op_integer(result.info)
    keras_accuracy = float(np.mean(model.predict(digits["x_test"], verbose=0).argmax(axis=1) == digits["y_test"]))
    output = result.report.outputs[0]
    assert output.float.accuracy == pytest.approx(keras_accuracy, abs=1e-9) and keras_accuracy > least
    assert output.quantized.agreement >= 0.97, output.quantized.agreement


def masked_attention_classifier(k, tokens, *, epochs: int):
    """Token ids -> Embedding(mask_zero) -> Dense -> Attention under the padding mask, beside its input -> 10
    classes, fitted on `tokens` (`tfquant.zoo.tokens()`)."""
    k.utils.set_random_seed(0)
    inputs = k.Input((32,), dtype="int32", name="tokens")
    h = k.layers.Dense(16)(k.layers.Embedding(18, 16, mask_zero=True)(inputs))
    x = k.layers.Flatten()(k.layers.Concatenate()([k.layers.Attention()([h, h]), h]))
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax", name="probs")(x))
    model.compile(optimizer=k.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(tokens.train["tokens"], tokens.train["y"], batch_size=32, epochs=epochs, verbose=0)
    return model

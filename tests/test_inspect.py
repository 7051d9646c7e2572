"""The op census on files tfquant made and on files it did not."""

from __future__ import annotations

import pytest

from tfquant import inspect
from tfquant._keras import tf
from tfquant.errors import TFLiteFileError


def test_per_channel_weights_and_io_quantization(tflite_files):
    info = inspect(tflite_files["int8"])
    conv = next(op for op in info.ops if op.name == "CONV_2D")
    weights = info.tensors[conv.inputs[1]]
    assert weights.dtype == "int8" and weights.constant
    assert len(weights.quantization.scale) == 32 and weights.quantization.quantized_dimension == 0
    bias = info.tensors[conv.inputs[2]]
    assert bias.dtype == "int32"
    (inp,) = info.inputs
    assert inp.shape_signature == [-1, 8, 8, 1] and inp.quantization.zero_point == [-128]
    assert inp.quantization.scale[0] == pytest.approx(1 / 255, rel=1e-3)  # calibrated range of [0, 1] inputs
    assert info.bytes == tflite_files["int8"].stat().st_size


def test_file_made_by_plain_converter(digits_model):
    """A dynamic-range file from TensorFlow's own converter: the float ops are named."""
    converter = tf.lite.TFLiteConverter.from_keras_model(digits_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    info = inspect(converter.convert())
    assert not info.fully_integer
    assert info.float_ops == ["CONV_2D#0", "CONV_2D#1", "MAX_POOL_2D#2", "RESHAPE#3", "FULLY_CONNECTED#4",
                              "FULLY_CONNECTED#5", "SOFTMAX#6"]
    fc = next(op for op in info.ops if op.name == "FULLY_CONNECTED")
    assert fc.input_dtypes[:2] == ["float32", "int8"]


def test_truncated_file(tflite_files, tmp_path):
    data = tflite_files["int8"].read_bytes()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[:600])
    with pytest.raises(TFLiteFileError, match="cut.tflite: expected a readable TFLite flatbuffer"):
        inspect(cut)
    with pytest.raises(TFLiteFileError, match="expected a .tflite file, found no such file"):
        inspect(tmp_path / "missing.tflite")

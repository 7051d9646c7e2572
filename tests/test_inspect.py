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
    # The IO by the names its signature binds, not the graph's tensor names.
    assert [(t.name, info.tensors[t.index].name) for t in info.inputs + info.outputs] == \
        [("image", "serving_default_image:0"), ("probs", "StatefulPartitionedCall:0")]


def test_a_keras3_models_io_is_listed_by_its_signature_names(tmp_path, capsys):
    """A Keras 3 model's output tensor is "Identity" in the file; `tfquant inspect` lists the output by the
    name its signature binds, as the report does."""
    import numpy as np

    import tfquant
    from tfquant._keras import keras3
    from tfquant.cli import main, parse_args

    k = keras3()
    inputs = k.Input((4,), name="feats")
    result = tfquant.quantize(k.Model(inputs, k.layers.Dense(3, name="score")(inputs)),
                              np.random.default_rng(0).random((50, 4), np.float32), bench_runs=1, diagnose=False)
    (output,) = result.info.outputs
    assert (output.name, result.info.tensors[output.index].name) == ("score", "Identity")
    path = tmp_path / "score.tflite"
    path.write_bytes(result.tflite)
    assert main(parse_args(["inspect", str(path)])) == 0
    io = capsys.readouterr().out.splitlines()[1:3]
    assert [line.split()[:2] for line in io] == [["input", "feats"], ["output", "score"]]


def test_truncated_file(tflite_files, tmp_path):
    data = tflite_files["int8"].read_bytes()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[:600])
    with pytest.raises(TFLiteFileError, match="cut.tflite: expected a readable TFLite flatbuffer"):
        inspect(cut)
    with pytest.raises(TFLiteFileError, match="expected a .tflite file, found no such file"):
        inspect(tmp_path / "missing.tflite")


def test_a_file_viewed_again_is_parsed_once_and_a_file_read_is_the_readers_own(tflite_files):
    """The passes that only read a file view it: parsed once for all of them. A pass that edits reads its own."""
    from unittest import mock

    from ai_edge_litert.tools import flatbuffer_utils

    from tfquant import flatbuffer

    data = tflite_files["int8"].read_bytes()
    with mock.patch.object(flatbuffer_utils, "read_model_from_bytearray",
                           wraps=flatbuffer_utils.read_model_from_bytearray) as parse:
        views = [flatbuffer.view_model(data), flatbuffer.view_model(bytearray(data))]  # by content, not object
        assert parse.call_count <= 1 and views[0] is views[1]  # none when an earlier test viewed this file
        edited = flatbuffer.read_model(data)
        assert parse.call_count <= 2 and edited is not views[0]
    edited.subgraphs[0].tensors[0].name = b"edited"
    assert flatbuffer.text(flatbuffer.view_model(data).subgraphs[0].tensors[0].name) != "edited"
    assert flatbuffer.write_model(views[0]) == flatbuffer.write_model(flatbuffer.read_model(data))


def test_a_float_op_the_quantizer_has_an_integer_form_of_is_not_said_to_lack_one():
    """An op left float is said to have no integer form only where the quantizer has none."""
    from tfquant.inspect import explain_float_ops
    from tfquant.types import ModelInfo, OpInfo, TensorInfo

    tensors = [TensorInfo(i, f"model/lstm/t{i}", "float32", [1, 8], [1, 8], False, None) for i in range(3)]
    ops = [OpInfo(0, 0, "TRANSPOSE", [0], [1], ["float32"], ["float32"], True),
           OpInfo(1, 0, "BUCKETIZE", [1], [2], ["float32"], ["int32"], True),
           OpInfo(2, 0, "CUMSUM", [1], [2], ["float32"], ["float32"], True)]
    info = ModelInfo(source="m.tflite", bytes=0, ops=ops, tensors=tensors, inputs=[], outputs=[], fully_integer=False,
                     float_ops=["TRANSPOSE#0", "BUCKETIZE#1", "CUMSUM#2"])
    reasons = [op.reason for op in explain_float_ops(info, ["lstm"])]
    assert reasons[0] == ("TFLite's quantizer left it float, though it has an integer form of TRANSPOSE: it found no "
                          "int8 scales to give it here")
    assert reasons[1].startswith("Discretization's bucketing") and reasons[2] == "TFLite's quantizer has no integer " \
        "form of CUMSUM"
    litert = explain_float_ops(info, ["lstm"], quantizer="litert")[0].reason
    assert litert == "LiteRT Quantizer has no integer form of TRANSPOSE"

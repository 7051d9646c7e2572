"""MSE weight scales: a clipped channel scale where it rounds the weights closer, rewritten in place."""

from __future__ import annotations

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.tools import flatbuffer_utils

from tfquant.flatbuffer import WEIGHT_OPS
from tfquant.weights import _squared_error, best_scales


def test_a_long_tailed_channel_is_clipped_and_an_even_one_keeps_its_largest_weight():
    rng = np.random.default_rng(0)
    even = np.linspace(-1.0, 1.0, 8192)  # evenly spread: max|w| / 127 is already the best grid
    tailed = rng.laplace(0.0, 0.05, 8192)  # a few far-out weights set max|w| for thousands of small ones
    kernel = np.stack([even, tailed], axis=-1).reshape(64, 128, 2)  # channels last, as a depthwise kernel
    scales = best_scales(kernel, axis=2)
    plain = np.abs(kernel).reshape(-1, 2).max(axis=0) / 127
    assert scales[0] == pytest.approx(plain[0])
    assert scales[1] < 0.98 * plain[1]
    errors, plain_errors = _squared_error(np.stack([even, tailed]), scales), _squared_error(np.stack([even, tailed]), plain)
    assert errors[1] < 0.95 * plain_errors[1]
    # one outlier among few weights: clipping it costs more than the finer grid saves
    few = rng.normal(0.0, 0.05, (1, 64))
    few[0, 7] = 1.0
    assert best_scales(few, axis=0)[0] == pytest.approx(1.0 / 127)


def _weight_ops(tflite: bytes) -> dict[str, tuple]:
    """Per weight op (by output name): float weights, or int8 weights with scales, and the bias with its scales."""
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    graph = model.subgraphs[0]
    codes = [flatbuffer_utils.get_builtin_code_from_operator_code(c) for c in model.operatorCodes]
    found = {}
    for op in graph.operators:
        if codes[op.opcodeIndex] not in WEIGHT_OPS:
            continue
        tensors = [graph.tensors[i] for i in op.inputs]
        values = [np.frombuffer(bytes(model.buffers[t.buffer].data), _DTYPE[t.type]).reshape(t.shape)
                  for t in tensors[1:3]]
        found[graph.tensors[op.outputs[0]].name.decode()] = (tensors, values)
    return found


_DTYPE = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT8: np.int8, schema.TensorType.INT32: np.int32}


def test_mse_scales_round_the_weights_closer_and_keep_the_bias_on_input_times_weight_scale(
        model_files, train_npz, test_npz, int8_result):
    import tfquant

    result = tfquant.quantize(model_files["keras"], train_npz, eval_data=test_npz, bench_runs=1, diagnose=False,
                              weight_scales="mse", bias_correction=False)
    assert result.report.recipe.weight_scales == "mse"
    assert result.report.quantized.fully_integer
    exact = _weight_ops(result.float_tflite)
    plain, clipped = _weight_ops(int8_result.tflite), _weight_ops(result.tflite)
    assert set(plain) == set(clipped) == set(exact) and len(exact) >= 3
    closer = 0
    for name, (tensors, (weights, bias)) in clipped.items():
        float_weights = exact[name][1][0].astype(np.float64)
        axis = tensors[1].quantization.quantizedDimension
        shape = [1] * weights.ndim
        shape[axis] = -1

        def error(tensor, values):
            return np.sum((values * np.asarray(tensor.quantization.scale).reshape(shape) - float_weights) ** 2)

        assert error(tensors[1], weights) <= error(plain[name][0][1], plain[name][1][0]) * (1 + 1e-9), name
        closer += error(tensors[1], weights) < 0.99 * error(plain[name][0][1], plain[name][1][0])
        # TFLite requires bias scale = input scale x weight scale, channel by channel
        np.testing.assert_allclose(tensors[2].quantization.scale,
                                   tensors[0].quantization.scale[0] * np.asarray(tensors[1].quantization.scale),
                                   rtol=1e-6)
        float_bias = exact[name][1][1].astype(np.float64)
        # put on the finer grid from the int32 the quantizer rounded: within one step of the coarser grid
        np.testing.assert_allclose(bias * np.asarray(tensors[2].quantization.scale), float_bias, rtol=0,
                                   atol=float(np.max(plain[name][0][2].quantization.scale)))
    assert closer >= 1
    drop = result.report.float_file.accuracy - result.report.quantized.accuracy
    assert drop <= 0.01, drop

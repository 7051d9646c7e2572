"""Bias correction: the shift it folds into each bias is the mean shift weight rounding causes."""

from __future__ import annotations

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from tfquant._keras import tf
from tfquant.bias import _shift


@pytest.mark.parametrize("same, stride, dilation, size, kernel", [
    (True, 1, 1, 2, 5),   # a 2x2 map under a 5x5 kernel: most taps read padding
    (True, 2, 1, 7, 3),
    (False, 1, 1, 6, 3),
    (True, 1, 2, 5, 3),
])
def test_a_conv_shift_is_the_mean_over_output_positions_padding_included(same, stride, dilation, size, kernel):
    rng = np.random.default_rng(0)
    means = rng.normal(1.0, 0.5, (size, size, 4))
    padding = "SAME" if same else "VALID"
    options = (same, stride, stride, dilation, dilation)
    delta = rng.normal(0, 0.01, (6, kernel, kernel, 4))  # CONV_2D [out, kh, kw, in]
    expected = tf.nn.conv2d(means[None], np.transpose(delta, (1, 2, 3, 0)), stride, padding,
                            dilations=dilation).numpy()[0].mean(axis=(0, 1))
    np.testing.assert_allclose(_shift(schema.BuiltinOperator.CONV_2D, delta, means, options), expected, rtol=1e-9)
    depthwise = rng.normal(0, 0.01, (1, kernel, kernel, 8))  # multiplier 2
    expected = tf.nn.depthwise_conv2d(means[None], depthwise[0].reshape(kernel, kernel, 4, 2), (1, stride, stride, 1),
                                      padding, dilations=(dilation, dilation)).numpy()[0].mean(axis=(0, 1))
    np.testing.assert_allclose(_shift(schema.BuiltinOperator.DEPTHWISE_CONV_2D, depthwise, means, options), expected,
                               rtol=1e-9)
    # Taken as constant over space, the border taps are wrong wherever padding is read.
    flat = _shift(schema.BuiltinOperator.CONV_2D, delta, means.mean(axis=(0, 1)), options)
    assert same is False or not np.allclose(flat, _shift(schema.BuiltinOperator.CONV_2D, delta, means, options))

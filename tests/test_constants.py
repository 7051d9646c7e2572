"""Ops that read only constants, which the converter leaves in the file: computed once and stored as constants."""

from __future__ import annotations

import numpy as np
import pytest

import tfquant
from tfquant import constants
from tfquant.errors import ConversionError
from tfquant.data import Dataset
from tfquant.harness import Runner


def images(digits) -> tuple[np.ndarray, np.ndarray]:
    """The digits at 16×16 (each pixel twice in both directions)."""
    def up(x):
        return np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)

    return up(digits["x"]), up(digits["x_test"])


def patch_classifier(k, x: np.ndarray, labels: np.ndarray, patches):
    """A Vision Transformer's front: the image cut into 4×4 patches (by `patches`), each projected, then
    a dense head."""
    k.utils.set_random_seed(0)

    class Patches(k.layers.Layer):
        def call(self, batch):
            return patches(batch)

    inputs = k.Input(x.shape[1:], name="image")
    h = k.layers.Dense(16, activation="relu")(Patches()(inputs))
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax", name="probs")(k.layers.Flatten()(h)))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, labels, epochs=8, batch_size=32, verbose=0)
    return model


def test_keras3_extract_patches_kernel_is_stored_as_a_weight(digits):
    """Keras 3's `ops.image.extract_patches` convolves with an identity kernel it builds in the graph
    (MATRIX_DIAG, RESHAPE, TRANSPOSE). Left computed, int8 gave that kernel an activation's zero point
    (-128), which the int8 CONV_2D refuses: the file did not run."""
    from tfquant._keras import keras3

    k = keras3()
    x, test = images(digits)
    model = patch_classifier(k, x, digits["y"], lambda batch: k.ops.reshape(
        k.ops.image.extract_patches(batch, 8), (-1, 4, 64)))
    result = tfquant.quantize(model, x, eval_data=(test, digits["y_test"]), bench_runs=1)
    (output,) = result.report.outputs
    assert result.info.fully_integer and output.float.accuracy > 0.9
    assert output.quantized.agreement >= 0.97, output.quantized.agreement
    kinds = [op.name for op in result.info.ops]
    assert "MATRIX_DIAG" not in kinds and kinds.count("CONV_2D") == 1, kinds
    (note,) = [n for n in result.report.export.notes if "read only constants" in n]
    assert note.startswith("3 op(s) that read only constants (MATRIX_DIAG, RESHAPE, TRANSPOSE) computed once")
    folded, (done,) = constants.fold(result.float_tflite)  # the export, as measured against: the same function
    assert done.ops == 3 and len(folded) > len(result.float_tflite)  # the kernel now stored: 64×64 floats
    few = Dataset("test", {"image": test[:16]})
    assert np.allclose(Runner(folded).predict(few)["probs"], Runner(result.float_tflite).predict(few)["probs"],
                       rtol=0, atol=1e-6)


def test_a_file_without_constant_ops_is_left_as_it_is(int8_result):
    float_tflite = int8_result.float_tflite
    assert constants.fold(float_tflite) == (float_tflite, [])


def test_tf_image_extract_patches_is_refused_with_the_way_through(digits):
    """tf.image.extract_patches (tf_keras) has no TFLite builtin; the error says how to take the same
    patches, and that way converts fully integer."""
    from tfquant._keras import keras, tf

    x, test = images(digits)
    model = patch_classifier(keras, x, digits["y"], lambda batch: tf.reshape(tf.image.extract_patches(
        batch, [1, 4, 4, 1], [1, 4, 4, 1], [1, 1, 1, 1], "VALID"), (-1, 16, 16)))
    with pytest.raises(ConversionError) as refused:
        tfquant.quantize(model, x, bench_runs=1)
    assert "'tf.ExtractImagePatches' op is neither a custom op nor a flex op" in str(refused.value)
    assert "x → reshape(N, H/p, p, W/p, p, C) → transpose(0, 1, 3, 2, 4, 5) → reshape(N, H/p·W/p, p·p·C)" \
        in str(refused.value)

    def reshaped(batch):
        cut = tf.transpose(tf.reshape(batch, (-1, 4, 4, 4, 4, 1)), (0, 1, 3, 2, 4, 5))
        return tf.reshape(cut, (-1, 16, 16))

    same = reshaped(tf.constant(x[:4])).numpy()
    assert np.array_equal(same, tf.reshape(tf.image.extract_patches(
        x[:4], [1, 4, 4, 1], [1, 4, 4, 1], [1, 1, 1, 1], "VALID"), (-1, 16, 16)).numpy())
    result = tfquant.quantize(patch_classifier(keras, x, digits["y"], reshaped), x,
                              eval_data=(test, digits["y_test"]), bench_runs=1)
    assert result.info.fully_integer and result.report.outputs[0].quantized.agreement >= 0.97

"""Model loading: every accepted format, Keras 2 and Keras 3, and refusal of code."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import tfquant
from tfquant.errors import ModelLoadError
from tfquant.model_config import read_config
from tfquant.models import load_model

from checks import assert_every_op_integer, trained_and_quantized


@pytest.mark.parametrize("fmt, flavor", [("keras", "keras2"), ("h5", "keras2"), ("saved_model", "saved_model")])
def test_formats_give_the_same_signature(model_files, fmt, flavor):
    loaded = load_model(model_files[fmt])
    assert loaded.flavor == flavor
    assert loaded.inputs[0].shape == (None, 8, 8, 1)
    assert loaded.outputs[0].shape == (None, 10)


def test_keras3_file_converts_to_full_int8(digits, tmp_path, train_npz, test_npz):
    """A .keras file saved by Keras 3 (which tf_keras cannot load) takes the supported path."""
    from tfquant._keras import keras3

    k3 = keras3()
    k3.utils.set_random_seed(0)
    model = k3.Sequential([
        k3.Input((8, 8, 1)), k3.layers.Conv2D(16, 3, activation="relu"), k3.layers.Flatten(),
        k3.layers.Dense(10, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(digits["x"], digits["y"], epochs=3, verbose=0)
    path = tmp_path / "k3.keras"
    model.save(path)
    loaded = load_model(path)
    assert loaded.flavor == "keras3" and loaded.outputs[0].shape == (None, 10)
    result = tfquant.quantize(path, train_npz, eval_data=test_npz, calib_samples=100, bench_runs=2)
    assert_every_op_integer(result.info)
    assert result.report.float_file.accuracy > 0.9
    assert result.report.accuracy_drop <= 0.02


def test_lambda_in_keras_file_is_refused(tmp_path):
    from tfquant._keras import keras

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t + 1.0)(inputs))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(ModelLoadError, match="lambda.keras: expected a model without code"):
        load_model(path)
    assert load_model(path, safe_mode=False).flavor == "keras2"


def test_folder_without_saved_model(tmp_path):
    with pytest.raises(ModelLoadError, match="expected a SavedModel folder \\(with saved_model.pb\\), found a folder without"):
        load_model(tmp_path)


def test_unbuilt_model(tmp_path):
    from tfquant._keras import keras

    with pytest.raises(ModelLoadError, match=r"<keras model>: expected a model with a known input shape \(Input layers, "
                                             r"or a subclassed model called once on a batch of one tensor\), found a "
                                             r"model never called so"):
        load_model(keras.Sequential([keras.layers.Dense(3)]))
    with pytest.raises(ModelLoadError, match="model: expected a Keras model .* found ndarray"):
        load_model(np.zeros(3))


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_layers_tf_keras_applications_leave_unregistered_load_back(tmp_path, fmt):
    """ConvNeXt's LayerScale and StochasticDepth are defined in tf_keras.applications without being
    registered: tf_keras alone cannot load the file it saved ('str' object is not callable)."""
    import tf_keras as k
    from tf_keras.src.applications.convnext import LayerScale, StochasticDepth

    k.utils.set_random_seed(0)
    inputs = k.Input((8, 8, 1))
    x = k.layers.Conv2D(4, 3, name="conv")(inputs)
    x = LayerScale(0.5, 4, name="scale")(x)
    x = StochasticDepth(0.1, name="drop_path")(x)
    model = k.Model(inputs, k.layers.Dense(3, name="head")(k.layers.Flatten()(x)))
    path = tmp_path / f"model.{fmt}"
    model.save(path)
    loaded = load_model(path)
    assert loaded.flavor == "keras2"
    assert [type(layer).__name__ for layer in loaded.keras_model.layers[2:4]] == ["LayerScale", "StochasticDepth"]
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    np.testing.assert_array_equal(loaded.keras_model(x).numpy(), model(x).numpy())


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_tensorflow_initializers_in_a_tf_keras_file_load_in_safe_mode(tmp_path, fmt):
    """tf_keras' EfficientNetV2 builds biases with `tf.constant_initializer`, which its file stores by
    TensorFlow's module (tensorflow.python.ops.init_ops_v2): a weight initializer, not code."""
    import tensorflow as tf
    import tf_keras as k

    k.utils.set_random_seed(0)
    inputs = k.Input((8, 8, 1))
    x = k.layers.Conv2D(4, 3, bias_initializer=tf.constant_initializer(0.0), name="conv")(inputs)
    x = k.layers.Dense(3, kernel_initializer=tf.keras.initializers.VarianceScaling(2.0), name="head")(
        k.layers.Flatten()(x))
    model = k.Model(inputs, x)
    path = tmp_path / f"model.{fmt}"
    model.save(path)
    assert "tensorflow.python.ops.init_ops_v2" in json.dumps(read_config(path))
    loaded = load_model(path)
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    np.testing.assert_array_equal(loaded.keras_model(x).numpy(), model(x).numpy())


def test_a_numpy_initializer_in_a_tf_keras_h5_file_loads(tmp_path):
    """PointNet's T-Net starts its transform at the identity, `Constant(np.eye(3).flatten())`: tf_keras writes
    that array into the `.h5` config as a "__numpy__" object its own `.h5` loader does not know. It is read
    back as the array, and the model converts fully integer."""
    import tf_keras as k

    k.utils.set_random_seed(0)
    points = k.Input((16, 3), name="points")
    t = k.layers.GlobalMaxPooling1D()(k.layers.Conv1D(8, 1, activation="relu")(points))
    t = k.layers.Reshape((3, 3))(k.layers.Dense(9, kernel_initializer="zeros",
                                                bias_initializer=k.initializers.Constant(np.eye(3).flatten()))(t))
    aligned = k.layers.Dot(axes=(2, 1))([points, t])
    h = k.layers.GlobalMaxPooling1D()(k.layers.Conv1D(16, 1, activation="relu")(aligned))
    model = k.Model(points, k.layers.Dense(4, activation="softmax", name="probs")(h))
    path = tmp_path / "pointnet.h5"
    model.save(path)
    assert '"__numpy__"' in json.dumps(read_config(path))
    x = np.random.default_rng(0).random((64, 16, 3), dtype=np.float32)
    np.testing.assert_array_equal(load_model(path).keras_model(x[:4]).numpy(), model(x[:4]).numpy())
    result = tfquant.quantize(str(path), x, bench_runs=1, diagnose=False)
    assert_every_op_integer(result.info)


@pytest.mark.parametrize("version", [3, 2])
def test_a_subclassed_model_called_once_converts_to_full_int8(version, digits, train_npz, test_npz):
    """TensorFlow's "advanced" quickstart subclasses keras.Model: no Input layers, so its signature is
    what its first call recorded (tf_keras: each tensor's spec; Keras 3: the shape), its outputs what
    it returns. A tf_keras model that takes token ids keeps an int32 input."""
    from tfquant._keras import keras, keras3

    k = keras3() if version == 3 else keras

    class Net(k.Model):
        def __init__(self):
            super().__init__()
            self.conv = k.layers.Conv2D(16, 3, activation="relu")
            self.flat = k.layers.Flatten()
            self.out = k.layers.Dense(10, activation="softmax")

        def call(self, x):
            return self.out(self.flat(self.conv(x)))

    k.utils.set_random_seed(0)
    model = Net()
    with pytest.raises(ModelLoadError, match="found a model never called so"):
        load_model(model)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(digits["x"], digits["y"], epochs=3, verbose=0)
    loaded = load_model(model)
    assert [(s.shape, s.dtype) for s in loaded.inputs] == [((None, 8, 8, 1), "float32")]
    assert [(s.name, s.shape) for s in loaded.outputs] == [("output_0", (None, 10))]
    result = tfquant.quantize(model, train_npz, eval_data=test_npz, bench_runs=1, diagnose=False)
    assert_every_op_integer(result.info)
    assert result.report.outputs[0].float.accuracy > 0.9 and result.report.accuracy_drop <= 0.01
    with pytest.raises(ModelLoadError, match=r"<keras model>: expected a .*, found .*subclassed model"):
        tfquant.qat(model, train_npz, epochs=1)  # tfmot rebuilds models from their graph: one line, no traceback
    if version == 2:
        class Tokens(k.Model):
            def __init__(self):
                super().__init__()
                self.embed = k.layers.Embedding(18, 8)
                self.out = k.layers.Dense(10, activation="softmax")

            def call(self, ids):
                return self.out(k.layers.GlobalAveragePooling1D()(self.embed(ids)))

        tokens = Tokens()
        tokens(np.zeros((2, 32), np.int32))
        assert [(s.shape, s.dtype) for s in load_model(tokens).inputs] == [((None, 32), "int32")]


@pytest.mark.parametrize("version", [3, 2])
def test_augmentation_layers_inside_the_model_and_a_grouped_convolution_convert_as_they_infer(version, digits,
                                                                                             tmp_path):
    """A model as the Keras tutorials build it: its data augmentation inside (random flips, rotations, zooms,
    shifts and contrast, a GaussianNoise and a SpatialDropout2D), all of which pass their input through at
    inference; and a grouped convolution (`groups=4`). The file is the inference graph: fully integer, its
    float twin scoring what Keras does, int8 agreeing with float."""
    from tfquant._keras import keras, keras3

    from checks import assert_int8_follows_keras

    k = keras3() if version == 3 else keras
    k.utils.set_random_seed(0)
    inputs = k.Input((8, 8, 1), name="image")
    augment = k.Sequential([k.layers.RandomFlip("horizontal"), k.layers.RandomRotation(0.05), k.layers.RandomZoom(0.1),
                            k.layers.RandomTranslation(0.1, 0.1), k.layers.RandomContrast(0.1)], name="augment")
    x = k.layers.GaussianNoise(0.05)(k.layers.Conv2D(16, 3, padding="same", activation="relu")(augment(inputs)))
    x = k.layers.SpatialDropout2D(0.1)(k.layers.Conv2D(16, 3, groups=4, activation="relu")(x))
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax", name="probs")(k.layers.Flatten()(x)))
    result = trained_and_quantized(k, model, digits, tmp_path, epochs=8)
    assert_int8_follows_keras(model, result, digits, least=0.85)
    ops = [op for op in result.info.ops if op.name == "CONV_2D"]
    assert len(ops) == 2, [op.name for op in result.info.ops]


@pytest.mark.parametrize("version", [3, 2])
def test_a_model_whose_input_fixes_a_batch_of_8_is_run_one_sample_per_invoke(version, digits, tmp_path):
    """`Input(..., batch_size=8)`: traced at 8, Keras 3's Flatten bakes 8 x 576 into its RESHAPE and
    no sample could be run alone; the file takes one sample per invoke, and says so."""
    from tfquant._keras import keras, keras3
    from tfquant.harness import Runner

    k = keras3() if version == 3 else keras
    k.utils.set_random_seed(0)
    inputs = k.Input((8, 8, 1), name="image", batch_size=8)
    x = k.layers.Flatten()(k.layers.Conv2D(16, 3, activation="relu")(inputs))
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax", name="probs")(x))
    result = trained_and_quantized(k, model, digits, tmp_path, batch_size=8, epochs=3, samples=1432)
    assert_every_op_integer(result.info)
    assert [p.signature for p in Runner(result.tflite, num_threads=1).inputs] == [(1, 8, 8, 1)]
    assert result.report.export.notes[0] == \
        "image: the model fixes its batch at 8; exported with a batch of 1, one sample per invoke"
    output = result.report.outputs[0]
    assert output.float.accuracy > 0.9 and output.float.accuracy - output.quantized.accuracy <= 0.01


@pytest.mark.parametrize("version", [3, 2])
def test_dict_outputs_are_named_by_their_keys_whatever_the_order_a_call_returns_them_in(version, digits):
    """A dict of outputs flattens by sorted key while a call returns it in insertion order: the outputs
    were bound in one order and named in the other."""
    from tfquant._keras import keras, keras3
    from tfquant.harness import Runner

    k = keras3() if version == 3 else keras
    k.utils.set_random_seed(0)
    inputs = k.Input((8, 8, 1), name="image")
    x = k.layers.Flatten()(inputs)
    model = k.Model(inputs, {"probs": k.layers.Dense(10, activation="softmax", name="dense_a")(x),
                             "ink": k.layers.Dense(1, name="dense_b")(x)})
    assert [o.name for o in load_model(model).outputs] == ["ink", "probs"]
    result = tfquant.quantize(model, digits["x"][:100], eval_data=digits["x_test"], bench_runs=1, diagnose=False,
                              max_rel_rmse=0.5)  # an untrained head: what is measured is which output is which
    assert {o.name: o.task for o in result.report.outputs} == {"ink": "regression", "probs": "classification"}
    assert {p.name: p.signature[1:] for p in Runner(result.tflite, num_threads=1).outputs} == {"ink": (1,),
                                                                                              "probs": (10,)}


def test_a_keras3_argmax_in_the_graph_converts_and_its_class_ids_are_judged_as_classes(digits, tmp_path):
    """`ops.argmax` traced to a BitwiseAnd (Keras 3's -0.0 handling) that TFLite has no builtin for; the
    int32 class ids were judged as a regression (RMSE against the float file's ids)."""
    from tfquant._keras import keras3

    k = keras3()
    k.utils.set_random_seed(0)
    inputs = k.Input((8, 8, 1), name="image")
    x = k.layers.Flatten()(k.layers.Conv2D(16, 3, activation="relu")(inputs))
    probs = k.layers.Dense(10, activation="softmax", name="probs")(x)
    model = k.Model(inputs, probs)
    model.compile(optimizer=k.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(digits["x"], digits["y"], epochs=4, verbose=0)
    deployed = k.Model(inputs, {"probs": probs, "label": k.ops.argmax(probs, axis=-1)})
    np.savez(tmp_path / "test.npz", image=digits["x_test"], y_probs=digits["y_test"], y_label=digits["y_test"])
    result = tfquant.quantize(deployed, digits["x"][:200], eval_data=tmp_path / "test.npz", bench_runs=1,
                              diagnose=False)
    assert_every_op_integer(result.info)
    assert "ARG_MAX" in {op.name for op in result.info.ops}
    outputs = {o.name: o for o in result.report.outputs}
    assert outputs["label"].task == "classification" and outputs["label"].dtype == "int32"
    keras_accuracy = float(np.mean(model.predict(digits["x_test"], verbose=0).argmax(axis=1) == digits["y_test"]))
    assert outputs["label"].float.accuracy == pytest.approx(keras_accuracy, abs=0.003) and keras_accuracy > 0.9
    assert outputs["label"].quantized.agreement == outputs["probs"].quantized.agreement >= 0.98


@pytest.mark.parametrize("version", [3, 2])
def test_a_mixed_precision_model_computes_in_float32_for_the_export(version, digits, tmp_path):
    """Layers of policy mixed_float16 (as GPU training sets them) trace to float16 Conv2D and MatMul,
    which TFLite has no kernels for; they are rebuilt computing in float32 with the same weights."""
    from tfquant._keras import keras, keras3

    k = keras3() if version == 3 else keras
    k.utils.set_random_seed(0)
    inputs = k.Input((8, 8, 1), name="image")
    x = k.layers.Conv2D(16, 3, activation="relu", dtype="mixed_float16")(inputs)
    x = k.layers.Dense(10, dtype="mixed_float16")(k.layers.Flatten(dtype="mixed_float16")(x))
    model = k.Model(inputs, k.layers.Activation("softmax", dtype="float32", name="probs")(x))
    result = trained_and_quantized(k, model, digits, tmp_path, epochs=6)
    assert_every_op_integer(result.info)
    assert any(note.startswith("layers of dtype policy mixed_float16 compute in float32") for note in
               result.report.export.notes), result.report.export.notes
    keras_accuracy = float(np.mean(model.predict(digits["x_test"], verbose=0).argmax(axis=1) == digits["y_test"]))
    output = result.report.outputs[0]
    assert abs(output.float.accuracy - keras_accuracy) <= 0.006  # float16 rounding, in Keras only
    assert output.float.accuracy > 0.9 and output.float.accuracy - output.quantized.accuracy <= 0.01


_PREPROCESSING = {
    "IntegerLookup": (lambda k: k.layers.IntegerLookup(vocabulary=[1, 2, 3, 4], num_oov_indices=2,
                                                       output_mode="one_hot"),
                      "'tf.LookupTableFindV2' op", "(the lookup tables of StringLookup, IntegerLookup or "
                      "TextVectorization have no TFLite builtin: map the values to ids before the model and feed those)"),
    "Hashing": (lambda k: k.layers.Hashing(num_bins=8), "'tf.StringToHashBucketFast' op",
                "(Hashing hashes each value as a string, which TFLite has no builtin for: hash the values before the "
                "model and feed the bins)"),
}


@pytest.mark.parametrize("version", [3, 2])
@pytest.mark.parametrize("layer", sorted(_PREPROCESSING))
def test_a_preprocessing_layer_tflite_cannot_run_is_refused_with_what_to_do(layer, version, tmp_path):
    """A string hash, a lookup with two OOV buckets (which hashes too): the error names the op and says what
    to do instead."""
    from tfquant._keras import keras, keras3
    from tfquant.errors import ConversionError

    k = keras3() if version == 3 else keras
    make, op, hint = _PREPROCESSING[layer]
    inputs = k.Input((1,), dtype="int64", name="bucket")
    x = make(k)(inputs)
    if layer == "Hashing":
        x = k.layers.Flatten()(k.layers.Embedding(8, 3)(x))
    path = tmp_path / "preprocessing.keras"
    k.Model(inputs, k.layers.Dense(3, activation="softmax")(x)).save(path)
    np.savez(tmp_path / "calib.npz", bucket=np.arange(300).reshape(-1, 1) % 5)
    with pytest.raises(ConversionError) as caught:
        tfquant.quantize(path, tmp_path / "calib.npz", bench_runs=1, diagnose=False)
    message = str(caught.value)
    assert message.startswith(f"{path}: expected a model TFLiteConverter can convert, found ")
    assert f"{op} is neither a custom op nor a flex op" in message
    assert hint in message and message.endswith(")")
    assert "\n" not in message


def _tabular(k, columns: dict[str, np.ndarray]):
    """A model of tabular data as Keras' structured-data guides build one: numeric columns normalized, a
    categorical column one-hot by IntegerLookup, another looked up (with a mask token) into an Embedding,
    a multi-valued column multi-hot by CategoryEncoding, and an integer column bucketed by Discretization."""
    layers = k.layers
    inputs = {"age": k.Input((1,), dtype="int64", name="age"), "chol": k.Input((1,), name="chol"),
              "cp": k.Input((1,), dtype="int64", name="cp"), "thal": k.Input((1,), dtype="int64", name="thal"),
              "tags": k.Input((3,), dtype="int64", name="tags")}
    norm = layers.Normalization(name="chol_norm")
    norm.adapt(columns["chol"])
    thal = layers.IntegerLookup(vocabulary=[3, 6, 7], mask_token=0, name="thal_ids")(inputs["thal"])
    features = [
        layers.Discretization(bin_boundaries=[40.5, 50.0, 59.5], output_mode="one_hot", name="age_buckets")(
            inputs["age"]),
        norm(inputs["chol"]),
        layers.IntegerLookup(vocabulary=[0, 1, 2, 3], output_mode="one_hot", name="cp_onehot")(inputs["cp"]),
        layers.Flatten()(layers.Embedding(5, 2)(thal)),
        layers.CategoryEncoding(num_tokens=6, output_mode="multi_hot", name="tags_multihot")(inputs["tags"]),
    ]
    hidden = layers.Dense(32, activation="relu")(layers.Concatenate()(features))
    return k.Model(inputs, layers.Dense(2, activation="softmax", name="sick")(hidden))


def _tabular_columns(n: int, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    age = np.round(rng.normal(52, 10, n)).astype(np.int64)  # whole years: bucketed as integers
    chol = rng.normal(240, 50, n).astype(np.float32)
    cp = rng.integers(0, 5, n)  # 4 is out of the vocabulary
    thal = rng.choice([0, 3, 6, 7, 2], n)  # 0 is the mask token, 2 out of the vocabulary
    tags = rng.integers(0, 6, (n, 3))
    score = 0.08 * (age - 52) + 0.02 * (chol - 240) + np.array([-1.5, -0.5, 0.5, 1.5, 0.0])[cp] \
        + np.isin(thal, [6, 7]) * 1.2 + (tags == 2).any(axis=1) - 0.6
    columns = {"age": age[:, None], "chol": chol[:, None], "cp": cp[:, None].astype(np.int64),
               "thal": thal[:, None].astype(np.int64), "tags": tags.astype(np.int64)}
    return columns, (score + rng.normal(0, 0.5, n) > 0).astype(np.int64)


@pytest.mark.parametrize("version", [3, 2])
def test_lookups_encodings_and_buckets_of_tabular_data_convert_to_full_int8(version, tmp_path):
    """IntegerLookup (a hash table), tf_keras' CategoryEncoding (a bincount) and Discretization (BUCKETIZE,
    no integer kernel) are traced as comparisons: the float file computes what Keras does, values out of
    the vocabulary and the mask token included, and the int8 file is fully integer and accurate."""
    from tfquant._keras import keras, keras3
    from tfquant.data import Dataset
    from tfquant.harness import Runner

    k = keras3() if version == 3 else keras
    k.utils.set_random_seed(0)
    train, y_train = _tabular_columns(1200)
    test, y_test = _tabular_columns(400, seed=1)
    model = _tabular(k, train)
    model.compile(optimizer=k.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(train, y_train, epochs=15, batch_size=64, verbose=0)
    path = tmp_path / "tabular.keras"
    model.save(path)
    np.savez(tmp_path / "calib.npz", **train)
    np.savez(tmp_path / "test.npz", y=y_test, **test)

    float32 = tfquant.quantize(path, tmp_path / "calib.npz", mode="float32", bench_runs=1, diagnose=False)
    expected = model.predict(test, verbose=0)
    got = Runner(float32.tflite).predict(Dataset("test", test), progress=False)["sick"]
    assert np.abs(got - expected).max() < 1e-5

    result = tfquant.quantize(path, tmp_path / "calib.npz", eval_data=tmp_path / "test.npz", bench_runs=1,
                              diagnose=False)
    assert_every_op_integer(result.info)
    assert {op.name for op in result.info.ops} >= {"EQUAL", "GREATER_EQUAL", "ONE_HOT"}
    assert not {"HASHTABLE_FIND", "BUCKETIZE"} & {op.name for op in result.info.ops}
    notes = [note for note in result.report.export.notes if "by comparing with its" in note]
    assert sorted(note.split(" (")[0] for note in notes) == ["age_buckets", "cp_onehot", "tags_multihot", "thal_ids"]
    assert {note.split(": ")[1].split(" (")[0] for note in notes} == {
        "bucketed by comparing with its 3 boundaries", "looked up by comparing with its vocabulary of 5 indices",
        "looked up by comparing with its vocabulary of 5 indices", "encoded by comparing with its 6 indices"}
    measured = result.report.outputs[0]
    assert measured.float.accuracy > 0.8 and measured.float.accuracy - measured.quantized.accuracy <= 0.01
    assert measured.quantized.agreement >= 0.97


def test_a_spectrogram_inside_the_model_is_named_with_what_to_do(tmp_path):
    """Keras 3's MelSpectrogram converts to RFFT2D and ops on its complex result, none of which has an int8 form:
    the error names the transform and says to compute the spectrogram before the model."""
    from tfquant._keras import keras3
    from tfquant.errors import StrictModeError

    k = keras3()
    inputs = k.Input((64,), name="wave")
    x = k.layers.MelSpectrogram(fft_length=16, sequence_stride=4, sequence_length=16, num_mel_bins=8,
                                sampling_rate=800, name="mel")(inputs)
    path = tmp_path / "audio.keras"
    k.Model(inputs, k.layers.Dense(3, activation="softmax")(k.layers.Flatten()(x))).save(path)
    np.savez(tmp_path / "calib.npz", wave=np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32))
    with pytest.raises(StrictModeError) as error:
        tfquant.quantize(path, tmp_path / "calib.npz", bench_runs=1, diagnose=False)
    message = str(error.value)
    assert re.search(r"found float ops: RFFT2D#\d+ in layer 'mel' \(a Fourier transform \(a spectrogram layer\), "
                     r"which no quantizer makes integer: compute the spectrogram before the model and feed it in "
                     r"dB or as log\(x \+ 1e-6\) \(a magnitude one's quiet bins round to 0 in int8\)\)",
                     message), message
    assert re.search(r"(REAL|IMAG|SQUEEZE)#\d+ in layer 'mel' \(works on the complex result of a Fourier transform",
                     message), message


@pytest.mark.parametrize("version", [3, 2])
def test_a_model_that_takes_text_is_refused_with_the_layer_to_cut_at(version, tmp_path):
    """A TextVectorization inside the model: the input is strings, which no int8 file takes. The error names
    the layer, and the sub-model it suggests (from that layer's output) converts fully integer."""
    from tfquant._keras import keras, keras3
    from tfquant.errors import ModelLoadError

    k = keras3() if version == 3 else keras
    texts = np.array(["good movie", "bad movie", "great film", "awful film"] * 50)[:, None]
    words = k.layers.TextVectorization(max_tokens=20, output_sequence_length=4, name="words")
    words.adapt(texts)
    inputs = k.Input((1,), dtype="string", name="text")
    pooled = k.layers.GlobalAveragePooling1D()(k.layers.Embedding(20, 8)(words(inputs)))
    model = k.Model(inputs, k.layers.Dense(2, activation="softmax", name="positive")(pooled))
    labels = np.array([1, 0, 1, 0] * 50)
    model.compile(optimizer=k.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    model.fit(k.ops.convert_to_tensor(texts) if version == 3 else texts, labels, epochs=5, verbose=0)
    model.save(tmp_path / "text.keras")
    with pytest.raises(ModelLoadError) as caught:
        tfquant.quantize(tmp_path / "text.keras", {"text": texts}, bench_runs=1, diagnose=False)
    assert str(caught.value) == (
        f"{tmp_path / 'text.keras'}: expected a model whose inputs are numbers (an int8 .tflite file takes numbers), "
        "found input 'text' of strings, read by TextVectorization 'words': run that preprocessing in the app and "
        "convert the model from its output (token or category ids), e.g. keras.Model(layer.output, model.output)")
    ids = np.asarray(words(k.ops.convert_to_tensor(texts) if version == 3 else texts))
    cut = k.Model(model.get_layer("words").output, model.output)
    result = tfquant.quantize(cut, ids, eval_data=(ids, labels), bench_runs=1, diagnose=False)
    assert_every_op_integer(result.info)
    assert result.report.io[0].dtype == "int64" and result.report.outputs[0].quantized.accuracy == 1.0


@pytest.mark.parametrize("version", [3, 2])
def test_a_custom_layer_whose_code_is_not_registered_is_named(version, tmp_path, digits):
    """A registered custom layer: the file holds its settings, not its code. Loaded where nothing registered
    it, the error names the class and the way through; where it is registered, it converts."""
    from tfquant._keras import keras, keras3
    from tfquant.errors import ModelLoadError

    k = keras3() if version == 3 else keras
    registry = k.saving.get_custom_objects() if version == 3 else k.utils.get_custom_objects()
    register = k.saving.register_keras_serializable if version == 3 else k.utils.register_keras_serializable

    class Halve(k.layers.Layer):
        def call(self, x):
            return x * 0.5

    Halve.__module__ = "__main__"  # defined in the user's script: the file names no module to import
    Halve = register(package=f"tfquant_test{version}")(Halve)

    inputs = k.Input((8, 8, 1), name="image")
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax")(k.layers.Flatten()(Halve(name="halve")(inputs))))
    model.save(tmp_path / "custom.keras")
    registered = registry.pop(f"tfquant_test{version}>Halve")
    try:
        with pytest.raises(ModelLoadError) as caught:
            tfquant.quantize(tmp_path / "custom.keras", digits["x"][:50], bench_runs=1, diagnose=False)
    finally:
        registry[f"tfquant_test{version}>Halve"] = registered
    assert str(caught.value) == (
        f"{tmp_path / 'custom.keras'}: expected layers Keras knows, or custom ones registered by code already imported, "
        f"found custom class 'tfquant_test{version}>Halve' (layer 'halve'), whose code is not in the file: quantize the model "
        "object in the program that defines the class (tfquant.quantize(model, ...))")
    result = tfquant.quantize(tmp_path / "custom.keras", digits["x"][:50], bench_runs=1, diagnose=False)
    assert_every_op_integer(result.info)

    def halved_loss(y, p):  # a loss of the user's script: saved in the compile config, never loaded
        return k.losses.sparse_categorical_crossentropy(y, p) * 0.5

    halved_loss.__module__ = "__main__"
    plain = k.Model(inputs, k.layers.Dense(10, activation="softmax")(k.layers.Flatten()(inputs)))
    plain.compile(optimizer="adam", loss=register(package=f"tfquant_test{version}")(halved_loss))
    plain.fit(digits["x"][:32], digits["y"][:32], verbose=0)
    plain.save(tmp_path / "compiled.keras")
    registry.pop(f"tfquant_test{version}>halved_loss")
    assert_every_op_integer(tfquant.quantize(tmp_path / "compiled.keras", digits["x"][:50], bench_runs=1,
                                             diagnose=False).info)


def test_a_float_tflite_file_is_quantized_as_it_is(digits_model, int8_result, train_npz, test_npz, tmp_path):
    """A float32 .tflite from the plain TFLite flow (TFLiteConverter.from_keras_model): calibrated and quantized
    from the file itself, as accurate as from the Keras model. A quantized file, the converter's own modes and
    training are refused, each saying why."""
    import tensorflow as tf

    from tfquant._keras import keras
    from tfquant.errors import ConversionError, ModelLoadError

    path = tmp_path / "float.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(digits_model).convert())
    result = tfquant.quantize(path, train_npz, eval_data=test_npz, bench_runs=1, diagnose=False)
    assert_every_op_integer(result.info)
    assert result.report.export.route == "float .tflite as given"
    ours, keras_path = result.report.outputs[0].quantized, int8_result.report.outputs[0].quantized
    assert abs(ours.accuracy - keras_path.accuracy) <= 1 / 359 + 1e-9 and ours.agreement >= 0.98
    assert result.report.outputs[0].float.accuracy == int8_result.report.outputs[0].float.accuracy

    quantized = tmp_path / "int8.tflite"
    quantized.write_bytes(int8_result.tflite)
    with pytest.raises(ModelLoadError, match=r"int8.tflite: expected a float32 .tflite file to quantize, found int8 "
                                             r"tensors: the file is quantized already"):
        tfquant.quantize(quantized, train_npz)
    with pytest.raises(ConversionError, match=r"expected a graph that can be frozen for mode dynamic, found a .tflite "
                                              r"file given as the model"):
        tfquant.quantize(path, None, mode="dynamic", bench_runs=1)
    with pytest.raises(ModelLoadError, match=r"float.tflite: expected a Keras model \(.keras, .h5\) or SavedModel for "
                                             r"tfquant qat, which trains its layers, found a .tflite file"):
        tfquant.qat(path, train_npz, epochs=1)
    keras.utils.set_random_seed(0)
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(10, 4)(tokens))
    open_length = tmp_path / "open.tflite"
    open_length.write_bytes(tf.lite.TFLiteConverter.from_keras_model(keras.Model(tokens, pooled)).convert())
    with pytest.raises(ModelLoadError, match=r"open.tflite: expected a .tflite file whose inputs are fixed but for the "
                                             r"batch .*, found input 'tokens' of shape \(N, \?\): convert it with that "
                                             r"length fixed, or give tfquant the Keras model"):
        tfquant.quantize(open_length, np.ones((4, 6), np.int32))


def test_a_tf_keras_saved_model_whose_graph_keeps_a_loop_converts_from_its_revived_layers(rows_gru, digits, tmp_path):
    """tf_keras' SavedModel traces a GRU as a loop the converter refuses; tfquant revives its layers (in safe
    mode, as a .keras file is loaded) and unrolls them, as from the .keras file. A SavedModel with no Keras
    layers in it (Keras 3's `export`) says what to give instead; one whose layers hold code is refused."""
    from tfquant._keras import keras, keras3
    from tfquant.errors import ConversionError

    x, held_out = digits["x"][..., 0], (digits["x_test"][..., 0], digits["y_test"])
    folder = tmp_path / "gru_savedmodel"
    rows_gru.save(folder, save_format="tf")
    result = tfquant.quantize(folder, x[:200], eval_data=held_out, bench_runs=1, diagnose=False)
    assert_every_op_integer(result.info)
    notes = result.report.export.notes
    assert notes[0] == "exported from its tf_keras layers: its traced graph did not convert", notes
    assert any("unrolled over 8 steps" in note for note in notes), notes
    from_file = tfquant.quantize(rows_gru, x[:200], eval_data=held_out, bench_runs=1, diagnose=False)
    assert result.report.outputs[0].quantized.accuracy == from_file.report.outputs[0].quantized.accuracy
    assert result.report.outputs[0].quantized.agreement >= 0.97

    k3 = keras3()
    inputs = k3.Input((8, 8), name="rows")
    k3.Model(inputs, k3.layers.Dense(10)(k3.layers.GRU(8)(inputs))).export(str(tmp_path / "k3_export"), verbose=False)
    with pytest.raises(ConversionError, match=r"k3_export: expected a model TFLiteConverter can convert, found .*"
                                              r"\(a loop over a sequence, which tfquant unrolls only in a Keras model: "
                                              r"give it the .keras or .h5 file, or a SavedModel that tf_keras saved\)"):
        tfquant.quantize(tmp_path / "k3_export", x[:20])

    inputs = keras.Input((8, 8), name="rows")
    doubled = keras.layers.Lambda(lambda t: t * 2.0, name="payload")(inputs)
    coded = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.GRU(8)(doubled)))
    coded.save(tmp_path / "coded_savedmodel", save_format="tf")
    with pytest.raises(ModelLoadError, match=r"coded_savedmodel: expected a model without code, found a Lambda layer "
                                             r"'payload'"):
        tfquant.quantize(tmp_path / "coded_savedmodel", x[:20])


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_a_tf_keras_spectral_normalization_loads_back_and_converts_as_the_model_does(fmt, digits, tmp_path):
    """tf_keras cannot load its own SpectralNormalization back ('str' object is not callable from a .keras file,
    an unknown layer from an .h5 one); tfquant reads its wrapped layer in the format it was written in."""
    from tfquant._keras import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    features = keras.layers.SpectralNormalization(keras.layers.Conv2D(8, 3, activation="relu"))(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(features)))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(digits["x"], digits["y"], epochs=2, verbose=0)
    path = tmp_path / f"spectral.{fmt}"
    model.save(path)
    with pytest.raises(Exception, match="'str' object is not callable" if fmt == "keras" else "Unknown layer"):
        keras.models.load_model(path, compile=False)  # tf_keras alone
    loaded = load_model(path)
    x = digits["x"][:16]
    assert np.array_equal(loaded.keras_model(x).numpy(), model(x).numpy())
    from_file = tfquant.quantize(path, digits["x"][:200], bench_runs=1, diagnose=False)
    assert_every_op_integer(from_file.info)
    assert from_file.tflite == tfquant.quantize(model, digits["x"][:200], bench_runs=1, diagnose=False).tflite


@pytest.mark.parametrize("version", [3, 2])
def test_a_volume_model_converts_to_full_int8_with_its_3d_layers_as_2d_ones(version, digits):
    """Conv3D and Conv3DTranspose (float kernels only in TFLite) and MaxPooling3D/AveragePooling3D (no
    builtin: the model did not convert) are traced as CONV_2D over depth-stacked slices, TRANSPOSE_CONV per
    depth tap and 2D pools: the float file computes what Keras does across strides, dilation and 'same'
    windows at odd sizes, its int8 file is fully integer, and a clip classifier as accurate as float."""
    from tfquant._keras import keras, keras3
    from tfquant.data import Dataset
    from tfquant.harness import Runner

    k = keras3() if version == 3 else keras
    layers = k.layers
    k.utils.set_random_seed(0)
    inputs = k.Input((7, 9, 10, 3), name="volume")
    a = layers.Conv3D(5, (3, 2, 3), strides=(2, 1, 2), padding="same", activation="relu")(inputs)
    b = layers.Conv3D(4, (2, 3, 3), dilation_rate=(2, 1, 1), use_bias=False)(inputs)
    parts = [layers.MaxPooling3D((2, 2, 2), padding="same")(a),
             layers.AveragePooling3D((3, 2, 2), strides=(1, 2, 1), padding="same")(b),
             layers.AveragePooling3D((2, 3, 3))(inputs),
             layers.Conv3DTranspose(3, (3, 3, 3), strides=(2, 2, 2), padding="same", activation="relu")(a),
             layers.Conv3DTranspose(2, (1, 3, 3), strides=(3, 2, 2))(b)]
    shapes = k.Model(inputs, layers.Concatenate()([layers.Flatten()(p) for p in parts]))
    x = np.random.default_rng(0).standard_normal((32, 7, 9, 10, 3)).astype(np.float32)
    float32 = tfquant.quantize(shapes, x, mode="float32", bench_runs=1, diagnose=False)
    (got,) = Runner(float32.tflite).predict(Dataset("x", {"volume": x}), progress=False).values()
    assert np.abs(got - shapes.predict(x, verbose=0)).max() < 1e-5
    assert not [op.name for op in float32.info.ops if "3D" in op.name]
    int8 = tfquant.quantize(shapes, x, eval_data=x, bench_runs=1, diagnose=False)
    assert_every_op_integer(int8.info)
    assert int8.report.outputs[0].quantized.rel_rmse < 0.05

    def clips(images):  # six frames of each digit moving right a pixel a frame
        return np.stack([np.roll(images, shift, axis=2) for shift in range(6)], axis=1).astype(np.float32)

    inputs = k.Input((6, 8, 8, 1), name="clip")
    x = layers.MaxPooling3D((1, 2, 2))(layers.Conv3D(8, 3, padding="same", activation="relu")(inputs))
    x = layers.GlobalAveragePooling3D()(layers.Conv3D(16, 3, activation="relu")(x))
    model = k.Model(inputs, layers.Dense(10, activation="softmax", name="probs")(x))
    model.compile(optimizer=k.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(clips(digits["x"]), digits["y"], epochs=8, verbose=0)
    result = tfquant.quantize(model, clips(digits["x"][:200]), eval_data=(clips(digits["x_test"]), digits["y_test"]),
                              bench_runs=1, diagnose=False)
    assert_every_op_integer(result.info)
    assert sum("traced as its 2D counterpart over frames" in note for note in result.report.export.notes) == 3
    measured = result.report.outputs[0]
    assert measured.float.accuracy > 0.8 and measured.float.accuracy - measured.quantized.accuracy <= 0.01
    assert measured.quantized.agreement >= 0.97


@pytest.mark.parametrize("version", [3, 2])
def test_a_float64_model_computes_in_float32_for_the_export(version, digits, tmp_path):
    """A model built under `keras.backend.set_floatx("float64")`: float64 Conv2D, BatchNormalization and MatMul,
    which TFLite has no kernels for (the converter refused every op). Rebuilt in float32 with its weights
    rounded to float32, from the .keras file and the .h5, it answers as Keras does to float32's precision."""
    from tfquant._keras import keras, keras3
    from tfquant.data import Dataset
    from tfquant.harness import Runner

    k = keras3() if version == 3 else keras
    k.utils.set_random_seed(0)
    k.backend.set_floatx("float64")
    k.mixed_precision.set_global_policy("float64")  # a policy another test set would win over floatx
    try:
        inputs = k.Input((8, 8, 1), name="image")
        x = k.layers.BatchNormalization()(k.layers.Conv2D(8, 3, activation="relu")(inputs))
        model = k.Model(inputs, k.layers.Dense(10, activation="softmax", name="probs")(k.layers.Flatten()(x)))
        model.compile(optimizer=k.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
        model.fit(digits["x"].astype(np.float64), digits["y"], epochs=3, verbose=0)
        model.save(tmp_path / "double.keras")
        model.save(tmp_path / "double.h5")
        expected = model.predict(digits["x_test"].astype(np.float64), verbose=0)
    finally:
        k.backend.set_floatx("float32")
        k.mixed_precision.set_global_policy("float32")
    for name in ("double.keras", "double.h5"):
        result = tfquant.quantize(tmp_path / name, digits["x"][:200], eval_data=(digits["x_test"], digits["y_test"]),
                                  bench_runs=1, diagnose=False)
        assert_every_op_integer(result.info)
        assert "layers of dtype policy float64 compute in float32 for the export (TFLite has no float64 kernels; " \
               "the weights are rounded to float32)" in result.report.export.notes
        measured = result.report.outputs[0]
        assert measured.float.accuracy > 0.8 and measured.float.accuracy - measured.quantized.accuracy <= 0.01
    float32 = tfquant.quantize(tmp_path / "double.keras", digits["x"][:200], mode="float32", bench_runs=1,
                               diagnose=False)
    (got,) = Runner(float32.tflite).predict(Dataset("test", {"image": digits["x_test"]}), progress=False).values()
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.parametrize("version", [3, 2])
@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_a_float64_or_float16_input_is_taken_as_float32(dtype, version, digits):
    """An Input declared float64 or float16 before float32 layers: TFLite has no float64 kernels (the
    calibrator refused float32 samples for the float64 input), and the CAST to the declared type and
    back stays float in int8. The file takes float32 (int8 when quantized), the round trip goes, and the
    float file answers as Keras does."""
    from tfquant._keras import keras, keras3
    from tfquant.data import Dataset
    from tfquant.harness import Runner

    k = keras3() if version == 3 else keras
    k.utils.set_random_seed(0)
    inputs = k.Input((8, 8, 1), name="image", dtype=dtype)
    hidden = k.layers.Flatten()(k.layers.Conv2D(8, 3, activation="relu")(inputs))
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax", name="probs")(hidden))
    model.compile(optimizer=k.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(digits["x"].astype(dtype), digits["y"], epochs=3, verbose=0)

    float32 = tfquant.quantize(model, digits["x"][:200], mode="float32", bench_runs=1, diagnose=False)
    assert [(t.name, t.dtype) for t in float32.info.inputs] == [("image", "float32")]
    assert "CAST" not in {op.name for op in float32.info.ops}
    (got,) = Runner(float32.tflite).predict(Dataset("test", {"image": digits["x_test"]}), progress=False).values()
    expected = model.predict(digits["x_test"].astype(dtype), verbose=0)
    assert np.abs(got - expected).max() < (1e-5 if dtype == "float64" else 2e-3)

    result = tfquant.quantize(model, digits["x"][:200], eval_data=(digits["x_test"], digits["y_test"]), bench_runs=1,
                              diagnose=False)
    assert_every_op_integer(result.info)
    assert "float32 cast to float64 or float16 and back as the float32 tensor (1×), so that int8 covers it" in \
        result.report.export.notes
    measured = result.report.outputs[0]
    assert measured.float.accuracy > 0.8 and measured.float.accuracy - measured.quantized.accuracy <= 0.01


@pytest.mark.parametrize("version", [3, 2])
def test_token_ids_into_an_embedding_through_a_float_input_stay_integer(version, tmp_path):
    """An Embedding reading an Input that declares no dtype (float32, Keras' default, as a Sequential model
    that starts with an Embedding gets): int8 would quantize the ids to a float scale and CAST them back,
    rounding some to the wrong row. The input takes int32 ids, the trace's CAST to float and back goes,
    every op is integer, and the float file answers as Keras does on the same ids."""
    from tfquant import zoo
    from tfquant._keras import keras, keras3
    from tfquant.data import Dataset
    from tfquant.harness import Runner

    k = keras3() if version == 3 else keras
    k.utils.set_random_seed(0)
    data = zoo.tokens(pad=False)
    ids, test_ids = data.train["tokens"].astype(np.float32), data.test["tokens"].astype(np.float32)
    inputs = k.Input((32,), name="tokens")
    x = k.layers.Flatten()(k.layers.Embedding(18, 8)(inputs))
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax", name="probs")(k.layers.Dense(32, activation="relu")(x)))
    model.compile(optimizer=k.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(ids, data.train["y"], epochs=8, verbose=0)
    model.save(tmp_path / "tokens.keras")

    result = tfquant.quantize(tmp_path / "tokens.keras", ids[:200], eval_data=(test_ids, data.test["y"]),
                              bench_runs=1, diagnose=False)
    assert_every_op_integer(result.info)
    assert [(t.name, t.dtype) for t in result.info.inputs] == [("tokens", "int32")]
    assert "CAST" not in {op.name for op in result.info.ops}
    assert any(note.startswith("inputs read only by Embedding layers take int32 token ids: 'tokens'")
               for note in result.report.export.notes)
    (got,) = Runner(result.float_tflite).predict(Dataset("test", {"tokens": data.test["tokens"]}),
                                                 progress=False).values()
    assert np.abs(got - model.predict(test_ids, verbose=0)).max() < 1e-5
    measured = result.report.outputs[0]
    assert measured.float.accuracy > 0.8 and measured.float.accuracy - measured.quantized.accuracy <= 0.01


def test_a_tf_keras_saved_model_whose_graph_keeps_a_float_conv3d_is_exported_from_its_layers(digits, tmp_path):
    """A tf_keras SavedModel of Conv3D and Discretization converts by its graph, to CONV_3D and BUCKETIZE,
    which no quantizer makes integer; its layers, revived from the folder's Keras metadata, export as a
    Keras model's do (`tracing`), and the int8 file is fully integer."""
    from tfquant._keras import keras as k

    k.utils.set_random_seed(0)
    clips = np.stack([np.roll(digits["x"], shift, axis=2) for shift in range(4)], axis=1).astype(np.float32)
    inputs = k.Input((4, 8, 8, 1), name="clip")
    x = k.layers.GlobalAveragePooling3D()(k.layers.Conv3D(8, 3, activation="relu")(inputs))
    buckets = k.layers.Flatten()(k.layers.Embedding(4, 2)(k.layers.Discretization(bin_boundaries=[0.1, 0.2, 0.3])(
        k.layers.Dense(1, activation="sigmoid")(x))))
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax", name="probs")(
        k.layers.Concatenate()([x, buckets])))
    model.compile(optimizer=k.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(clips, digits["y"], epochs=2, verbose=0)
    model.save(tmp_path / "clips", save_format="tf")

    result = tfquant.quantize(tmp_path / "clips", clips[:200], bench_runs=1, diagnose=False)
    assert_every_op_integer(result.info)
    assert result.report.export.notes[0] == ("exported from its tf_keras layers: its traced graph keeps BUCKETIZE, "
                                             "CONV_3D, which no quantizer makes integer")


def test_a_saved_model_with_open_image_dims_is_exported_at_the_datas_size(digits, tmp_path):
    """Keras 3's `model.export` of a fully convolutional model leaves the image size open in its serving
    signature: its graph is traced again at the data's size, so the file's ops have fixed shapes (the
    interpreter had refused the samples: 'Dimension mismatch. Got 8 but expected 1')."""
    from tfquant._keras import keras3
    from tfquant.data import Dataset
    from tfquant.export import export
    from tfquant.harness import Runner

    k = keras3()
    k.utils.set_random_seed(0)
    inputs = k.Input((None, None, 1), name="image")
    x = k.layers.GlobalAveragePooling2D()(k.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs))
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax")(x))
    model.export(tmp_path / "exported")
    result = tfquant.quantize(tmp_path / "exported", {"image": digits["x"][:64]}, bench_runs=1, diagnose=False)
    assert_every_op_integer(result.info)
    (image,) = [port for port in result.report.io if port.kind == "input"]
    assert image.shape[1:] == [8, 8, 1], image
    exported = export(load_model(tmp_path / "exported"), shapes={"image": (8, 8, 1)})
    (probs,) = Runner(exported.tflite).predict(Dataset("digits", {"image": digits["x"][:16]}), progress=False).values()
    np.testing.assert_allclose(probs, model.predict(digits["x"][:16], verbose=0), atol=1e-5)


SHIFT = 1.0  # a name of this module, which a Lambda's stored code cannot see where the file is loaded


def test_a_lambda_whose_code_needs_its_programs_names_says_so_when_code_is_allowed(tmp_path):
    """With code allowed, a Lambda's stored code runs while the model is rebuilt, without the names of the
    program that wrote it: the error is that NameError and where to convert instead, not 'allow code' again."""
    from tfquant._keras import keras3

    k = keras3()
    inputs = k.Input((4,), name="x")
    k.Model(inputs, k.layers.Lambda(lambda t: t - SHIFT, name="shift")(inputs)).save(tmp_path / "m.keras")
    with pytest.raises(ModelLoadError, match=r"m.keras: expected a loadable Keras model, found NameError: name 'SHIFT' "
                       r"is not defined \(raised by a Lambda layer's stored code, which may use names of the program "
                       r"that defined it: quantize the model object there, tfquant.quantize\(model, ...\)\)$"):
        load_model(tmp_path / "m.keras", safe_mode=False)


def test_a_channels_first_model_with_separable_convolutions_and_crops_converts_to_full_int8(digits):
    """Conv2D, SeparableConv2D, Cropping2D, ZeroPadding2D and pools with `data_format="channels_first"`
    (Keras 3: tf_keras's convolutions take NHWC only on a CPU): TFLite's kernels are NHWC, so the export
    transposes, and the int8 file is fully integer and as accurate as float."""
    from tfquant._keras import keras3

    k = keras3()
    layers, first = k.layers, "channels_first"
    k.utils.set_random_seed(0)
    inputs = k.Input((1, 8, 8), name="planes")
    x = layers.Conv2D(16, 3, padding="same", activation="relu", data_format=first)(inputs)
    x = layers.SeparableConv2D(32, 3, padding="same", activation="relu", depth_multiplier=2, data_format=first)(x)
    x = layers.ZeroPadding2D(1, data_format=first)(layers.Cropping2D(1, data_format=first)(x))
    x = layers.GlobalAveragePooling2D(data_format=first)(layers.MaxPooling2D(data_format=first)(x))
    model = k.Model(inputs, layers.Dense(10, activation="softmax", name="probs")(x))
    model.compile(optimizer=k.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    planes, planes_test = digits["x"].transpose(0, 3, 1, 2), digits["x_test"].transpose(0, 3, 1, 2)
    model.fit(planes, digits["y"], epochs=10, batch_size=32, verbose=0)
    result = tfquant.quantize(model, planes[:200], eval_data=(planes_test, digits["y_test"]), bench_runs=1,
                              diagnose=False)
    assert_every_op_integer(result.info)
    assert {"DEPTHWISE_CONV_2D", "TRANSPOSE"} <= {op.name for op in result.info.ops}
    measured = result.report.outputs[0]
    assert measured.float.accuracy > 0.8 and measured.float.accuracy - measured.quantized.accuracy <= 0.01
    assert measured.quantized.agreement >= 0.97


@pytest.mark.parametrize("version", [3, 2])
def test_a_segmentation_model_with_resizing_and_a_transposed_convolution_classifies_each_pixel_in_int8(version,
                                                                                                       digits):
    """A small U-Net: Resizing up, a strided Conv2D down, Conv2DTranspose up, a skip Concatenate, nearest
    Resizing and CenterCrop, and a per-pixel softmax over two classes (ink or not). Fully integer, and
    each pixel's class is float's for 99 % of the test digits' pixels."""
    from tfquant._keras import keras, keras3

    k = keras3() if version == 3 else keras
    layers = k.layers
    k.utils.set_random_seed(0)
    masks, masks_test = (digits["x"][..., 0] > 0.5).astype("int32"), (digits["x_test"][..., 0] > 0.5).astype("int32")
    inputs = k.Input((8, 8, 1), name="image")
    fine = layers.Conv2D(8, 3, padding="same", activation="relu")(layers.Resizing(16, 16)(inputs))
    coarse = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(fine)
    up = layers.Conv2DTranspose(8, 2, strides=2, padding="same", activation="relu")(coarse)
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(layers.Concatenate()([up, fine]))
    x = layers.CenterCrop(8, 8)(layers.Resizing(10, 10, interpolation="nearest")(x))
    model = k.Model(inputs, layers.Conv2D(2, 1, activation="softmax", name="mask")(x))
    model.compile(optimizer=k.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(digits["x"], masks, epochs=4, batch_size=32, verbose=0)
    result = tfquant.quantize(model, digits["x"][:200], eval_data=(digits["x_test"], masks_test), bench_runs=1,
                              diagnose=False)
    assert_every_op_integer(result.info)
    assert {"TRANSPOSE_CONV", "RESIZE_BILINEAR", "CONCATENATION"} <= {op.name for op in result.info.ops}
    measured = result.report.outputs[0]
    assert measured.task == "classification" and measured.float.accuracy > 0.85
    assert measured.quantized.agreement >= 0.99, measured.quantized.agreement

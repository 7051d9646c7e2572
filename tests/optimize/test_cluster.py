"""Clustering and collaborative optimization: what they buy, read from the .tflite file itself."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tfquant
from checks import assert_every_op_integer
from tfquant.cli import main, parse_args

WEIGHT_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}


def file_weights(tflite: bytes) -> dict[str, np.ndarray]:
    """Every weight tensor of the file's conv and dense ops, read with LiteRT's own flatbuffer reader."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    graph = model.subgraphs[0]
    found = {}
    for op in graph.operators:
        code = flatbuffer_utils.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
        if _op_name(code) not in WEIGHT_OPS:
            continue
        tensor = graph.tensors[op.inputs[1]]
        data = model.buffers[tensor.buffer].data
        if data is not None and len(data):
            found[tensor.name.decode()] = np.frombuffer(bytes(data), np.int8)
    return found


def _op_name(code: int) -> str:
    from ai_edge_litert import schema_py_generated as schema

    return next(k for k, v in vars(schema.BuiltinOperator).items() if v == code)


@pytest.fixture(scope="module")
def cqat(digits_model, train_npz, test_npz):
    return tfquant.cluster(digits_model, train_npz, clusters=16, epochs=2, then="qat", eval_data=test_npz,
                           bench_runs=2)


def test_16_cluster_cqat_keeps_accuracy_with_16_values_per_weight_tensor(cqat):
    report = cqat.report
    assert report.accuracy_drop <= 0.01
    assert_every_op_integer(cqat.info)
    weights = file_weights(cqat.tflite)
    assert len(weights) == 4
    for name, values in weights.items():
        assert len(np.unique(values)) <= 16, name
    assert report.training.unique_values and max(report.training.unique_values.values()) <= 16
    assert report.training.kind == "cluster+qat" and report.training.clusters == 16


def test_clustered_int8_gzips_to_at_most_0_6_of_plain_int8(cqat):
    stages = {s.name: s for s in cqat.report.training.stages}
    assert set(stages) == {"float", "int8", "clustered", "qat"}
    assert stages["qat"].gzip_bytes <= 0.6 * stages["int8"].gzip_bytes
    assert cqat.report.quantized.gzip_bytes == stages["qat"].gzip_bytes
    # Plain int8 keeps per-channel scales: its conv kernels hold far more than 16 values.
    assert stages["int8"].accuracy is not None and stages["clustered"].accuracy is not None


def test_pcqat_keeps_the_zeros_and_the_clusters_in_one_file(digits_model, train_npz, test_npz):
    result = tfquant.collaborate(digits_model, train_npz, prune=0.5, cluster=16, qat=True, epochs=2,
                                 eval_data=test_npz, bench_runs=2)
    report = result.report
    assert report.training.kind == "prune+cluster+qat"
    assert report.accuracy_drop <= 0.01
    for name, values in file_weights(result.tflite).items():
        assert len(np.unique(values)) <= 16, name
        assert np.mean(values == 0) >= 0.49, name
    names = [s.name for s in report.training.stages]
    assert names == ["float", "int8", "pruned", "clustered", "qat"]


def test_an_80_percent_pruned_file_written_sparse_is_smaller_raw(digits_model, train_npz, test_npz, tmp_path, capsys):
    out = tmp_path / "sparse" / "m.tflite"
    code = main(parse_args(["prune", "--sparsity", "0.8", "--epochs", "2", "--sparse", "--eval", str(test_npz),
                            "--train", str(train_npz), str(_saved(digits_model, tmp_path)), "-o", str(out), "--json"]))
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    sparse, files = report["training"]["sparse"], report["training"]["files"]
    assert sparse["written"] is True and out.stat().st_size == sparse["tflite_bytes"]
    assert sparse["tflite_bytes"] < files["pruned_int8"]["tflite_bytes"] == sparse["dense_bytes"]
    assert len(sparse["sparse_tensors"]) == 4 and sparse["dense_tensors"] == {}
    assert sparse["latency_p50_ms"] > 0 and sparse["dense_latency_p50_ms"] > 0
    # The sparse file gives the answers the report measured: the interpreter densifies the weights it reads.
    assert report["quantized"]["accuracy"] == pytest.approx(tfquant.evaluate(out, test_npz).accuracy)


def _saved(model, folder):
    path = folder / "model.keras"
    model.save(path)
    return path


def test_a_keras3_model_is_clustered(tmp_path, digits):
    from tfquant._keras import keras3

    k = keras3()
    k.utils.set_random_seed(0)
    inputs = k.Input((8, 8, 1), name="image")
    x = k.layers.Conv2D(8, 3, activation="relu")(inputs)
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax")(k.layers.Flatten()(x)))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(digits["x"], digits["y"], epochs=2, verbose=0)
    result = tfquant.cluster(model, (digits["x"], digits["y"]), clusters=8, epochs=1, bench_runs=2)
    values = file_weights(result.tflite)
    assert len(values) == 2 and all(len(np.unique(v)) <= 8 for v in values.values())


@pytest.fixture(scope="module")
def normalized_cnn(digits):
    """Conv and depthwise kernels each followed by BatchNormalization (the MobileNet pattern), and one
    conv whose output feeds two readers (its BatchNormalization cannot be folded)."""
    from tfquant._keras import keras

    keras.utils.set_random_seed(0)
    layers = keras.layers
    inputs = keras.Input((8, 8, 1), name="image")
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)))
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(32, 3, padding="same", use_bias=False)(x)))
    x = layers.ReLU()(layers.BatchNormalization()(layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)))
    shared = layers.Conv2D(32, 1, name="shared")(x)
    x = layers.Add()([layers.BatchNormalization(name="kept")(shared), shared])
    outputs = layers.Dense(10, activation="softmax")(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(digits["x"], digits["y"], epochs=6, verbose=0)
    return model


def test_batch_norms_fold_into_their_kernels_with_the_same_outputs(normalized_cnn, digits):
    from tfquant._keras import keras
    from tfquant.optimize.fold import fold_batch_norms

    model = normalized_cnn
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    folded = fold_batch_norms(copy)
    assert len(folded) == 3 and "kept" not in folded
    x = digits["x_test"][:64]
    assert np.max(np.abs(model(x).numpy() - copy(x).numpy())) < 1e-5
    for name in folded:
        norm = copy.get_layer(name)
        assert not norm.trainable and np.all(norm.gamma.numpy() == 1) and np.all(norm.moving_mean.numpy() == 0)
        assert np.all(np.float32(norm.moving_variance.numpy()) + np.float32(norm.epsilon) == np.float32(1))
    assert not np.all(copy.get_layer("kept").gamma.numpy() == 1)


def test_cqat_of_a_batch_normalized_cnn_keeps_16_values_per_tensor_in_the_file(normalized_cnn, digits):
    result = tfquant.cluster(normalized_cnn, (digits["x"], digits["y"]), clusters=16, epochs=2, then="qat",
                             eval_data=(digits["x_test"], digits["y_test"]), bench_runs=2)
    report = result.report
    assert len(report.training.folded) == 3
    assert_every_op_integer(result.info)
    counts = {name: len(np.unique(values)) for name, values in file_weights(result.tflite).items()}
    assert len(counts) == 5 and max(counts.values()) <= 16, counts
    assert report.accuracy_drop <= 0.02
    stages = {s.name: s for s in report.training.stages}
    assert stages["qat"].gzip_bytes < stages["int8"].gzip_bytes

"""Pruning: schedules, 2:4 blocks, sparsity-preserving QAT, measured in the .tflite file's own weights."""

from __future__ import annotations

import numpy as np
import pytest

from tfquant.errors import RecipeError
from tfquant.optimize.prune import prune
from tfquant.optimize.weights import sparsity as tflite_sparsity

from checks import assert_every_op_integer


def test_80_percent_pruning_keeps_accuracy_and_halves_gzip(pruned):
    result, _ = pruned
    report, training = result.report, result.report.training
    assert_every_op_integer(result.info)
    assert report.accuracy_drop <= 0.015
    assert set(training.sparsity) == {"digits_cnn/conv2d/Conv2D", "digits_cnn/conv2d_1/Conv2D",
                                      "digits_cnn/dense/MatMul", "digits_cnn/probs/MatMul"}
    assert all(0.79 <= s <= 0.81 for s in training.sparsity.values())
    files = training.files
    assert files["pruned_int8"].tflite_bytes == files["int8"].tflite_bytes  # zeros take room until compressed
    assert files["pruned_int8"].gzip_bytes <= 0.5 * files["int8"].gzip_bytes
    assert files["pruned_int8"].gzip_bytes == report.quantized.gzip_bytes


def test_pruning_summaries_for_tensorboard(pruned):
    _, logs = pruned
    assert any(path.name.startswith("events.out.tfevents") for path in logs.rglob("*"))


def test_sparsity_preserving_qat(digits_model, train_npz, test_npz):
    result = prune(digits_model, train_npz, sparsity=0.75, epochs=2, then="qat", qat_epochs=1, schedule="constant",
                   eval_data=test_npz, bench_runs=1)
    assert result.report.training.kind == "prune+qat" and result.report.training.epochs == 3
    assert_every_op_integer(result.info)
    assert all(s >= 0.74 for s in result.report.training.sparsity.values())
    assert result.report.accuracy_drop <= 0.03


def test_two_of_four_blocks(digits_model, train_npz):
    result = prune(digits_model, train_npz, sparsity=0.5, block="2:4", epochs=1, schedule="constant", bench_runs=1)
    sparsity = tflite_sparsity(result.tflite)
    dense = [s for name, s in sparsity.items() if "dense" in name]
    assert dense and all(abs(s - 0.5) < 0.01 for s in dense)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=result.tflite)
    (kernel,) = [d for d in interpreter.get_tensor_details() if d["name"] == "digits_cnn/dense/MatMul"]
    values = interpreter.get_tensor(kernel["index"])  # (128, 1024): blocks of 4 along the input axis
    nonzero_per_block = (values.reshape(128, -1, 4) != 0).sum(axis=2)
    assert nonzero_per_block.max() <= 2


@pytest.mark.parametrize("options, message", [
    ({"sparsity": 1.5}, r"sparsity: expected a number between 0 and 1 \(exclusive\), found 1.5"),
    ({"sparsity": 0.5, "schedule": "cubic"}, "schedule: unknown value 'cubic'; expected one of: polynomial, constant"),
    ({"sparsity": 0.5, "then": "int4"}, "then: unknown value 'int4'"),
    ({"sparsity": 0.5, "block": "1:8"}, "block: unknown value '1:8'; expected one of: 2:4"),
])
def test_bad_options(digits_model, train_npz, options, message):
    with pytest.raises(RecipeError, match=message):
        prune(digits_model, train_npz, epochs=1, **options)


def test_sparsity_reader_on_known_weights(int8_result):
    sparsity = tflite_sparsity(int8_result.tflite)
    assert len(sparsity) == 4 and max(sparsity.values()) < 0.05  # an unpruned net has few exact zeros
    assert np.isfinite(list(sparsity.values())).all()


def test_a_pruned_regression_model_is_held_to_the_labels(tmp_path):
    """Pruning retrains the weights: the file moves further from the float outputs than the 5 % of σ a
    PTQ file is held to, and is as close to the labels as the float model. Judged by the labels, it is
    within budget."""
    from zoo_cache import trained

    from tfquant import zoo

    from tfquant._keras import keras

    model = trained("tabular_regression", 2)
    keras.utils.set_random_seed(0)  # the fine-tuning's shuffles
    np.savez(tmp_path / "train.npz", **zoo.tabular().train)
    result = prune(model.path, tmp_path / "train.npz", sparsity=0.3, epochs=4, eval_data=model.test,
                           bench_runs=1)
    (score,) = result.report.outputs
    assert score.quantized.rel_rmse > 0.05, score  # what held such a file to the float outputs refused
    assert score.quantized.label_rmse <= np.hypot(score.float.label_rmse, 0.05 * score.float.std) and score.within_budget
    assert score.quantized.r2 >= score.float.r2 - 0.005

"""What training-time optimization needs on every zoo model: the Keras 3 -> tf_keras rebuild with the same
outputs, and QAT that ends fully integer and never below PTQ (`tests/test_zoo.py` converts the same models)."""

from __future__ import annotations

import numpy as np
import pytest
from zoo_cache import trained

from checks import assert_every_op_integer
from tfquant import zoo


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_keras3_models_rebuild_as_tf_keras_with_the_same_outputs(name):
    """What QAT and pruning need: every zoo model, Keras 3 to tf_keras, identical float outputs."""
    from tfquant.rebuild import check_outputs, to_keras2

    model = zoo.build(name, 3)
    test = zoo.ZOO[name].data().test
    samples = {k: v[:4] for k, v in test.items() if not k.startswith("y")}
    rebuilt = to_keras2(model)
    assert check_outputs(model, rebuilt, next(iter(samples.values())) if len(samples) == 1 else samples) <= 1e-4
    kinds = {type(layer).__module__.split(".")[0] if type(layer).__name__ != "Keras3Op" else "op" for layer in rebuilt.layers}
    assert kinds <= {"tf_keras", "op"}, kinds


# Keras 3, the harder path (every layer rebuilt as tf_keras for tfmot), one model per layer
# family: GRU, attention, two inputs, two outputs. The rebuild of every zoo model (the masked
# embedding LSTM and Bidirectional among them) is checked output for output by
# test_keras3_models_rebuild_as_tf_keras_with_the_same_outputs, and tests/optimize/test_qat.py
# fine-tunes LSTMs (return_state, a sequence autoencoder). The CNNs (MobileNetV2/V3) and the other
# recurrent classifiers share these layers and are measured by bench/zoo.py --qat;
# tests/optimize/test_qat.py covers the CNN layer kinds (squeeze-excite, hard-swish, BatchNorm
# after activation, a Keras 3 model rebuilt) one by one.
QAT_CASES = [pytest.param(n, 3, id=f"{n}-k3") for n in ("gru", "transformer", "two_inputs", "two_outputs")]


@pytest.mark.parametrize("name, version", QAT_CASES)
def test_qat_reaches_a_fully_integer_file_no_worse_than_ptq(name, version, tmp_path):
    """QAT on every classifier kind: fully integer, and never below PTQ (when fine-tuning ends lower,
    the PTQ file is kept and the report says so)."""
    import tfquant

    model = trained(name, version)
    data = zoo.ZOO[name].data()
    train = tmp_path / "train.npz"
    np.savez(train, **{k: v[:256] for k, v in data.train.items()})
    result = tfquant.qat(model.path, train, epochs=1, calibration_data=model.calib, eval_data=model.test,
                         bench_runs=2, keep_best=True)
    assert_every_op_integer(result.info)
    training = result.report.training
    assert training.ptq_accuracy is not None
    assert result.report.quantized.accuracy >= training.ptq_accuracy - 1e-9
    assert all(output.within_budget for output in result.report.outputs)  # a regression head beside it too

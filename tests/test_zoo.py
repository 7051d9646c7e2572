"""Every kind of model a user brings, through `tfquant convert` with default options: a fully integer file within budget.

The zoo (`tfquant.zoo`) holds keras.applications CNNs, recurrent models, a Transformer encoder,
a regression, an L2-normalized embedding and models with two inputs or two outputs, in Keras 3
and tf_keras. Budgets: classification drop <= 1 point, regression RMSE <= 5 % of the float
output's standard deviation, embedding mean cosine >= 0.99 and retrieval drop <= 1 point.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from zoo_cache import HEAVY, trained

from checks import assert_every_op_integer
from tfquant import zoo
from tfquant.cli import main, parse_args

LIGHT = [name for name in zoo.ZOO if name not in HEAVY]
# Every light model in both Keras versions. The heavy keras.applications CNNs (ResNet50,
# DenseNet121, ...) need real training to be worth measuring: bench/zoo.py trains and converts
# them; here each is built and rebuilt (test_keras3_models_rebuild_as_tf_keras_with_the_same_outputs).
# One MobileNet (each trains 40-50 s from a cold cache): MobileNetV3Small in Keras 3, whose
# depthwise convolutions, squeeze-excite blocks and hard-swish hold MobileNetV2's layers and more;
# bench/zoo.py measures both in both Keras versions.
CASES = [pytest.param(name, version, id=f"{name}-k{version}") for name in LIGHT for version in (3, 2)
         if not (name == "mobilenet_v2" or (name, version) == ("mobilenet_v3_small", 2))]


def assert_within_budget(report: dict) -> None:
    """Each output against its task's budget, from the report's own numbers."""
    assert report["outputs"], "no output was measured"
    for output in report["outputs"]:
        f, q = output["float"], output["quantized"]
        if output["task"] == "classification":
            assert f["accuracy"] - q["accuracy"] <= 0.01 + 1e-9, output
        elif output["task"] == "regression":
            assert q["rel_rmse"] <= 0.05, output
        else:
            assert q["mean_cosine"] >= 0.99, output
            assert f["retrieval"] - q["retrieval"] <= 0.01 + 1e-9, output
        assert output["within_budget"] is True


@pytest.mark.parametrize("name, version", CASES)
def test_default_convert_is_fully_integer_and_within_budget(name, version, tmp_path, capsys):
    model = trained(name, version)
    out = tmp_path / "model.tflite"
    heavy = name in HEAVY
    argv = ["convert", str(model.path), "--calib", str(model.calib), "--eval", str(model.test), "--max-drop", "0.01",
            "-o", str(out), "--json", "-q"] + (["--calib-samples", "64", "--no-diagnose"] if heavy else [])
    code = main(parse_args(argv))
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert code == 0, captured.err
    assert report["quantized"]["fully_integer"] is True and report["float_ops"] == []
    assert_within_budget(report)
    from tfquant import inspect

    assert_every_op_integer(inspect(out))
    # Inputs keep their kind: token ids stay int32, float inputs become int8.
    dtypes = {t["name"]: t["dtype"] for t in report["io"] if t["kind"] == "input"}
    expected = {"tokens": "int32"} if "tokens" in dtypes else {n: "int8" for n in dtypes}
    assert dtypes == expected


def test_two_outputs_are_judged_each_by_its_own_task(tmp_path):
    import tfquant

    model = trained("two_outputs", 3)
    result = tfquant.quantize(model.path, model.calib, eval_data=model.test, max_drop=0.01, bench_runs=2)
    outputs = {o.name: o for o in result.report.outputs}
    assert set(outputs) == {"digit", "ink"}
    assert outputs["digit"].task == "classification" and outputs["ink"].task == "regression"
    assert outputs["ink"].quantized.rel_rmse < 0.05 and outputs["ink"].float.r2 > 0.8
    # Overriding the task: the class scores judged as an embedding (cosine, and retrieval by the class labels).
    forced = tfquant.quantize(model.path, model.calib, eval_data=model.test, tasks={"digit": "embedding"},
                              bench_runs=2, diagnose=False)
    judged = {o.name: o for o in forced.report.outputs}
    assert judged["digit"].task == "embedding" and judged["digit"].quantized.mean_cosine > 0.99
    assert judged["digit"].float.retrieval > 0.9


def test_inputs_are_bound_by_name_whatever_their_order(tmp_path):
    """The file's signature orders inputs by name; data keyed by name goes to the right input."""
    import tfquant
    from tfquant.harness import Runner

    model = trained("two_inputs", 3)
    result = tfquant.quantize(model.path, model.calib, eval_data=model.test, bench_runs=2, diagnose=False)
    runner = Runner(result.float_tflite)
    assert [p.name for p in runner.inputs] == ["image", "stats"]
    with np.load(model.test) as test:
        swapped = {"stats": test["stats"], "image": test["image"], "y": test["y"]}
    metrics = tfquant.evaluate(result.tflite, swapped)
    assert metrics.accuracy == pytest.approx(result.report.quantized.accuracy)
    assert metrics.accuracy > 0.9


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


CLASSIFIERS = [name for name in LIGHT if zoo.ZOO[name].classifier and not isinstance(zoo.ZOO[name].loss, dict)]
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

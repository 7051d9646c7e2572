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
    # Inputs keep their kind: token ids stay int32, float inputs become int8, but for a table's raw columns,
    # normalized in float before the int8 graph (`tfquant.float_io`).
    dtypes = {t["name"]: t["dtype"] for t in report["io"] if t["kind"] == "input"}
    expected = {"tokens": "int32"} if "tokens" in dtypes else \
        {n: "float32" if name == "raw_table" else "int8" for n in dtypes}
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


def test_folds_hold_out_every_digit_once_with_each_class_in_proportion():
    """`zoo.folds` (bench/folds.py's cross-validation): each digit is held out by exactly one fold and trained on
    by the others, every fold holds each class's share to one sample, and an entry's data is made from a fold."""
    with np.load(zoo.DATA / "digits.npz") as every:
        x, y = every["x"], every["y"]
    folds = zoo.folds(5)
    assert [len(test_y) for _, _, _, test_y in folds] == [364, 362, 359, 357, 355]
    held = np.concatenate([test_x for _, _, test_x, _ in folds]).reshape(len(y), -1)
    assert sorted(map(bytes, held)) == sorted(map(bytes, x.reshape(len(y), -1)))  # each digit once
    for train_x, train_y, test_x, test_y in folds:
        assert len(train_y) + len(test_y) == len(y)
        assert not set(map(bytes, train_x.reshape(len(train_y), -1))) & set(map(bytes, test_x.reshape(len(test_y), -1)))
        share = np.bincount(test_y, minlength=10) - np.bincount(y, minlength=10) / 5
        assert np.abs(share).max() < 1
    assert [len(f[3]) for f in zoo.folds(5, seed=1)] == [364, 362, 359, 357, 355]
    assert not np.array_equal(zoo.folds(5, seed=1)[0][3], folds[0][3])
    data = zoo.ZOO["efficientnet_b0"].data(source=folds[1])
    assert data.test["image"].shape == (362, 32, 32, 3) and data.test["image"].max() == 255.0
    assert np.array_equal(data.train["y"], folds[1][1])

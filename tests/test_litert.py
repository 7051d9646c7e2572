"""The second quantizer: LiteRT Quantizer on the same float file, same samples, same report and census."""

from __future__ import annotations

import json

import pytest

import tfquant
from tfquant.errors import RecipeError, StrictModeError
from tfquant.types import Recipe

from checks import assert_every_op_integer, assert_quantized_close


@pytest.fixture(scope="module")
def litert_result(model_files, train_npz, test_npz):
    return tfquant.quantize(model_files["keras"], train_npz, eval_data=test_npz, bench_runs=5,
                            recipe=Recipe(quantizer="litert"))


def test_litert_gives_a_fully_integer_accurate_file(litert_result, int8_result):
    report = litert_result.report
    assert_every_op_integer(litert_result.info)
    assert_quantized_close(report, max_drop=0.01, max_bytes_ratio=0.30)
    assert report.recipe.quantizer == "litert" and report.recipe.ranges == "minmax"
    assert {t.dtype for t in report.io} == {"int8"}
    # Not the converter's file: another quantizer, measured against the same float reference.
    assert litert_result.tflite != int8_result.tflite
    assert report.float_file.accuracy == int8_result.report.float_file.accuracy


def test_litert_recipe_replays_to_the_same_bytes(litert_result, model_files, train_npz):
    recipe = Recipe.from_dict(json.loads(json.dumps(litert_result.report.recipe.to_dict())))
    again = tfquant.quantize(model_files["keras"], train_npz, recipe=recipe, bench_runs=1)
    assert again.tflite == litert_result.tflite


def test_litert_float_io_has_only_the_adapters_float(model_files, train_npz, test_npz):
    result = tfquant.quantize(model_files["keras"], train_npz, eval_data=test_npz, bench_runs=1, diagnose=False,
                              recipe=Recipe(quantizer="litert", io="float32"))
    assert result.info.fully_integer and result.info.float_ops == []
    float_ops = {op.name for op in result.info.ops if op.float}
    assert float_ops <= {"QUANTIZE", "DEQUANTIZE"} and "QUANTIZE" in {op.name for op in result.info.ops}
    assert result.report.accuracy_drop <= 0.01


@pytest.mark.parametrize("name", ["transformer", "mobilenet_v3_small"])
def test_litert_on_other_kinds(name):
    """Token ids go to LiteRT Quantizer as int32; the SHAPE ops it leaves on a float copy of an
    int8 tensor (Flatten with an open batch, squeeze-excite) read the int8 tensor instead."""
    from zoo_cache import trained

    model = trained(name, 3)
    result = tfquant.quantize(model.path, model.calib, eval_data=model.test, bench_runs=1, diagnose=False,
                              recipe=Recipe(quantizer="litert"))
    assert_every_op_integer(result.info)
    assert "SHAPE" not in {op.name for op in result.info.ops if op.float}
    inputs = {t.dtype for t in result.report.io if t.kind == "input"}
    assert inputs == ({"int32"} if name == "transformer" else {"int8"})
    assert result.report.accuracy_drop <= 0.02


def test_litert_float_ops_are_named_never_called_integer():
    """LiteRT Quantizer has no int8 MINIMUM (the clamp of an L2 normalization): the error names it."""
    from zoo_cache import trained

    model = trained("l2_embedding", 3)
    with pytest.raises(StrictModeError, match=r"found float ops: MINIMUM#\d+ in layer '[^']+' "
                                              r"\(LiteRT Quantizer has no integer form of MINIMUM\); keep just these ops in float with "
                                              r"fallback auto and eval_data, or replace the layer$"):
        tfquant.quantize(model.path, model.calib, bench_runs=1, diagnose=False, recipe=Recipe(quantizer="litert"))


@pytest.mark.parametrize("options, message", [
    (dict(mode="int16x8"), "quantizer litert: expected mode int8 with io int8 or float32 and no denylist, found mode int16x8"),
    (dict(io="uint8"), "found mode int8, io uint8"),
    (dict(denylist=("x",)), "denylist of 1 op(s)"),
    (dict(quantizer="tflite"), "quantizer: unknown value 'tflite'; expected one of: converter, litert"),
])
def test_litert_options_are_checked(options, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Recipe(**{"quantizer": "litert", **options})


def test_ladder_refuses_the_litert_quantizer(model_files, train_npz, test_npz):
    with pytest.raises(RecipeError, match="fallback auto climbs with quantizer converter"):
        tfquant.quantize(model_files["keras"], train_npz, eval_data=test_npz, max_drop=0.01, fallback="auto",
                         recipe=Recipe(quantizer="litert"))


def test_command_takes_quantizer(model_files, train_npz, test_npz, tmp_path, capsys):
    from tfquant.cli import main, parse_args

    out = tmp_path / "m.tflite"
    code = main(parse_args(["convert", str(model_files["keras"]), "--calib", str(train_npz), "--eval", str(test_npz),
                            "--quantizer", "litert", "-o", str(out), "--json", "-q"]))
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["recipe"]["quantizer"] == "litert" and report["quantized"]["fully_integer"]
    assert report["accuracy_drop"] == pytest.approx(report["float"]["accuracy"] - report["quantized"]["accuracy"], abs=1e-6)

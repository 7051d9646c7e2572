"""One contract: the spec of each command drives the Python API, the command's flags and the service's schema."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from tfquant.cli import build_parser, parse_args
from tfquant.errors import RecipeError, naming
from tfquant.service.jobs import parse_spec
from tfquant.spec import SPECS, ConvertSpec, PruneSpec, QATSpec, flags, json_schema
from tfquant.types import SCHEMA_VERSION

MINIMAL = {
    "convert": ["convert", "m.keras", "--calib", "c.npz", "-o", "o.tflite"],
    "qat": ["qat", "m.keras", "--train", "t.npz", "--epochs", "3", "-o", "o.tflite"],
    "prune": ["prune", "m.keras", "--train", "t.npz", "--epochs", "3", "--sparsity", "0.5", "-o", "o.tflite"],
    "cluster": ["cluster", "m.keras", "--train", "t.npz", "--epochs", "3", "-o", "o.tflite"],
    "optimize": ["optimize", "m.keras", "--train", "t.npz", "--epochs", "3", "--qat", "-o", "o.tflite"],
}
# What the minimal command line sets beyond the defaults (the required options, and a stage for optimize).
REQUIRED = {"convert": {}, "qat": {"epochs": 3}, "prune": {"epochs": 3, "sparsity": 0.5}, "cluster": {"epochs": 3},
            "optimize": {"epochs": 3, "qat": True}}


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[command]


@pytest.mark.parametrize("command", list(SPECS))
def test_command_and_service_list_the_same_options_and_defaults(command):
    cls = SPECS[command]
    names = [f.name for f, _, _ in cls.options()]
    # The command: one flag per option, named as the spec says.
    actions = {a.dest: a for a in _subparser(command)._actions}
    assert set(names) <= set(actions)
    for name, flag in flags(cls).items():
        assert flag in actions[name].option_strings
    command_defaults = parse_args(MINIMAL[command]).spec.to_dict()
    # The service: the OpenAPI component of the command, every option the server does not decide itself.
    schema = json_schema(cls)
    served = {f.name for f, opt, _ in cls.options() if opt.service}
    assert set(schema["properties"]) - {"command", "schema_version"} == served
    assert served == set(names) - {"num_threads", "log_dir"}
    service_defaults = {k: v.get("default") for k, v in schema["properties"].items() if k in served}
    for name in REQUIRED[command]:
        assert name in schema["required"] or schema["properties"][name]["default"] != REQUIRED[command][name]
        service_defaults[name] = command_defaults[name]
    assert service_defaults == {k: v for k, v in command_defaults.items() if k in served}
    # The Python API: the spec's own defaults.
    python = cls(**REQUIRED[command]).to_dict()
    assert python == command_defaults
    # And a job's options are the same spec.
    assert parse_spec(json.dumps({"command": command, **REQUIRED[command]}))[1] == {
        k: v for k, v in python.items() if k != "num_threads"} | {"num_threads": None}


def test_the_service_document_carries_every_spec(tmp_path):
    from tfquant.service.app import ServiceConfig, create_app

    document = create_app(ServiceConfig(data_dir=tmp_path)).openapi()
    schemas = document["components"]["schemas"]
    for cls in SPECS.values():
        assert schemas[cls.__name__] == json_schema(cls)
    recipe = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"][
        "properties"]["recipe"]
    assert recipe["contentMediaType"] == "application/json"
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in recipe["contentSchema"]["oneOf"]} == {
        cls.__name__ for cls in SPECS.values()} == {"ConvertSpec", "QATSpec", "PruneSpec", "ClusterSpec", "OptimizeSpec"}


@pytest.mark.parametrize("cls, options, python, command, service", [
    (ConvertSpec, {"max_drop": 2}, "max_drop: expected a number between 0 and 1, found 2",
     "--max-drop: expected a number between 0 and 1, found 2", "recipe: max_drop: expected a number"),
    (ConvertSpec, {"mode": "int16x8", "io": "uint8"}, "io uint8 does not go with mode int16x8",
     "--io uint8 does not go with --mode int16x8", "recipe: io uint8 does not go with mode int16x8"),
    (QATSpec, {"epochs": 1, "learning_rate": -1.0}, "learning_rate: expected a number above 0, found -1.0",
     "--lr: expected a number above 0", "recipe: learning_rate: expected a number above 0"),
    (PruneSpec, {"epochs": 1, "sparsity": 1.0}, "sparsity: expected a number between 0 and 1 (exclusive), found 1.0",
     "--sparsity: expected a number between 0 and 1 (exclusive)", "recipe: sparsity: expected a number between"),
])
def test_errors_name_the_option_as_each_caller_knows_it(cls, options, python, command, service):
    with pytest.raises(RecipeError) as caught:
        cls(**options)
    assert python in str(caught.value)
    with naming("command"), pytest.raises(RecipeError) as caught:
        cls(**options)
    assert command in str(caught.value)
    with pytest.raises(RecipeError) as caught:
        parse_spec(json.dumps({"command": cls.command, **options}))
    assert service in str(caught.value)


@pytest.mark.parametrize("data, message", [
    ({"bits": 4}, "recipe: unknown option(s) bits for convert; expected some of: bench_runs, bias_correction"),
    ({"command": "qat"}, "recipe: qat needs 'epochs'"),
    ({"command": "train"}, "recipe: unknown command 'train'; expected one of: convert, qat, prune"),
    ({"num_threads": 4}, "recipe: num_threads: decided by the server, not an option of a job"),
    ({"schema_version": 99}, "recipe: convert options schema_version: expected 8 (or an older one: 1, 2, 3, 4, 5, 6, 7), found 99"),
    ({"calib_samples": True}, "recipe: calib_samples: expected a whole number at least 1, found True"),
])
def test_a_job_refuses_what_the_spec_does_not_know(data, message):
    with pytest.raises(RecipeError) as caught:
        parse_spec(json.dumps(data))
    assert message in str(caught.value)


def test_a_recipe_of_the_previous_schema_replays(tmp_path):
    """recipe.json of schema 2 held only the Recipe's fields; it still replays, through the command too."""
    old = {"mode": "int8", "io": "int8", "calib_samples": 150, "per_channel": True, "denylist": ["a/b"],
           "ranges": "mse", "bias_correction": False, "quantizer": "converter", "schema_version": 2}
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(old))
    spec = parse_args(["convert", "m.keras", "--calib", "c.npz", "-o", "o.tflite", "--recipe", str(path)]).spec
    assert (spec.calib_samples, spec.denylist, spec.ranges, spec.bias_correction) == (150, ("a/b",), "mse", False)
    assert spec.schema_version == SCHEMA_VERSION
    first = {**old, "schema_version": 1}
    del first["ranges"], first["bias_correction"], first["quantizer"]
    path.write_text(json.dumps(first))
    spec = parse_args(["convert", "m.keras", "--calib", "c.npz", "-o", "o.tflite", "--recipe", str(path)]).spec
    assert (spec.ranges, spec.bias_correction) == ("minmax", False)  # what schema 1 meant


def test_a_qat_recipe_of_an_older_schema_replays_as_it_meant(tmp_path):
    """Each migration touches only the options of the command the recipe is of: a v4 QAT recipe gets
    no convert-only `equalize`, and keeps the QAT file as v4 and v5 did (keep_best was off)."""
    old = {"command": "qat", "epochs": 2, "learning_rate": 1e-5, "calib_samples": 100, "schema_version": 4}
    spec = QATSpec.from_dict(old)
    assert (spec.epochs, spec.learning_rate, spec.keep_best, spec.schema_version) == (2, 1e-5, False, SCHEMA_VERSION)
    assert QATSpec(epochs=2).keep_best is True
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(old))
    spec = parse_args(["qat", "m.keras", "--train", "t.npz", "-o", "o.tflite", "--recipe", str(path)]).spec
    assert (spec.epochs, spec.keep_best) == (2, False)
    assert parse_args(["qat", "m.keras", "--train", "t.npz", "--epochs", "1", "-o", "o.tflite",
                       "--no-keep-best"]).spec.keep_best is False
    with pytest.raises(RecipeError, match="unknown option"):
        QATSpec.from_dict({**old, "equalize": True})


def test_recipe_file_and_flags_may_not_clash(tmp_path, capsys):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(ConvertSpec(calib_samples=50).replayable()))
    with pytest.raises(SystemExit) as caught:
        parse_args(["convert", "m.keras", "--calib", "c.npz", "-o", "o", "--recipe", str(path), "--calib-samples", "9"])
    assert caught.value.code == 2
    assert "the recipe already sets --calib-samples; pass one or the other" in capsys.readouterr().err
    # Options the recipe does not hold (the gates) are still the command's to give.
    spec = parse_args(["convert", "m.keras", "--calib", "c.npz", "--eval", "e.npz", "-o", "o", "--recipe", str(path),
                       "--max-drop", "0.02"]).spec
    assert (spec.calib_samples, spec.max_drop) == (50, 0.02)


def test_a_recipe_holds_what_decides_the_bytes_and_round_trips():
    spec = ConvertSpec(mode="int16x8", calib_samples=64, input_shapes={"seq": (20, 8)}, max_drop=0.01, strict=True)
    recipe = spec.replayable()
    assert recipe["command"] == "convert" and recipe["input_shapes"] == {"seq": [20, 8]}
    assert "max_drop" not in recipe and "strict" not in recipe
    assert ConvertSpec.from_dict(recipe) == dataclasses.replace(spec, max_drop=None, strict=False)
    assert ConvertSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec

"""Finding code in a model's architecture JSON, at any depth and in any spelling of the JSON."""

from __future__ import annotations

import json
import zipfile

import pytest

from tfquant.errors import ModelLoadError
from tfquant.model_config import code_in_config, read_config, refuse_code


def functional(*layers) -> dict:
    return {"class_name": "Functional", "config": {"name": "m", "layers": list(layers)}}


DENSE = {"class_name": "Dense", "config": {"name": "dense", "units": 4, "activation": "relu"}}


def _initializer(class_name: str, config: dict, module: str = "tensorflow.python.ops.init_ops_v2") -> dict:
    return {"module": module, "class_name": class_name, "config": config, "registered_name": class_name}


def _conv(initializer: dict) -> dict:
    return {"module": "tf_keras.layers", "class_name": "Conv2D", "config": {"name": "c", "filters": 4,
                                                                           "bias_initializer": initializer}}


@pytest.mark.parametrize("config, found", [
    (functional(DENSE), []),
    (functional({"class_name": "Lambda", "config": {"name": "double", "function": ["4wEAAA==", None, None],
                                                     "function_type": "lambda", "module": "__main__"}}),
     ["a Lambda layer 'double'"]),
    # Keras 3: a lambda serialized inside an ordinary layer's argument.
    (functional({"module": "keras.layers", "class_name": "Dense", "config": {
        "name": "d", "activation": {"class_name": "__lambda__", "config": {"code": "4wE="}}}}),
     ["a serialized Python lambda"]),
    # Nested: a Lambda inside a Sequential inside a TimeDistributed wrapper inside a functional model.
    (functional({"class_name": "TimeDistributed", "config": {"name": "td", "layer": {
        "class_name": "Sequential", "config": {"layers": [DENSE, {"class_name": "Lambda", "config": {"name": "deep"}}]}}}}),
     ["a Lambda layer 'deep'"]),
    (functional({"class_name": "TFOpLambda", "config": {"name": "op", "function": "math.add"}}), []),
    (functional({"class_name": "TFOpLambda", "config": {"name": "op", "function": {"code": "x"}}}),
     ["a TFOpLambda layer 'op' whose function is not a TensorFlow API name"]),
    (functional({"module": "os", "class_name": "system", "config": {"name": "boom"}}),
     ["system 'boom' from module 'os', which Keras would import"]),
    (functional({"module": "keras.src.applications.convnext", "class_name": "LayerScale", "config": {"name": "ls"}}), []),
    # tf_keras' EfficientNetV2: a bias initializer stored by TensorFlow's module; only initializers of
    # plain values pass, not another class of that module, another TensorFlow module, or nested objects.
    (functional(_conv(_initializer("Constant", {"value": 0}))), []),
    (functional(_conv(_initializer("VarianceScaling", {"scale": 2.0, "mode": "fan_out", "seed": None}))), []),
    (functional(_conv(_initializer("Constant", {"value": 0}, module="tensorflow.python.ops.script_ops"))),
     ["Constant 'Constant' from module 'tensorflow.python.ops.script_ops', which Keras would import"]),
    (functional(_conv(_initializer("numpy_function", {"value": 0}))),
     ["numpy_function 'numpy_function' from module 'tensorflow.python.ops.init_ops_v2', which Keras would import"]),
    (functional(_conv(_initializer("Constant", {"value": {"module": "keras.initializers", "class_name": "Ones"}}))),
     ["Constant 'Constant' from module 'tensorflow.python.ops.init_ops_v2', which Keras would import"]),
])
def test_code_is_found_wherever_it_hides(config, found):
    assert code_in_config(config) == found
    assert code_in_config(json.loads(json.dumps(config, separators=(",", ":")))) == found  # spelling does not matter


def _nested(levels: int, inner: dict) -> dict:
    """`inner` as the layer of a wrapper of a wrapper ... `levels` wrappers deep."""
    for _ in range(levels):
        inner = {"class_name": "TimeDistributed", "config": {"name": "td", "layer": inner}}
    return inner


def test_a_config_nested_past_the_walk_is_refused_and_code_within_it_found():
    lam = {"class_name": "Lambda", "config": {"name": "deep"}}
    assert code_in_config(functional(_nested(60, lam), DENSE)) == ["a Lambda layer 'deep'"]
    assert code_in_config(functional(_nested(60, DENSE))) == []
    # Past 200 levels the rest is not walked: the depth itself is the finding, beside what lies above it.
    assert code_in_config(functional(_nested(150, DENSE))) == ["a config nested more than 200 levels deep"]
    assert code_in_config(functional({"class_name": "Lambda", "config": {"name": "top"}}, _nested(150, lam))) == [
        "a Lambda layer 'top'", "a config nested more than 200 levels deep"]


def test_refusal_is_one_line_naming_the_file_and_the_layer(tmp_path):
    config = functional({"class_name": "Lambda", "config": {"name": "payload"}}, DENSE)
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config, separators=(",", ":")))
    with pytest.raises(ModelLoadError) as caught:
        refuse_code(path, read_config(path))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: expected a model without code, found a Lambda layer 'payload': Python code")


def test_damaged_files_are_typed_errors(tmp_path):
    bad = tmp_path / "bad.keras"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("config.json", "{not json")
    with pytest.raises(ModelLoadError, match="expected a config.json in JSON, found unreadable JSON"):
        read_config(bad)
    deep = tmp_path / "deep.keras"
    with zipfile.ZipFile(deep, "w") as archive:
        archive.writestr("config.json", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelLoadError):
        read_config(deep)

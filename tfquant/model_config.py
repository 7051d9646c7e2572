"""Read a saved model's architecture without loading it, and find anything in it that would run code.

A Keras file describes its layers as JSON: `.h5` in the `model_config` attribute, `.keras` in
`config.json` inside the zip, a tf_keras SavedModel in `keras_metadata.pb`. Loading that JSON
with Keras can run Python: a `Lambda` layer stores marshalled bytecode, Keras 3 serializes
lambdas as `__lambda__` objects, and a `module` key makes Keras import that module by name.
`code_in_config` walks the whole document (every nested layer, wrapper and argument) and names
what it finds, so that `models.load_model` refuses such a file before Keras ever sees it.

Reading the JSON imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any, Callable

from .errors import ModelLoadError, called, problem

# Layers whose config carries a Python function.
LAMBDA_LAYERS = frozenset({"Lambda"})
# tf_keras' TF-op layers name a TensorFlow API symbol ("math.add", "__operators__.getitem"):
# resolved by name from TensorFlow's own namespace, never run from the file.
OP_LAYERS = frozenset({"TFOpLambda", "SlicingOpLambda"})
_API_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# Modules a Keras 3 (or tf_keras v3-format) config may name: Keras' own.
# tensorflow-model-optimization is the library tfquant trains with: a model saved with its QAT, pruning or
# clustering wrappers names their classes by its modules, and loads in its scopes (`models`).
OPTIMIZATION_MODULE = "tensorflow_model_optimization"
SAFE_MODULES = ("keras", "tf_keras", "builtins", OPTIMIZATION_MODULE)
# TensorFlow's own initializers, which tf_keras models store by their TensorFlow module (tf_keras'
# EfficientNetV2 builds its biases with `tf.constant_initializer`): allowed by module and class,
# with a config of plain values, so that the name picks a weight initializer and nothing else.
TF_INITIALIZER_MODULES = frozenset({"tensorflow.python.ops.init_ops_v2", "tensorflow.python.ops.init_ops"})
TF_INITIALIZERS = frozenset({"Constant", "Zeros", "Ones", "RandomUniform", "RandomNormal", "TruncatedNormal",
                             "VarianceScaling", "Orthogonal", "Identity", "GlorotUniform", "GlorotNormal"})
H5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
TFLITE_IDENTIFIER = b"TFL3"  # bytes 4-8 of a TFLite flatbuffer
TFLITE_EXPECTED = "a TFLite flatbuffer (identifier 'TFL3')"
MAX_CONFIG_BYTES = 64 << 20  # an architecture is kilobytes; refuse to parse a JSON bomb


def tflite_identifier_found(head: bytes, size: int) -> str | None:
    """What a file of `size` bytes that starts with `head` (its first 8 bytes or more) is instead of a TFLite
    flatbuffer, for a message; None when its identifier is TFLite's."""
    if len(head) >= 8 and head[4:8] == TFLITE_IDENTIFIER:
        return None
    return f"{size} bytes" + (f" with identifier {head[4:8]!r}" if len(head) >= 8 else "")


def read_config(path: Path) -> dict[str, Any] | None:
    """The architecture JSON of a `.keras`, `.h5` or SavedModel file, or None if it holds none.

    Raises:
        ModelLoadError: the file is damaged or the JSON is not JSON.
    """
    path = Path(path)
    if path.is_dir():
        return _saved_model_config(path)
    if path.suffix == ".keras":
        return _keras_zip_config(path)
    if path.suffix in (".h5", ".hdf5"):
        return _h5_config(path)
    return None


def _parse(where: Path, text: bytes | str, what: str) -> dict[str, Any]:
    if len(text) > MAX_CONFIG_BYTES:
        raise ModelLoadError(problem(where, f"a {what} of at most {MAX_CONFIG_BYTES >> 20} MB", f"{len(text) >> 20} MB"))
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelLoadError(problem(where, f"a {what} in JSON", f"unreadable JSON ({type(exc).__name__})")) from None
    if not isinstance(data, dict):
        raise ModelLoadError(problem(where, f"a {what} as a JSON object", type(data).__name__))
    return data


def _keras_zip_config(path: Path) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("config.json")
            if info.file_size > MAX_CONFIG_BYTES:
                raise ModelLoadError(problem(path, f"a config.json of at most {MAX_CONFIG_BYTES >> 20} MB",
                                             f"{info.file_size >> 20} MB"))
            text = archive.read(info)
    except KeyError:
        raise ModelLoadError(problem(path, "a .keras archive with config.json", "none")) from None
    except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError, ValueError) as exc:
        raise ModelLoadError(problem(path, "a readable .keras zip archive", f"a damaged archive ({exc})")) from None
    return _parse(path, text, "config.json")


def _h5_config(path: Path) -> dict[str, Any] | None:
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            raw = handle.attrs.get("model_config")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(problem(path, "an HDF5 Keras model", f"a file h5py cannot read ({exc})")) from None
    if raw is None:
        return None
    return _parse(path, raw if isinstance(raw, (bytes, str)) else str(raw), "model_config")


def _saved_model_config(path: Path) -> dict[str, Any] | None:
    """tf_keras writes each layer's config into `keras_metadata.pb`; a plain SavedModel has none."""
    metadata = path / "keras_metadata.pb"
    if not metadata.is_file():
        return None
    from tf_keras.protobuf import saved_metadata_pb2

    proto = saved_metadata_pb2.SavedMetadata()
    try:
        proto.ParseFromString(metadata.read_bytes())
    except Exception as exc:  # google.protobuf.message.DecodeError
        raise ModelLoadError(problem(metadata, "a Keras metadata protobuf", f"an unreadable file ({exc})")) from None
    nodes = [_parse(metadata, node.metadata, "layer metadata") for node in proto.nodes if node.metadata]
    return {"class_name": "SavedModelLayers", "config": {"layers": nodes}}


def code_in_config(config: Any) -> list[str]:
    """Everything in an architecture JSON that would run or import code when Keras loads it.

    Example:
        >>> code_in_config({"class_name": "Sequential", "config": {"layers": [
        ...     {"class_name": "Lambda", "config": {"name": "double", "function": ["4wE...", None, None]}}]}})
        ["a Lambda layer 'double'"]
    """
    found: list[str] = []

    def visit(node: dict) -> bool:
        class_name = node.get("class_name")
        config = node.get("config") if isinstance(node.get("config"), dict) else {}
        name = config.get("name") or node.get("name") or class_name
        if class_name in LAMBDA_LAYERS:
            found.append(f"a Lambda layer {name!r}")
            return False  # its function, module and closure are that one finding
        if class_name == "__lambda__" or node.get("function_type") == "lambda":
            found.append(f"a serialized Python lambda{f' in {name!r}' if name and name != '__lambda__' else ''}")
            return False
        if class_name in OP_LAYERS:
            function = config.get("function")
            if not (isinstance(function, str) and _API_SYMBOL.match(function)):
                found.append(f"a {class_name} layer {name!r} whose function is not a TensorFlow API name")
        module = node.get("module")
        registered = node.get("registered_name")
        if isinstance(module, str) and module.split(".")[0] not in SAFE_MODULES and \
                not (isinstance(registered, str) and _registered(registered)) and \
                not _tf_initializer(module, class_name, config):
            found.append(f"{class_name or 'an object'} {name!r} from module {module!r}, which Keras would import")
        return True

    if not _walk(config, visit):
        found.append(f"a config nested more than {MAX_DEPTH} levels deep")
    return list(dict.fromkeys(found))


MAX_DEPTH = 200  # an architecture nests a few dozen levels; deeper is not walked, and is refused


def _walk(node: Any, visit: Callable[[dict], bool], depth: int = 0) -> bool:
    """Call `visit` on every object (dict) of a config, depth first, but not under the parts Keras does not
    load; `visit` returns False to skip what lies under an object. False if some part nests deeper than
    MAX_DEPTH (every other part is walked)."""
    if depth > MAX_DEPTH:
        return False
    if isinstance(node, dict):
        if not visit(node):
            return True
        children = [value for key, value in node.items() if key not in NOT_LOADED]
    elif isinstance(node, list):
        children = node
    else:
        return True
    return all([_walk(child, visit, depth + 1) for child in children if isinstance(child, (dict, list))])


def _tf_initializer(module: str, class_name: Any, config: dict) -> bool:
    """One of TensorFlow's weight initializers, its arguments plain values (a number, a string, a list of numbers)."""
    plain = (int, float, str, bool, type(None))
    return module in TF_INITIALIZER_MODULES and class_name in TF_INITIALIZERS and all(
        isinstance(v, plain) or (isinstance(v, list) and all(isinstance(i, plain) for i in v)) for v in config.values())


def _registered(name: str) -> bool:
    """A custom class registered in this process: the user's own code, not code from the file."""
    import sys

    for keras_module in ("keras", "tf_keras"):
        package = sys.modules.get(keras_module)
        if package is None:
            continue
        try:
            lookup = package.saving.get_registered_object if keras_module == "keras" else \
                package.utils.get_registered_object
            if lookup(name) is not None:
                return True
        except Exception:  # noqa: BLE001 - an odd name is simply not registered
            continue
    return False


def names_optimization(config: Any) -> bool:
    """Whether the config names a class of tensorflow-model-optimization: by its module, or (a tf_keras
    `.h5` stores none for them) by the names of its wrappers (Quantize*, PruneLowMagnitude, ClusterWeights*)."""
    found = []

    def visit(node: dict) -> bool:
        module, name = node.get("module"), node.get("class_name")
        if (isinstance(module, str) and module.split(".")[0] == OPTIMIZATION_MODULE) or \
                (isinstance(name, str) and name.startswith(("Quantize", "PruneLowMagnitude", "ClusterWeights"))):
            found.append(name)
        return not found

    _walk(config, visit)
    return bool(found)


def unregistered_classes(config: Any) -> list[str]:
    """Custom classes ("package>Class") the config names that no code in this process registered and
    no module named in the file would register: Keras cannot build them from the file, which holds
    their settings and weights but not their code (a class defined in a script, `__main__`)."""
    found: dict[str, None] = {}

    def visit(node: dict) -> bool:
        custom = next((n for n in (node.get("registered_name"), node.get("class_name"))
                       if isinstance(n, str) and ">" in n), None)
        module = node.get("module")
        importable = isinstance(module, str) and module not in ("", "__main__")  # Keras may import it (safe_mode off)
        if custom is not None and not importable and not _registered(custom):
            config = node.get("config") if isinstance(node.get("config"), dict) else {}
            found[f"{custom!r}" + (f" (layer {config['name']!r})" if isinstance(config.get("name"), str) else "")] = None
        return True

    _walk(config, visit)
    return list(found)


# Parts of a config tfquant never builds (models load with compile=False): a custom loss or metric there is unused.
NOT_LOADED = frozenset({"compile_config", "training_config"})


def refuse_unregistered(path: Path | str, config: Any) -> None:
    """Raise a ModelLoadError naming the custom classes the file needs and this process lacks."""
    _refuse(path, "layers Keras knows, or custom ones registered by code already imported",
            [f"custom class {found}" for found in unregistered_classes(config)],
            ", whose code is not in the file: quantize the model object in the program that defines the class "
            "(tfquant.quantize(model, ...))")


def refuse_code(path: Path | str, config: Any) -> None:
    """Raise a ModelLoadError naming what in `config` would run code."""
    _refuse(path, "a model without code", code_in_config(config),
            f": Python code that would run when the model is loaded; load it with {called('safe_mode')} only if you "
            "trust the file")


def _refuse(path: Path | str, expected: str, found: list[str], why: str) -> None:
    """The first finding (and how many more), and why it stops the load."""
    if found:
        more = f" and {len(found) - 1} more" if len(found) > 1 else ""
        raise ModelLoadError(problem(path, expected, f"{found[0]}{more}{why}"))

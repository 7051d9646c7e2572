"""Load models of every accepted format and describe their input signature.

Accepted: a tf_keras or Keras 3 model object; `.keras` files saved by Keras 2 (tf_keras) or
Keras 3; `.h5` files; SavedModel folders. Loading never runs code stored in the file (Lambda
layers, custom objects) unless `safe_mode=False`.
"""

from __future__ import annotations

import contextlib
import json
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from . import _keras, model_config
from .errors import ModelLoadError, called, one_line, problem
from .types import TensorSpec

EXPECTED_MODEL = "a Keras model (.keras, .h5), a SavedModel folder or a float32 .tflite file"


@dataclass
class LoadedModel:
    """A model ready for the converter, with its signature for validating data."""

    source: str
    flavor: str  # "keras2", "keras3", "saved_model" or "tflite"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    keras_model: Any = None
    saved_model_dir: Optional[str] = None
    quantization_aware: bool = False  # holds tfmot fake-quant: the converter reads its ranges
    keep_weights: bool = False  # tfmot shaped the weights (pruned zeros, clusters, QAT): exported as they are
    safe_mode: bool = True  # how a SavedModel's Keras layers may be revived later (QAT, pruning)
    notes: list[str] = field(default_factory=list)  # what loading changed, for the report's export notes
    tflite: Optional[bytes] = None  # a float32 .tflite file given as the model: quantized from as it is

    def trained(self, keras_model: Any, *, quantization_aware: bool = False) -> "LoadedModel":
        """The same signature and source, converting `keras_model` (a fine-tuned tf_keras model) instead."""
        return replace(self, flavor="keras2", keras_model=keras_model, saved_model_dir=None,
                       quantization_aware=quantization_aware)


def load_model(source: Any, *, safe_mode: bool = True) -> LoadedModel:
    """Load `source` (a path or a Keras model object) for conversion.

    Example:
        >>> model = load_model("build/digits_cnn.keras")   # doctest: +SKIP
        >>> model.inputs[0].shape
        (None, 8, 8, 1)

    Args:
        source: a path to a `.keras`/`.h5` file or a SavedModel folder, or a model object.
        safe_mode: refuse files that hold code (Lambda layers, pickled functions). Defaults to `True`.

    Raises:
        ModelLoadError: the file is missing, corrupt, unsafe, or not a model.
    """
    if isinstance(source, LoadedModel):
        return source
    if _keras.is_keras2_model(source):
        return _from_keras(source, "<keras model>", "keras2")
    if _keras.is_keras3_model(source):
        return _from_keras(source, "<keras model>", "keras3")
    if not isinstance(source, (str, Path)):
        raise ModelLoadError(problem("model", EXPECTED_MODEL, type(source).__name__))
    path = Path(source)
    if not path.exists():
        raise ModelLoadError(problem(path, EXPECTED_MODEL, "no such file or folder"))
    if path.is_dir():
        return _load_saved_model(path, safe_mode)
    if path.suffix == ".keras":
        return _load_keras_file(path, safe_mode)
    if path.suffix in (".h5", ".hdf5"):
        return _load_h5(path, safe_mode)
    if path.suffix == ".tflite":
        return _load_tflite(path)
    raise ModelLoadError(problem(path, EXPECTED_MODEL, f"a file ending in {path.suffix or '(no suffix)'!r}"))


def _from_keras(model: Any, source: str, flavor: str) -> LoadedModel:
    _stateless(source, model)
    model, aware, notes = _optimization_wrappers(model)
    shaped = bool(notes)  # by tfmot: its weights are exported as they are
    if not getattr(model, "inputs", None):
        return _from_called(model, source, flavor)
    policies = sorted({layer.dtype_policy.name for layer in _keras.all_layers(model) if _not_float32(layer)})
    if policies:
        model = _computing_in_float32(model)
        double = "float64" in policies
        notes.append(f"layers of dtype policy {', '.join(policies)} compute in float32 for the export (TFLite has no "
                     + ("float64 kernels; the weights are rounded to float32)" if double else
                        "float16 convolutions or matmuls; the weights are the same)"))
    inputs = [_spec(t, i) for i, t in enumerate(model.inputs)]
    ids = sorted(i for i in _read_only_by_embeddings(model) if inputs[i].dtype.startswith("float"))
    if ids:
        inputs = [TensorSpec(s.name, s.shape, "int32") if i in ids else s for i, s in enumerate(inputs)]
        notes.append("inputs read only by Embedding layers take int32 token ids: "
                     + ", ".join(repr(inputs[i].name) for i in ids) + " (declared float, which int8 would "
                     "quantize and round to the wrong ids)")
    _numeric(source, inputs, model)
    outputs = [_spec(t, i) for i, t in enumerate(model.outputs)]
    keys = _keras.output_keys(model)
    if keys is not None and len(keys) == len(outputs):
        outputs = [TensorSpec(key, spec.shape, spec.dtype) for key, spec in zip(keys, outputs)]
    return LoadedModel(source=source, flavor=flavor, inputs=inputs, outputs=outputs, keras_model=model, notes=notes,
                       quantization_aware=aware, keep_weights=shaped)


def _read_only_by_embeddings(model) -> set[int]:
    """The indices of the model's inputs that only Embedding layers read: ids, whatever dtype the Input
    declares (Keras' default float32, as in a Sequential model that starts with an Embedding)."""
    readers: dict[int, list] = {id(t): [] for t in model.inputs}
    for layer in getattr(model, "layers", []):
        if type(layer).__name__ == "InputLayer":  # tf_keras lists it, its input its own output
            continue
        try:
            taken = layer.input
        except (AttributeError, RuntimeError, ValueError):  # a layer called more than once, or never
            continue
        taken = list(taken.values()) if isinstance(taken, dict) else taken if isinstance(taken, (list, tuple)) \
            else [taken]
        for tensor in taken:
            if id(tensor) in readers:
                readers[id(tensor)].append(layer)
    return {i for i, t in enumerate(model.inputs)
            if readers[id(t)] and all(type(layer).__name__ == "Embedding" for layer in readers[id(t)])}


def _numeric(source: str, inputs: list[TensorSpec], model: Any = None) -> None:
    """Refuse a model that takes text: an int8 file takes numbers, and TFLite's string ops (a
    TextVectorization or StringLookup inside the model) are neither integer nor builtin."""
    text = [spec for spec in inputs if spec.dtype == "string"]
    if not text:
        return
    found = [layer for layer in (_keras.all_layers(model) if model is not None else [])
             if type(layer).__name__ in ("TextVectorization", "StringLookup", "Hashing")]
    inner = {id(child) for layer in found for child in _keras.all_layers(layer)}  # TextVectorization's own lookup
    readers = [f"{type(layer).__name__} {layer.name!r}" for layer in found if id(layer) not in inner]
    raise ModelLoadError(problem(source, "a model whose inputs are numbers (an int8 .tflite file takes numbers)",
                                 f"input {text[0].name!r} of strings" + (f", read by {', '.join(readers)}" if readers else "")
                                 + ": run that preprocessing in the app and convert the model from its output "
                                 "(token or category ids), e.g. keras.Model(layer.output, model.output)"))


def _stateless(source: str, model: Any) -> None:
    """Refuse a stateful recurrent layer: it keeps its state in variables from one call to the next,
    which a file of frozen weights does not hold (and the export could not freeze)."""
    stateful = [layer for layer in _keras.all_layers(model)
                if getattr(layer, "stateful", False) is True and hasattr(layer, "cell")]
    if stateful:
        named = ", ".join(f"{layer.name!r} ({type(layer).__name__})" for layer in stateful)
        raise ModelLoadError(problem(
            source, "recurrent layers that start each call from a zero state (stateful=False)",
            f"stateful layer(s) {named}, whose state carries from one call to the next: rebuild the model with "
            "stateful=False and load these weights into it (model.get_weights()) to convert one call, or make "
            "the state an input and an output of the model (initial_state=, return_state=True) to carry it in "
            "the app"))


def _not_float32(layer) -> bool:
    """A layer that computes in float16 or bfloat16 (a mixed-precision policy, as GPU training sets) or in
    float64 (`keras.backend.set_floatx("float64")`)."""
    return str(getattr(layer, "compute_dtype", "float32")) in ("float16", "bfloat16", "float64") and \
        not getattr(layer, "_is_input_layer", False) and type(layer).__name__ != "InputLayer"


def _computing_in_float32(model):
    """The same functional or Sequential model with every layer computing in float32, and the same weights
    (mixed precision keeps its variables in float32 already; float64 ones are rounded to float32)."""
    def clone(layer):
        if hasattr(layer, "layers") and hasattr(layer, "inputs") and getattr(layer, "inputs", None):
            return _computing_in_float32(layer)  # a nested model, rebuilt the same way
        config = layer.get_config()
        if _not_float32(layer):
            config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    keras = _keras.keras3() if _keras.is_keras3_model(model) else _keras.keras
    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _from_called(model: Any, source: str, flavor: str) -> LoadedModel:
    """A subclassed model has no Input layers; called once on a batch, it recorded what it takes. Its
    outputs are what it returns for one sample of that shape ("output_0", ... or a dict's keys)."""
    import numpy as np

    inputs = _called_inputs(model, flavor)
    if inputs is None:
        raise ModelLoadError(problem(source, "a model with a known input shape (Input layers, or a subclassed model "
                                             "called once on a batch of one tensor)", "a model never called so"))
    sample = [np.zeros((1, *(1 if d is None else d for d in spec.shape[1:])), spec.dtype) for spec in inputs]
    returned = model(sample[0] if len(sample) == 1 else sample, training=False)
    if isinstance(returned, dict):
        named = list(returned.items())
    else:
        values = list(returned) if isinstance(returned, (list, tuple)) else [returned]
        named = [(f"output_{i}", value) for i, value in enumerate(values)]
    outputs = [TensorSpec(name, (None, *map(int, value.shape[1:])), _keras.dtype_name(value.dtype))
               for name, value in named]
    return LoadedModel(source=source, flavor=flavor, inputs=inputs, outputs=outputs, keras_model=model)


def _called_inputs(model: Any, flavor: str) -> Optional[list[TensorSpec]]:
    """The inputs a subclassed model recorded at its first call, batch dim open: tf_keras keeps each
    tensor's spec; Keras 3 only the shape of its first argument (taken as float32)."""
    if flavor == "keras2":
        recorded = model.save_spec(dynamic_batch=True) if model.built else None
        if not recorded:
            return None
        from ._keras import tf

        specs = tf.nest.flatten(recorded[0])
        return [TensorSpec((spec.name or f"input_{i}").split(":")[0], (None, *spec.shape[1:]), spec.dtype.name)
                for i, spec in enumerate(specs)] or None
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    if len(shapes) != 1 or not model.built:
        return None
    shape = next(iter(shapes.values()))
    if not isinstance(shape, (tuple, list)) or not shape or not all(d is None or isinstance(d, int) for d in shape):
        return None
    import inspect

    name = next(iter(inspect.signature(model.call).parameters), "x")
    return [TensorSpec(name, (None, *shape[1:]), "float32")]


# Float inputs a file takes as float32: an int8 file quantizes them from float32, TFLite has no float64
# kernels, and a float16 input is cast to float32 at once by the layers that read it.
AS_FLOAT32 = {"float64", "float16", "bfloat16"}


def _spec(tensor: Any, index: int) -> TensorSpec:
    shape = tuple(None if d is None else int(d) for d in tensor.shape)
    dtype = _keras.dtype_name(tensor.dtype)
    dtype = "float32" if dtype in AS_FLOAT32 else dtype
    return TensorSpec(name=_keras.tensor_name(tensor, f"input_{index}"), shape=shape, dtype=dtype)


def _load_keras_file(path: Path, safe_mode: bool) -> LoadedModel:
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            head = handle.read(len(model_config.H5_SIGNATURE))
        found = "an HDF5 file (rename it to .h5)" if head == model_config.H5_SIGNATURE else \
            f"{path.stat().st_size} bytes that are not a zip archive"
        raise ModelLoadError(problem(path, "a .keras zip archive", found))
    config = model_config.read_config(path)
    if safe_mode:
        model_config.refuse_code(path, config)
    model_config.refuse_unregistered(path, config)
    try:
        major = _keras.saved_keras_major(path)
    except (KeyError, json.JSONDecodeError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(problem(path, "a .keras archive with metadata.json", f"a damaged archive ({exc})")) from None
    if major == 3:
        loader, flavor = _keras.keras3().saving.load_model, "keras3"
        model = _call_loader(path, lambda: loader(str(path), compile=False, safe_mode=safe_mode), safe_mode)
    else:
        loader, flavor = _keras.keras.models.load_model, "keras2"
        with _plain_file_reads(), _optimization_scopes(config):
            model = _call_loader(path, lambda: loader(str(path), compile=False, safe_mode=safe_mode,
                                                      custom_objects=_keras.application_layers()), safe_mode)
    return _from_keras(model, str(path), flavor)


@contextlib.contextmanager
def _plain_file_reads():
    """tf_keras reads a .keras archive through `tf.io.gfile.GFile`, and h5py reads the weights
    inside it in many small seeks and reads, each of which costs TensorFlow's file layer several
    milliseconds: 8 s for MobileNetV2's 27 MB. While it loads, its saving module opens local
    files with Python's own buffered reader instead (the same bytes, read-only)."""
    from tf_keras.src.saving import saving_lib

    real = saving_lib.tf
    saving_lib.tf = _LocalFiles(real)
    try:
        yield
    finally:
        saving_lib.tf = real


class _LocalFiles:
    """`tf` for tf_keras' saving module, with `tf.io.gfile.GFile` opening local paths by `open`."""

    def __init__(self, tf, path: tuple[str, ...] = ()):
        self._tf, self._path = tf, path

    def __getattr__(self, name: str):
        value = getattr(self._tf, name)
        if self._path + (name,) in (("io",), ("io", "gfile")):
            return _LocalFiles(value, self._path + (name,))
        if self._path + (name,) == ("io", "gfile", "GFile"):
            return lambda path, mode="r": open(path, "rb") if "://" not in str(path) and "r" in mode \
                and "w" not in mode else value(path, mode)
        return value


def _load_h5(path: Path, safe_mode: bool) -> LoadedModel:
    with open(path, "rb") as handle:
        head = handle.read(len(model_config.H5_SIGNATURE))
    if head != model_config.H5_SIGNATURE:
        found = "a zip archive (rename it to .keras)" if head[:2] == b"PK" else f"{path.stat().st_size} bytes that are not HDF5"
        raise ModelLoadError(problem(path, "an HDF5 Keras model", found))
    config = model_config.read_config(path)
    if config is None:
        raise ModelLoadError(problem(path, "an HDF5 file holding a whole Keras model", "no model_config (weights only?)"))
    if safe_mode:
        model_config.refuse_code(path, config)
    model_config.refuse_unregistered(path, config)
    major = _keras.saved_keras_major(path)
    if major == 3:
        loader = lambda: _keras.keras3().saving.load_model(str(path), compile=False, safe_mode=safe_mode)  # noqa: E731
    else:
        loader = lambda: _keras.keras.models.load_model(  # noqa: E731
            str(path), compile=False, safe_mode=safe_mode, custom_objects=_keras.application_layers())
    with _optimization_scopes(config if major != 3 else None):
        model = _call_loader(path, loader, safe_mode)
    return _from_keras(model, str(path), "keras3" if major == 3 else "keras2")


@contextlib.contextmanager
def _optimization_scopes(config: Any):
    """tensorflow-model-optimization's QAT, pruning and clustering classes known by name while a tf_keras
    file that names them loads (its wrappers are Keras layers of that library, not code in the file)."""
    if config is None or not model_config.names_optimization(config):
        yield
        return
    import tensorflow_model_optimization as tfmot

    with tfmot.quantization.keras.quantize_scope(), tfmot.sparsity.keras.prune_scope(), \
            tfmot.clustering.keras.cluster_scope():
        yield


def _optimization_wrappers(model: Any) -> tuple[Any, bool, list[str]]:
    """(the model with pruning and clustering wrappers stripped, whether it holds QAT fake-quant layers,
    what was done: nothing for a model tfmot did not wrap): a model saved or handed over in the middle of
    tfmot's training."""
    modules = {type(layer).__module__ for layer in _keras.all_layers(model)}
    if not any(module.startswith(model_config.OPTIMIZATION_MODULE) for module in modules):
        return model, False, []
    import tensorflow_model_optimization as tfmot

    notes = []
    if any(".sparsity." in module for module in modules):
        model = tfmot.sparsity.keras.strip_pruning(model)
        notes.append("pruning wrappers stripped (the pruned weights as they are)")
    if any(".clustering." in module for module in modules):
        model = tfmot.clustering.keras.strip_clustering(model)
        notes.append("clustering wrappers stripped (the clustered weights as they are)")
    aware = any(".quantization." in type(layer).__module__ for layer in _keras.all_layers(model))
    if aware:
        notes.append(_AWARE)
    return model, aware, notes


_AWARE = ("a quantization-aware (tfmot) model: its int8 file takes the ranges its fake-quant layers learned; the "
          "calibration data sets only its input and output scales")


def _load_tflite(path: Path) -> LoadedModel:
    """A float32 .tflite file (another converter's, or a float file tfquant wrote): calibrated and
    quantized as it is. Its inputs and outputs are its signature's (else its graph's tensor names).
    A file that holds quantized or float16 tensors is refused: int8 is made from float32."""
    from ai_edge_litert import schema_py_generated as schema

    from .errors import TFLiteFileError
    from .flatbuffer import read_model
    from .harness import Runner

    try:
        runner = Runner(path)  # the flatbuffer identifier, and a file the interpreter opens
    except TFLiteFileError as exc:
        raise ModelLoadError(str(exc)) from None
    data = runner.data
    reduced = {schema.TensorType.INT8: "int8", schema.TensorType.UINT8: "uint8", schema.TensorType.INT16: "int16",
               schema.TensorType.FLOAT16: "float16"}
    model = read_model(data)
    found = sorted({reduced[t.type] for g in model.subgraphs for t in g.tensors if t.type in reduced and (
        t.type == schema.TensorType.FLOAT16 or (t.quantization is not None and t.quantization.scale is not None
                                                and len(t.quantization.scale)))})
    if found:
        raise ModelLoadError(problem(path, "a float32 .tflite file to quantize", f"{' and '.join(found)} tensors: the file "
                                     "is quantized already (tfquant eval, inspect and bench read it as it is)"))
    inputs, outputs = runner.specs, [TensorSpec(p.name, spec.shape, p.dtype.name)
                                     for p, spec in zip(runner.outputs, runner.output_specs)]
    open_dims = [spec for spec in inputs if None in spec.shape[1:]]
    if open_dims:
        raise ModelLoadError(problem(path, "a .tflite file whose inputs are fixed but for the batch (its graph is "
                                     "quantized as it is)", f"input {open_dims[0].name!r} of shape {open_dims[0].describe()}: "
                                     "convert it with that length fixed, or give tfquant the Keras model"))
    return LoadedModel(source=str(path), flavor="tflite", inputs=inputs, outputs=outputs, tflite=data)


def _load_saved_model(path: Path, safe_mode: bool) -> LoadedModel:
    if not (path / "saved_model.pb").exists():
        raise ModelLoadError(problem(path, "a SavedModel folder (with saved_model.pb)", "a folder without saved_model.pb"))
    tf = _keras.tf
    loaded = _call_loader(path, lambda: tf.saved_model.load(str(path)))
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise ModelLoadError(problem(path, "a SavedModel with a serving_default signature", "none"))
    _, kwargs = signature.structured_input_signature
    inputs = [
        TensorSpec(name=name, shape=tuple(spec.shape.as_list()), dtype=spec.dtype.name)
        for name, spec in sorted(kwargs.items())
    ]
    outputs = [
        TensorSpec(name=name, shape=tuple(spec.shape.as_list()), dtype=spec.dtype.name)
        for name, spec in sorted(signature.structured_outputs.items())
    ]
    _numeric(str(path), inputs)
    found = LoadedModel(source=str(path), flavor="saved_model", inputs=inputs, outputs=outputs,
                        saved_model_dir=str(path), safe_mode=safe_mode)
    if _fake_quant(signature):  # a QAT model: its Keras layers hold the ranges the converter reads
        revived = _from_keras(revive_keras2(found), str(path), "keras2")
        return revived if revived.quantization_aware else \
            replace(revived, quantization_aware=True, keep_weights=True, notes=revived.notes + [_AWARE])
    return found


def _fake_quant(signature) -> bool:
    """Whether a SavedModel's serving graph (or a function it calls) holds fake-quant ops."""
    graph = signature.graph.as_graph_def()
    nodes = list(graph.node) + [node for function in graph.library.function for node in function.node_def]
    return any(node.op.startswith("FakeQuantWithMinMax") for node in nodes)


def revive_keras2(loaded: LoadedModel):
    """The tf_keras model behind a SavedModel folder that tf_keras wrote (for the tfmot stages).

    Unlike `tf.saved_model.load`, which restores only the traced graph, this rebuilds the Keras
    layers from their stored configs, so it is held to the same safe mode as a `.keras` file.
    """
    path = Path(loaded.saved_model_dir)
    config = model_config.read_config(path)
    if loaded.safe_mode:
        model_config.refuse_code(path, config)
    custom = _keras.application_layers()
    with _optimization_scopes(config):
        return _call_loader(path, lambda: _keras.keras.models.load_model(str(path), compile=False,
                                                                          custom_objects=custom), loaded.safe_mode)


def _call_loader(path: Path, load, safe_mode: bool = True):
    """Run a Keras loader with safe mode enforced by the loader itself.

    tf_keras reads `safe_mode=` only for `.keras` files; its `.h5` path deserializes a Lambda's
    bytecode unless a `SafeModeScope` is active, so the scope is set around every load.
    """
    from tf_keras.src.saving import serialization_lib as keras2_serialization

    try:
        with keras2_serialization.SafeModeScope(safe_mode):  # Keras 3 enforces the safe_mode= it is given
            return load()
    except Exception as exc:  # Keras raises ValueError, TypeError, OSError... for a bad file
        message = one_line(exc)
        if safe_mode and ("safe_mode" in message or "Lambda" in message):
            raise ModelLoadError(
                problem(path, "a model without code", "a layer that would run stored Python code (e.g. Lambda); "
                        f"load it with {called('safe_mode')} only if you trust the file")
            ) from None
        found = f"{type(exc).__name__}: {message[:300]}"
        root = _root_cause(exc)
        if "Lambda" in message and root is not exc:  # its stored code ran here, without the names it was written with
            found = (f"{type(root).__name__}: {one_line(root)[:300]} (raised by a Lambda layer's stored code, which "
                     "may use names of the program that defined it: quantize the model object there, "
                     "tfquant.quantize(model, ...))")
        raise ModelLoadError(problem(path, "a loadable Keras model", found)) from None


def _root_cause(exc: BaseException) -> BaseException:
    """The first exception of a chain Keras wraps ("Exception encountered when calling Lambda.call()")."""
    seen = {id(exc)}
    while True:
        earlier = exc.__cause__ or exc.__context__
        if earlier is None or id(earlier) in seen:
            return exc
        exc = earlier
        seen.add(id(exc))

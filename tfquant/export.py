"""Export: a Keras model (2 or 3) or a SavedModel, once, to the float32 `.tflite` file every later stage starts from.

The fast route traces the model to a concrete function with one named `TensorSpec` per input
(keeping each input's dtype: token ids stay int32), freezes its variables and converts the frozen
function: a second or two where `TFLiteConverter.from_keras_model` writes and reloads a whole
SavedModel. The file gets a `serving_default` signature whose input and output names are the
model's own, so that data is bound by name everywhere, never by position. Where a graph cannot be
frozen, the SavedModel route is taken instead, and the result says which route was used.

Recurrent layers are unrolled, and masked softmaxes and argmax traced in integer forms, for the
export (`tfquant.tracing`).
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

from . import _keras, legalize
from .console import captured_stderr
from .errors import ConversionError, one_line, problem
from .models import LoadedModel, revive_keras2
from .lookups import comparable_lookups
from .tracing import builtin_argmax, int8_norms, quantizable_masking, unrolled
from .volumes import planar_volumes
from .types import TensorSpec

SIGNATURE = "serving_default"


@dataclass
class Exported:
    """The float file and what it took to make it."""

    tflite: bytes
    route: str  # "concrete function", "SavedModel" or TFLITE_ROUTE
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    function: Any = None  # the frozen concrete function, for the converter's own modes (QAT, dynamic, float16)
    # (float file, Dataset, that file calibrated on it): where deciding how to export took a calibration pass
    calibrated: Optional[tuple[bytes, Any, bytes]] = None

    def calibrated_on(self, float_tflite: bytes, calibration: Any) -> Optional[bytes]:
        """`float_tflite` calibrated on `calibration` if that pass was run already, else None."""
        done = self.calibrated
        return done[2] if done is not None and done[0] is float_tflite and done[1] is calibration else None

    def sample_shapes(self) -> dict[str, tuple]:
        """The fixed shape of one sample per input, to export a fine-tuned copy of the model alike."""
        return {spec.name: tuple(spec.shape[1:]) for spec in self.inputs if all(d is not None for d in spec.shape[1:])}

    def convert(self, configure: Callable[[Any], None], *, source: str = "<model>") -> bytes:
        """Run TFLiteConverter on the frozen function with `configure(converter)` applied (same names)."""
        tf = _keras.tf

        def run() -> bytes:
            converter = tf.lite.TFLiteConverter.from_concrete_functions([self.function])
            configure(converter)
            return converter.convert()

        data = _converted(source, run)
        return legalize.name_signature(data, [s.name for s in self.inputs], [s.name for s in self.outputs])


def export(loaded: LoadedModel, *, shapes: Optional[dict[str, tuple]] = None, keep_weights: bool = False,
           split_gates: bool = False, norms: frozenset = frozenset()) -> Exported:
    """The float32 `.tflite` of `loaded`, its inputs and outputs named as the model names them.

    Args:
        loaded: from `models.load_model`.
        shapes: per input name, the shape of one sample (without the batch dim), as the data has
            it; it fixes the dims the model leaves open (a sequence length, an image size).
        keep_weights: leave every weight value as the model has it (a pruned, clustered or
            quantization-aware model): no rewrite that changes weights (`legalize`). Defaults to
            `False`.
        split_gates: trace each LSTM cell with its gates apart (`tfquant.gates`). Defaults to `False`.
        norms: the names of normalizations to trace as int8 keeps them best (`tracing.int8_norms`).
            Defaults to none.

    Raises:
        DataError: a recurrent layer whose sequence length neither the model nor the data fixes.
        ConversionError: the converter refused the model.
    """
    started = time.perf_counter()
    inputs = [_fixed(spec, (shapes or {}).get(spec.name)) for spec in loaded.inputs]
    if loaded.tflite is not None:
        result = _export_tflite(loaded, keep_weights)
    elif loaded.keras_model is not None:
        inputs, batch_notes = _one_sample_per_invoke(inputs)
        result = _export_keras(loaded, inputs, keep_weights, split_gates, norms)
        result.notes[:0] = batch_notes
        open_batch = any(spec.shape and spec.shape[0] is None for spec in inputs)
        failure = _first_run_fails(result.tflite, inputs) if open_batch else None
        if failure:
            # Some graphs convert with an open batch dim and then fail to prepare in TFLite (tf_keras'
            # GroupNormalization: a BROADCAST_TO of a shape computed from the batch); with the batch fixed
            # at 1 the converter folds those shapes away. The harness runs a fixed batch sample by sample.
            ones = [TensorSpec(s.name, (1, *s.shape[1:]), s.dtype) for s in inputs]
            fixed = _export_keras(loaded, ones, keep_weights, split_gates, norms)
            if not _first_run_fails(fixed.tflite, fixed.inputs):
                fixed.notes.append(f"exported with the batch fixed at 1: with an open batch dim, {failure}")
                result = fixed
    else:
        keras_written = (Path(loaded.saved_model_dir) / "keras_metadata.pb").exists()
        why = None
        try:
            result = _export_saved_model(loaded, inputs, keep_weights)
            kept = _traced_away(result.tflite)
            if kept and keras_written:
                why = f"its traced graph keeps {', '.join(kept)}, which no quantizer makes integer"
        except ConversionError:
            if not keras_written:
                raise
            why = "its traced graph did not convert"
        if why is not None:
            # tf_keras wrote it: its layers, revived (in the same safe mode as a .keras file), export as a Keras
            # model's do: recurrent layers unrolled where the traced graph keeps a loop the converter refuses,
            # and the layers `lookups` and `volumes` spell in integer forms (lookups, buckets, 3D convolutions)
            # so spelled.
            revived = replace(loaded, flavor="keras2", keras_model=revive_keras2(loaded))
            result = export(revived, shapes=shapes, keep_weights=keep_weights, split_gates=split_gates,
                            norms=norms)
            result.notes.insert(0, f"exported from its tf_keras layers: {why}")
    result.seconds = time.perf_counter() - started
    return result


# Float-only ops of a traced graph that a Keras model's export spells in integer forms (`lookups`, `volumes`).
_TRACED_AWAY = ("BUCKETIZE", "CONV_3D", "CONV_3D_TRANSPOSE")


def _traced_away(data: bytes) -> list[str]:
    """Which of `_TRACED_AWAY` the float file holds."""
    from ai_edge_litert import schema_py_generated as schema

    from .flatbuffer import builtin_codes

    held = set(builtin_codes(schema.Model.GetRootAs(data, 0)))
    return [name for name in _TRACED_AWAY if getattr(schema.BuiltinOperator, name) in held]


def _first_run_fails(data: bytes, inputs: list[TensorSpec]) -> Optional[str]:
    """Why the float file cannot run one all-zero sample on TFLite's builtin kernels, or None."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if any(d is None for spec in inputs for d in spec.shape[1:]):
        return None  # an open dim besides the batch: nothing to run yet
    try:
        interpreter = Interpreter(model_content=data,
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        runner = interpreter.get_signature_runner()
        details = runner.get_input_details()
        runner(**{name: np.zeros((1, *d["shape"][1:]), d["dtype"]) for name, d in details.items()})
    except (RuntimeError, ValueError) as exc:
        return one_line(exc, 200)
    return None


def _one_sample_per_invoke(inputs: list[TensorSpec]) -> tuple[list[TensorSpec], list[str]]:
    """Inputs whose batch the model fixes above 1 (`Input(..., batch_size=8)`) traced with a batch of 1.

    The file is calibrated, measured and run on device one sample per invoke; a graph traced at the
    declared batch bakes it into its reshapes (Keras 3's Flatten: 576 elements read as 8 × 576).
    """
    notes = []
    traced = []
    for spec in inputs:
        batch = spec.shape[0] if spec.shape else None
        if batch is not None and batch > 1:
            notes.append(f"{spec.name}: the model fixes its batch at {batch}; exported with a batch of 1, "
                         "one sample per invoke")
            spec = TensorSpec(spec.name, (1, *spec.shape[1:]), spec.dtype)
        traced.append(spec)
    return traced, notes


def _fixed(spec: TensorSpec, sample: Optional[tuple]) -> TensorSpec:
    if sample is None or len(sample) != len(spec.shape) - 1:
        return spec
    dims = (spec.shape[0], *(d if d is not None else int(s) for d, s in zip(spec.shape[1:], sample)))
    return TensorSpec(spec.name, dims, spec.dtype)


def _export_keras(loaded: LoadedModel, inputs: list[TensorSpec], keep_weights: bool,
                  split_gates: bool = False, norms: frozenset = frozenset()) -> Exported:
    tf = _keras.tf
    model = loaded.keras_model
    keras_names = _call_names(model) if getattr(model, "inputs", None) else [s.name for s in inputs]
    output_names = [s.name for s in loaded.outputs]
    tensor_specs = [tf.TensorSpec(spec.shape, tf.as_dtype(spec.dtype), name=spec.name) for spec in inputs]

    def serve(*args):
        feed = args[0] if len(args) == 1 else dict(zip(keras_names, args))
        out = model(feed, training=False)
        if isinstance(out, dict) and set(out) == set(output_names):
            return {name: out[name] for name in output_names}  # by key: a call returns them in its own order
        out = list(out.values()) if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else [out]
        return dict(zip(output_names, out))

    with unrolled(model, inputs, split_gates=split_gates) as notes, quantizable_masking(model) as softmax_notes, \
            builtin_argmax(), comparable_lookups(model) as lookup_notes, planar_volumes(model) as volume_notes, \
            int8_norms(model, norms):
        function = tf.function(serve).get_concrete_function(*tensor_specs)
        frozen = _freeze(loaded.source, function)
    notes += softmax_notes + lookup_notes + volume_notes
    data = _converted(loaded.source, lambda: tf.lite.TFLiteConverter.from_concrete_functions([frozen]).convert())
    data = legalize.name_signature(data, [s.name for s in inputs], _flat_keys(output_names))
    data, rewrites = legalize.make_quantizable(data, keep_weights=keep_weights)
    return Exported(data, "concrete function", inputs, _outputs(data, loaded.outputs), loaded.notes + notes + rewrites,
                    function=frozen)


TFLITE_ROUTE = "float .tflite as given"


def _export_tflite(loaded: LoadedModel, keep_weights: bool) -> Exported:
    """A float32 .tflite file given as the model: its signature named as its inputs and outputs are,
    its ops made quantizable. Its shapes are the file's own; the modes that need the converter
    (dynamic, float16) have no function to convert, and say so."""
    data = legalize.name_signature(loaded.tflite, [s.name for s in loaded.inputs], [s.name for s in loaded.outputs])
    data, rewrites = legalize.make_quantizable(data, keep_weights=keep_weights)
    return Exported(data, TFLITE_ROUTE, list(loaded.inputs), list(loaded.outputs), rewrites)


def _export_saved_model(loaded: LoadedModel, inputs: list[TensorSpec], keep_weights: bool) -> Exported:
    tf = _keras.tf
    restored = tf.saved_model.load(loaded.saved_model_dir)  # holds the variables while the signature is traced
    signature = _with_shapes(restored, inputs)
    _, kwargs = signature.structured_input_signature
    names = [spec.name for spec in tf.nest.flatten(kwargs)]  # placeholders in the function's own order
    keys = sorted(kwargs)  # flatten order of a dict: sorted keys
    try:
        frozen = _freeze(loaded.source, signature)
        data = _converted(loaded.source, lambda: tf.lite.TFLiteConverter.from_concrete_functions([frozen]).convert())
        data = legalize.name_signature(data, keys if len(keys) == len(names) else names,
                                       _flat_keys(list(signature.structured_outputs)))
        route = "concrete function"
    except ConversionError:
        frozen = None
        converter = tf.lite.TFLiteConverter.from_saved_model(loaded.saved_model_dir)
        data = _converted(loaded.source, converter.convert, _SAVED_MODEL_HINTS)
        route = "SavedModel"
    data, rewrites = legalize.make_quantizable(data, keep_weights=keep_weights)
    return Exported(data, route, inputs, _outputs(data, loaded.outputs), rewrites, function=frozen)


def _with_shapes(restored, inputs: list[TensorSpec]):
    """A restored SavedModel's serving signature, traced again with the dims it leaves open (an image's
    size) set as the data has them, so that the file's ops get fixed shapes; as it is where it fixes
    them all (the batch stays open). A file with open dims would be resized to each sample by whoever
    runs it."""
    tf = _keras.tf
    signature = restored.signatures["serving_default"]
    _, kwargs = signature.structured_input_signature
    given = {spec.name: spec.shape for spec in inputs}
    specs, changed = {}, False
    for key, spec in kwargs.items():
        shape = spec.shape.as_list()
        data = given.get(key)
        if data is not None and len(data) == len(shape):
            fixed = [shape[0]] + [d if d is not None else g for d, g in zip(shape[1:], data[1:])]
            changed |= fixed != shape
            shape = fixed
        specs[key] = tf.TensorSpec(shape, spec.dtype, name=key)
    if not changed:
        return signature
    return tf.function(lambda **feed: restored.signatures["serving_default"](**feed)).get_concrete_function(**specs)


def _freeze(source: str, function):
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return convert_variables_to_constants_v2(function)
    except Exception as exc:  # lookup tables and some control flow cannot be frozen
        raise ConversionError(problem(source, "a graph whose variables can be frozen",
                                      f"{type(exc).__name__}: {one_line(exc, 200)}")) from None


def _call_names(model) -> list[str]:
    """The keys a functional model takes its inputs by (its Input layers' names)."""
    names = getattr(model, "input_names", None)
    if names:
        return list(names)
    return [getattr(t, "name", f"input_{i}").split(":")[0] for i, t in enumerate(model.inputs)]


def _flat_keys(names: list[str]) -> list[str]:
    """The order in which a dict of outputs is flattened: sorted keys."""
    return sorted(names)


def _outputs(data: bytes, declared: list[TensorSpec]) -> list[TensorSpec]:
    """The outputs as the file has them (fixed dims filled in), in the model's declared order."""
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_content=data).get_signature_runner(SIGNATURE).get_output_details()
    found = []
    for spec in declared:
        detail = details.get(spec.name)
        if detail is None:
            found.append(spec)
            continue
        shape = tuple(None if d < 0 else int(d) for d in detail["shape_signature"])
        found.append(TensorSpec(spec.name, shape, spec.dtype))
    return found


# --- running the converter ------------------------------------------------------------------


def _converted(source: str, step: Callable[[], bytes], hints: Optional[dict[str, str]] = None) -> bytes:
    """Run a converter step with its C++ log captured: shown, condensed, only when it fails (with `hints`, by
    the TensorFlow op named, instead of those for a Keras model)."""
    import logging

    absl = logging.getLogger("absl")  # "Please consider providing the trackable_obj..." is about the slow route
    level = absl.level
    absl.setLevel(logging.ERROR)
    with captured_stderr() as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return bytes(step())
        except Exception as exc:
            raise ConversionError(conversion_failure(source, "a model TFLiteConverter can convert", exc, log.read(),
                                                     hints)) from None
        finally:
            absl.setLevel(level)


# TensorFlow ops the converter names when it fails, and what they come from in a Keras model.
_HINTS = {
    "LookupTable": "the lookup tables of StringLookup, IntegerLookup or TextVectorization have no TFLite "
                   "builtin: map the values to ids before the model and feed those",
    "TensorList": "a loop over a sequence kept as a loop: give the sequence a fixed length (--input-shape "
                  "INPUT=STEPS,...) so that it can be unrolled",
    "StringToHashBucket": "Hashing hashes each value as a string, which TFLite has no builtin for: hash the values "
                          "before the model and feed the bins",
    "Bincount": "CategoryEncoding counts values with a bincount, which TFLite has no builtin for: encode the "
                "values before the model, or look them up with an Embedding",
    "ExtractImagePatches": "tf.image.extract_patches has no TFLite builtin: take non-overlapping p×p patches "
                           "with reshapes and a transpose, x → reshape(N, H/p, p, W/p, p, C) → transpose(0, 1, 3, "
                           "2, 4, 5) → reshape(N, H/p·W/p, p·p·C), or with keras.ops.image.extract_patches (Keras "
                           "3: a convolution by an identity kernel), both the same patches",
}


# A SavedModel without its Keras model (Keras 3's `model.export`, `tf.saved_model.save`): nothing to unroll.
_SAVED_MODEL_HINTS = {**_HINTS, "TensorList": "a loop over a sequence, which tfquant unrolls only in a Keras model: "
                                              "give it the .keras or .h5 file, or a SavedModel that tf_keras saved"}


def conversion_failure(source: str, expected: str, exc: Exception, log: str,
                       hints: Optional[dict[str, str]] = None) -> str:
    text = one_line(exc)
    errors = [m.strip() for m in re.findall(r"error: ([^\n]+)", str(exc) + "\n" + log)]
    detail = "; ".join(dict.fromkeys(errors)) if errors else text
    hints = [hint for op, hint in (hints or _HINTS).items() if re.search(rf"'tf\.\w*{op}", detail)]
    return problem(source, expected, detail[:500] + "".join(f" ({hint})" for hint in hints))

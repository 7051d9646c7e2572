"""The one place that chooses Keras.

tfmot works only on Keras 2, which TensorFlow 2.16+ ships separately as `tf_keras` and uses
for `tf.keras` only when `TF_USE_LEGACY_KERAS=1` is set before TensorFlow is imported. tfquant
sets that variable here (unless the user set it), so `tf.keras`, `tf_keras` and tfmot agree.

Models built with Keras 3 are still accepted: TFLiteConverter converts them directly. Only the
tfmot stages need Keras 2, and they say so (`keras3_unsupported`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ INFO/WARNING lines drown the command's own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":  # pragma: no cover
    warnings.warn(
        "TensorFlow was imported before tfquant with TF_USE_LEGACY_KERAS unset; tf.keras is Keras 3 "
        "in this process. tfquant uses tf_keras directly, but import tfquant first (or set "
        "TF_USE_LEGACY_KERAS=1) so that your own tf.keras models are Keras 2 models.",
        stacklevel=2,
    )



class CapturedStderr:
    """What native code wrote to file descriptor 2 inside `captured_stderr()`."""

    def __init__(self, handle):
        self._handle = handle
        self.text = ""

    def read(self) -> str:
        self._handle.flush()
        self._handle.seek(0)
        self.text = self._handle.read().decode(errors="replace")
        return self.text


@contextlib.contextmanager
def captured_stderr():
    """Capture what C++ code writes to fd 2 (TensorFlow's import banner, the converter's log).

    Python's `sys.stderr` is not enough: native code writes to the descriptor directly.
    """
    sys.stderr.flush()
    with tempfile.TemporaryFile() as handle:
        saved = os.dup(2)
        os.dup2(handle.fileno(), 2)
        captured = CapturedStderr(handle)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.read()


# On a machine without a GPU, TensorFlow's import prints CUDA probing lines before its logging
# is configured; they go to the debug log instead of the user's terminal.
with captured_stderr() as _banner:
    import tensorflow as tf  # noqa: E402
    import tf_keras as keras  # noqa: E402

    tf.config.list_physical_devices()  # runs the CUDA probe now, inside the capture
logging.getLogger("tfquant").debug("TensorFlow import said: %s", _banner.text.strip())

tf.get_logger().setLevel("ERROR")

__all__ = ["tf", "keras", "keras3", "is_keras3_model", "saved_keras_major"]


def keras3():
    """Import and return the Keras 3 package (for loading files that Keras 3 saved)."""
    import keras as _keras3  # noqa: PLC0415  (the separate Keras 3 package)

    return _keras3


def is_keras3_model(model: object) -> bool:
    """True for a model object built with Keras 3 (`keras.*`), False for tf_keras (`tf_keras.*`)."""
    return type(model).__module__.split(".")[0] == "keras"


def is_keras2_model(model: object) -> bool:
    return isinstance(model, keras.Model)


def saved_keras_major(path: Path) -> int | None:
    """The Keras major version recorded in a saved `.keras` or `.h5` file, or None if unknown."""
    if path.suffix == ".keras":
        import json

        with zipfile.ZipFile(path) as archive:
            meta = json.loads(archive.read("metadata.json"))
        version = str(meta.get("keras_version", ""))
    elif path.suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as handle:
            raw = handle.attrs.get("keras_version", b"")
        version = raw.decode() if isinstance(raw, bytes) else str(raw)
    else:
        return None
    head = version.split(".")[0]
    return int(head) if head.isdigit() else None


def keras3_unsupported(stage: str) -> str:
    """The message for a Keras 3 model given to a stage that needs Keras 2 (tfmot)."""
    return (
        f"{stage} needs a Keras 2 (tf_keras) model because tensorflow-model-optimization does not "
        "support Keras 3; rebuild the model with `import tf_keras as keras` (tfquant.keras), or use "
        "`tfquant convert`, which accepts Keras 3 models"
    )


def to_keras2(model):
    """Rebuild a Keras 3 Sequential or functional model as a tf_keras model with the same weights.

    tfmot wraps only tf_keras layers. Built-in layers translate one to one: their configs differ
    in the input shape key, dtype policies, serialized initializers and the node format, which
    are mapped here; weights are copied layer by layer. Raises ValueError naming the first layer
    that does not translate.
    """
    config = model.get_config()
    layers_config = config.get("layers")
    if layers_config is None:
        raise ValueError(f"{type(model).__name__} is neither Sequential nor functional")
    rebuilt = []
    for entry in layers_config:
        name = entry.get("config", {}).get("name", entry.get("class_name"))
        cls = getattr(keras.layers, entry["class_name"], None)
        if cls is None:
            raise ValueError(f"layer {name!r} ({entry['class_name']}) has no tf_keras counterpart")
        item = {"class_name": entry["class_name"], "config": _layer_config(entry["config"])}
        if "inbound_nodes" in entry:
            item["name"] = entry.get("name", item["config"].get("name"))
            item["inbound_nodes"] = [_node(node) for node in entry["inbound_nodes"]]
        rebuilt.append(item)
    if type(model).__name__ == "Sequential":
        target = keras.Sequential.from_config({"name": config["name"], "layers": rebuilt})
    else:
        target = keras.Model.from_config({
            "name": config["name"], "layers": rebuilt,
            "input_layers": _tensor_refs(config["input_layers"]), "output_layers": _tensor_refs(config["output_layers"]),
        })
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            target.get_layer(layer.name).set_weights(weights)
    return target


# Keys Keras 3 adds to layer configs that tf_keras does not take.
_KERAS3_ONLY = {"optional", "lora_rank", "lora_alpha", "quantization_config", "synchronized", "input_axes",
                "output_axes"}


def _layer_config(config: dict) -> dict:
    out = {}
    for key, value in config.items():
        if key in _KERAS3_ONLY:
            continue
        if key == "batch_shape":
            key = "batch_input_shape"
        if key == "dtype" and isinstance(value, dict):
            value = value.get("config", {}).get("name", "float32")
        out[key] = _plain_object(value)
    return out


def _plain_object(value):
    """Keras 3's {"module", "class_name", "config", "registered_name"} -> tf_keras' {"class_name", "config"}."""
    if isinstance(value, dict) and "class_name" in value and "config" in value:
        inner = {k: _plain_object(v) for k, v in (value["config"] or {}).items() if k not in _KERAS3_ONLY}
        return {"class_name": value["class_name"], "config": inner}
    if isinstance(value, list):
        return [_plain_object(v) for v in value]
    return value


def _node(node) -> list:
    """A Keras 3 node {"args": [tensor or [tensors]], "kwargs": {}} -> tf_keras [[layer, node, index, kwargs], ...]."""
    if isinstance(node, list):  # already tf_keras format
        return node
    args = node.get("args", [])
    first = args[0] if args else []
    tensors = first if isinstance(first, list) else [first]
    refs = []
    for tensor in tensors:
        if not (isinstance(tensor, dict) and tensor.get("class_name") == "__keras_tensor__"):
            raise ValueError(f"a call with non-tensor arguments ({str(tensor)[:60]}) does not translate")
        history = tensor["config"]["keras_history"]
        refs.append([history[0], history[1], history[2], {}])
    extra = {k: v for k, v in (node.get("kwargs") or {}).items() if k not in ("training", "mask")}
    if len(args) > 1 or extra:  # training/mask are decided by tf_keras itself
        raise ValueError(f"a layer called with extra arguments ({', '.join(extra) or 'positional'}) does not translate")
    return refs


def _tensor_refs(refs) -> list:
    if refs and not isinstance(refs[0], list):
        refs = [refs]
    return [list(r[:3]) for r in refs]

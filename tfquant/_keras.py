"""The one place that chooses Keras.

tfmot works only on Keras 2, which TensorFlow 2.16+ ships separately as `tf_keras` and uses
for `tf.keras` only when `TF_USE_LEGACY_KERAS=1` is set before TensorFlow is imported. tfquant
sets that variable here (unless the user set it), so `tf.keras`, `tf_keras` and tfmot agree.

Models built with Keras 3 are still accepted: export traces them directly, and the tfmot stages
rebuild them as tf_keras first (`tfquant.rebuild`).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator, Optional

from .console import captured_stderr

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


# Layers that tf_keras' own applications define without registering them, so that its loader
# cannot find them by the names a saved file gives (ConvNeXt's). They are library code, not code
# from the file.
_APPLICATION_LAYERS = {"tf_keras.src.applications.convnext": ("LayerScale", "StochasticDepth")}


def application_layers() -> dict[str, type]:
    """`custom_objects` for tf_keras' loader: the unregistered layer classes of its applications, and
    what it saves but cannot load back (its SpectralNormalization; a NumPy array in a config)."""
    import importlib

    found = {name: getattr(importlib.import_module(module), name)
             for module, names in _APPLICATION_LAYERS.items() for name in names}
    return {**found, "SpectralNormalization": _spectral_normalization(), "__numpy__": _NumpyArray}


class _NumpyArray:
    """A NumPy array in a tf_keras `.h5` config (a `Constant(np.eye(3).flatten())` initializer, as PointNet's
    T-Net has): tf_keras writes it as `{"class_name": "__numpy__", "config": {"value", "dtype"}}`, which its
    `.h5` loader does not know ("Unknown object: '__numpy__'"). Read back as the array: a list and a dtype
    name, no code."""

    @classmethod
    def from_config(cls, config: dict):
        import numpy as np

        return np.array(config["value"], dtype=np.dtype(config.get("dtype") or "float32"))


@functools.lru_cache(maxsize=None)
def _spectral_normalization() -> type:
    """tf_keras' SpectralNormalization, able to load back: tf_keras reads the wrapped layer of a `.keras`
    file in the legacy format (and builds it as a string: "'str' object is not callable"), and finds
    no class of that name in an `.h5` file. The layer is read in the format it was written in."""
    from tf_keras.src.layers.normalization.spectral_normalization import SpectralNormalization

    class Loadable(SpectralNormalization):
        @classmethod
        def from_config(cls, config, custom_objects=None):
            config = dict(config)
            inner = config.pop("layer")
            legacy = not (isinstance(inner, dict) and "module" in inner)
            return cls(keras.layers.deserialize(inner, custom_objects=custom_objects, use_legacy_format=legacy),
                       **config)

    Loadable.__name__ = Loadable.__qualname__ = "SpectralNormalization"
    return Loadable


def is_keras3_model(model: object) -> bool:
    """True for a model object built with Keras 3 (`keras.*`, subclasses too), False for tf_keras."""
    package = sys.modules.get("keras")
    return package is not None and isinstance(model, package.Model)


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


def dtype_name(dtype) -> str:
    """"float32" for a TensorFlow DType, a NumPy dtype or Keras 3's dtype string alike."""
    return getattr(dtype, "name", None) or str(dtype)


def tensor_name(tensor, default: str = "input") -> str:
    """The name users see for a symbolic Keras tensor: the layer (tf_keras) or operation (Keras 3) that made
    it, not the tensor's own ("input_1", "keras_tensor")."""
    history = getattr(tensor, "_keras_history", None)
    if history is not None:
        return history[0].name
    return (getattr(tensor, "name", None) or default).split(":")[0]


def all_layers(layer) -> Iterator[Any]:
    """Every layer inside `layer`, at any depth (nested models, Bidirectional and other wrappers)."""
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is not None:
        yield from flatten(include_self=False, recursive=True)
        return
    for child in getattr(layer, "layers", []) or []:
        yield child
        yield from all_layers(child)


def output_keys(model) -> Optional[list[str]]:
    """A functional model's output dict keys, in the order of `model.outputs` (a dict flattens by sorted
    key); None when its outputs are a tensor or a list. The keys are the names it returns its outputs by,
    whatever its layers are called."""
    struct = getattr(model, "_outputs_struct", None)  # Keras 3
    if struct is None:
        struct = getattr(model, "_nested_outputs", None)  # tf_keras
    return sorted(str(key) for key in struct) if isinstance(struct, dict) else None

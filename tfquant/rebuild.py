"""Keras 3 -> tf_keras, for the tfmot stages (QAT, pruning), with identical float outputs.

tfmot wraps only tf_keras layers. Rather than translating the saved JSON, the Keras 3 model's
own graph is run once on tf_keras symbolic inputs (`Functional._run_through_graph`): every node
is called with its own arguments — positional, keyword, nested, shared layers and nested models
alike — so that any call a Keras 3 functional model records is reproduced:

- a Keras 3 layer becomes the tf_keras layer of the same class (or of the same name in
  `tf_keras.applications`, such as ConvNeXt's LayerScale) from its config, mapped where the two
  versions differ, and gets the Keras 3 layer's weights;
- a Keras 3 op recorded on symbolic tensors (`x + 3.0`, `ops.cumsum`, slicing) becomes a small
  layer that runs that op's own computation on TensorFlow tensors;
- a layer with no tf_keras counterpart (a custom class) is kept as is inside such a layer, its
  weights frozen.

`check_outputs` then compares both models on sample inputs; a rebuild that does not compute the
same function is an error, never a silent change.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Optional

import numpy as np

from ._keras import dtype_name, keras, tensor_name, tf
from .errors import one_line

# Keys Keras 3 adds to layer configs that tf_keras does not take.
_KERAS3_ONLY = {"optional", "lora_rank", "lora_alpha", "quantization_config", "synchronized", "input_axes",
                "output_axes", "use_cudnn", "flash_attention", "seed", "dtype_policy", "registered_name"}
TOLERANCE = 1e-4


class RebuildError(ValueError):
    """A Keras 3 model that does not rebuild as tf_keras with the same outputs."""


class Keras3Op(keras.layers.Layer):
    """A Keras 3 operation (or a Keras 3 layer with no tf_keras class) run on TensorFlow tensors.

    Keras 3 with the TensorFlow backend computes with TensorFlow ops, so the operation's own
    `call` works unchanged inside a tf_keras model. Its weights, if any, are not trained by tf_keras.
    """

    def __init__(self, operation=None, arguments=None, key: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        if key is not None:  # a clone (tfmot clones the model): the same operation, by reference
            operation, arguments = _LIVE[key]
        self.operation = operation
        self.arguments = arguments  # (positional template, keyword template): tensors are slots
        self.key = id(self)
        _LIVE[self.key] = (operation, arguments)

    def call(self, tensors):
        # One list argument: tf_keras records only a layer's first positional argument as its node's
        # inputs, and a clone (tfmot's) is rebuilt from those; a list of one may come back unwrapped.
        args, kwargs = _fill(self.arguments, list(tensors) if isinstance(tensors, (list, tuple)) else [tensors])
        return self.operation(*args, **kwargs)

    def get_config(self):
        # In memory only: the operation is a live Keras 3 object, passed to clones by a key.
        _LIVE[self.key] = (self.operation, self.arguments)
        return {**super().get_config(), "key": self.key}


_LIVE: dict[int, tuple] = {}


def to_keras2(model) -> Any:
    """Rebuild a Keras 3 functional or Sequential model as a tf_keras model with the same weights."""
    graph = getattr(model, "_functional", None) or model
    if not hasattr(graph, "_run_through_graph") or not getattr(graph, "inputs", None):
        raise RebuildError(f"{type(model).__name__} {model.name!r} is a subclassed model; only functional and "
                           "Sequential Keras 3 models rebuild as tf_keras (build it with keras.Input)")
    inputs = [keras.Input(shape=tuple(t.shape[1:]), batch_size=t.shape[0], dtype=dtype_name(t.dtype), name=tensor_name(t))
              for t in graph.inputs]
    cache: dict[int, Any] = {}
    outputs = graph._run_through_graph(inputs, operation_fn=lambda op: _translated(op, cache))
    if isinstance(outputs, dict):  # kept a dict: its keys name the outputs, in sorted order, as Keras 3's do
        return keras.Model(inputs if len(inputs) > 1 else inputs[0], dict(outputs), name=model.name)
    flat = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], flat if len(flat) > 1 else flat[0], name=model.name)


def inline_nested(model) -> Any:
    """A tf_keras functional model whose nested functional and Sequential models are called layer by
    layer in the outer graph (tf_keras' ConvNeXt has its stem and downsampling blocks as Sequential
    models; tfmot wraps layers, not models). The same layers, so the same weights; `model` itself is
    returned when nothing is nested."""
    if not any(isinstance(layer, keras.Model) for layer in model.layers):
        return model
    inputs = [keras.Input(shape=tuple(t.shape[1:]), batch_size=t.shape[0], dtype=dtype_name(t.dtype), name=tensor_name(t))
              for t in model.inputs]
    outputs = _graph_outputs(model, inputs)
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs if len(outputs) > 1 else outputs[0],
                       name=model.name)


def _graph_outputs(model, inputs: list) -> list:
    """`model`'s graph called on `inputs` (tf_keras tensors) node by node, as tf_keras' own
    `Functional._run_internal_graph` does, with a nested model's graph run in its place."""
    if not getattr(model, "_is_graph_network", False):
        if not isinstance(model, keras.Sequential):
            raise RebuildError(f"the nested {type(model).__name__} {model.name!r} is a subclassed model; only "
                               "functional and Sequential models are inlined")
        x = inputs[0] if len(inputs) == 1 else inputs
        for layer in model.layers:
            x = _graph_outputs(layer, tf.nest.flatten(x)) if isinstance(layer, keras.Model) else layer(x)
            x = x[0] if isinstance(x, list) and len(x) == 1 else x
        return tf.nest.flatten(x)
    uses = model._tensor_usage_count
    tensors = {str(id(ref)): [new] * uses[str(id(ref))] for ref, new in zip(model.inputs, inputs)}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input or any(ref not in tensors for ref in node.flat_input_ids):
                continue
            args, kwargs = node.map_arguments(tensors)
            if isinstance(node.layer, keras.Model):  # training= and mask= are the caller's business
                outputs = _graph_outputs(node.layer, tf.nest.flatten(args))
            else:
                outputs = node.layer(*args, **kwargs)
            for ref, new in zip(node.flat_output_ids, tf.nest.flatten(outputs)):
                tensors[ref] = [new] * uses[ref]
    return [tensors[str(id(ref))].pop() for ref in model.outputs]


def _translated(operation, cache: dict[int, Any]):
    """The tf_keras callable for one Keras 3 operation, made once per operation (shared layers stay shared)."""
    key = id(operation)
    if key not in cache:
        cache[key] = _make(operation)
    return cache[key]


def _make(operation):
    import keras as keras3

    if isinstance(operation, keras3.Model):  # a nested model: its layers called in its caller's graph
        return _Inlined(operation)
    if isinstance(operation, keras3.layers.InputLayer):
        return lambda x: x
    if isinstance(operation, keras3.layers.Layer):
        target = _keras2_class(type(operation).__name__)
        if target is not None:
            try:
                layer = target.from_config(_accepted(target, _layer_config(operation.get_config())))
            except (TypeError, ValueError, KeyError) as exc:
                raise RebuildError(f"layer {operation.name!r} ({type(operation).__name__}) does not translate "
                                   f"to tf_keras: {one_line(exc, 160)}") from None
            return _WeightsAfterCall(layer, operation)
    return _OpCaller(operation)


class _Inlined:
    """A nested functional or Sequential model, inlined: its graph is run on the caller's tensors with
    each of its layers translated once (a model called twice shares its layers, as it shares its
    weights). tfmot wraps layers, not models: a model inside a model is one layer it refuses."""

    def __init__(self, model):
        self.graph = getattr(model, "_functional", None) or model
        if not hasattr(self.graph, "_run_through_graph") or not getattr(self.graph, "inputs", None):
            raise RebuildError(f"the nested {type(model).__name__} {model.name!r} is a subclassed model; only "
                               "functional and Sequential models rebuild as tf_keras")
        self.cache: dict[int, Any] = {}

    def __call__(self, *args, **kwargs):  # training= and mask= are the caller's business
        inputs = args[0] if len(args) == 1 else list(args)
        return self.graph._run_through_graph(inputs, operation_fn=lambda op: _translated(op, self.cache))


class _WeightsAfterCall:
    """Call the tf_keras layer (which builds it), then give it the Keras 3 layer's weights."""

    def __init__(self, layer, source):
        self.layer, self.source, self.done = layer, source, False

    def __call__(self, *args, **kwargs):
        out = self.layer(*args, **kwargs)
        if not self.done and self.source is not None:
            weights = [np.asarray(w) for w in self.source.get_weights()]
            try:
                self.layer.set_weights(weights)
            except ValueError as exc:
                raise RebuildError(f"layer {self.source.name!r} ({type(self.source).__name__}): its weights do not "
                                   f"fit the tf_keras layer ({one_line(exc, 160)})") from None
            self.done = True
        return out


class _OpCaller:
    """Route an op's tensor arguments through a `Keras3Op` layer; everything else stays in its template."""

    def __init__(self, operation):
        self.operation = operation
        self.layer: Optional[Keras3Op] = None

    def __call__(self, *args, **kwargs):
        tensors: list = []
        template = (_template(args, tensors), _template(kwargs, tensors))
        if self.layer is None:
            self.layer = Keras3Op(self.operation, template, name=_op_name(self.operation))
        else:
            self.layer.arguments = template
        return self.layer(tensors)


def _template(value, tensors: list):
    if _is_symbolic(value):
        tensors.append(value)
        return _Slot(len(tensors) - 1)
    if isinstance(value, (list, tuple)):
        return type(value)(_template(v, tensors) for v in value)
    if isinstance(value, dict):
        return {k: _template(v, tensors) for k, v in value.items()}
    return value


class _Slot:
    def __init__(self, index: int):
        self.index = index


def _fill(arguments, tensors: list):
    def fill(value):
        if isinstance(value, _Slot):
            return tensors[value.index]
        if isinstance(value, (list, tuple)):
            return type(value)(fill(v) for v in value)
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    args, kwargs = arguments
    return fill(args), fill(kwargs)


def _is_symbolic(value) -> bool:
    return isinstance(value, (tf.Tensor, tf.Variable)) or type(value).__name__ == "KerasTensor"


def _op_name(operation) -> str:
    name = getattr(operation, "name", None) or type(operation).__name__
    return f"keras3_{name}"


_CLASSES: dict[str, Any] = {}


def _keras2_class(name: str):
    """tf_keras' layer class of this name: `tf_keras.layers`, then the layers of `tf_keras.applications`."""
    found = getattr(keras.layers, name, None)
    if isinstance(found, type) and issubclass(found, keras.layers.Layer):
        return found
    if not _CLASSES:
        import tf_keras.src.applications as applications

        for info in pkgutil.iter_modules(applications.__path__):
            try:
                module = importlib.import_module(f"tf_keras.src.applications.{info.name}")
            except ImportError:  # pragma: no cover
                continue
            for attr, value in vars(module).items():
                if isinstance(value, type) and issubclass(value, keras.layers.Layer) and attr not in _CLASSES:
                    _CLASSES[attr] = value
    return _CLASSES.get(name)


# Keys tf_keras' from_config expects although Keras 3 never writes them.
_REQUIRED = {"MultiHeadAttention": {"query_shape": None, "key_shape": None, "value_shape": None}}
_LAYER_KWARGS = {"name", "trainable", "dtype", "input_shape", "batch_input_shape", "batch_size", "dynamic",
                 "input_dim", "autocast", "activity_regularizer"}


def _accepted(target: type, config: dict) -> dict:
    """The config with only the keys the tf_keras class takes (a dropped key that mattered shows in
    `check_outputs`), plus what its from_config insists on."""
    import inspect as _inspect

    names: set[str] = set(_LAYER_KWARGS)
    for cls in target.__mro__:
        init = vars(cls).get("__init__")
        if init is None:
            continue
        parameters = _inspect.signature(init).parameters
        names |= {n for n, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            break
    kept = {k: v for k, v in config.items() if k in names}
    kept.update({k: v for k, v in _REQUIRED.get(target.__name__, {}).items() if k not in kept})
    return kept


def _layer_config(config: dict) -> dict:
    out = {}
    for key, value in config.items():
        if key in _KERAS3_ONLY:
            continue
        if key == "batch_shape":
            key = "batch_input_shape"
        if key == "dtype" and isinstance(value, dict):
            value = value.get("config", {}).get("name", "float32")
        if key in ("activation", "recurrent_activation") and isinstance(value, str) and value in _ACTIVATIONS:
            value = _ACTIVATIONS[value]
        out[key] = _plain(value)
    return out


def _plain(value):
    """Keras 3's {"module", "class_name", "config", "registered_name"} -> tf_keras' {"class_name", "config"}."""
    if isinstance(value, dict) and "class_name" in value and "config" in value:
        inner = value["config"]
        if isinstance(inner, dict):
            inner = _layer_config(inner) if "name" in inner else {k: _plain(v) for k, v in inner.items()
                                                                  if k not in _KERAS3_ONLY}
        return {"class_name": value["class_name"], "config": inner}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@keras.utils.register_keras_serializable(package="tfquant")
def keras3_hard_sigmoid(x):  # Keras 3: relu6(x + 3) / 6 (tf_keras' hard_sigmoid is 0.2 x + 0.5, clipped)
    return tf.nn.relu6(x + 3.0) / 6.0


@keras.utils.register_keras_serializable(package="tfquant")
def keras3_hard_silu(x):
    return x * keras3_hard_sigmoid(x)


# Registered, so that tfmot's clones of the rebuilt model find them by name.
_ACTIVATIONS = {"hard_sigmoid": "tfquant>keras3_hard_sigmoid", "hard_silu": "tfquant>keras3_hard_silu",
                "hard_swish": "tfquant>keras3_hard_silu"}


def check_outputs(original, rebuilt, samples: dict[str, np.ndarray] | np.ndarray, *, tolerance: float = TOLERANCE) -> float:
    """The largest difference between the two models' outputs on `samples`; raises if over `tolerance`."""
    def flat(value):
        if isinstance(value, dict):
            return [np.asarray(v) for v in value.values()]
        if isinstance(value, (list, tuple)):
            return [np.asarray(v) for v in value]
        return [np.asarray(value)]

    first, second = flat(original(samples, training=False)), flat(rebuilt(samples, training=False))
    worst = max(float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0 for a, b in zip(first, second))
    if worst > tolerance:
        raise RebuildError(f"the tf_keras rebuild of {original.name!r} computes something else: outputs differ by "
                           f"up to {worst:.3g} (expected at most {tolerance:g})")
    return worst

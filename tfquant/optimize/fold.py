"""BatchNormalization folded into the kernel before it, in the Keras model, with the same outputs.

The converter folds every inference-mode BatchNormalization into the conv or dense kernel before
it: kernel × gamma / sqrt(variance + epsilon), one factor per output channel. That is harmless
for plain int8, but it undoes weight sharing: 16 shared kernel values become 16 per output
channel, hundreds per tensor, once the file is written. So before clustering, each foldable
pair is folded here instead, where the fine-tuning can see it:

- the kernel (and bias) take the per-channel factor;
- the BatchNormalization stays, as an exact identity plus shift: gamma 1, mean 0, a variance
  that makes variance + epsilon exactly 1 in float32, beta the shift the fold left; it is frozen
  (inference mode), so training does not turn it back into a per-channel scale.

The converter's own fold then multiplies the kernel by 1, and the shared values reach the file.

A pair is folded when the BatchNormalization's only input is a Conv1D, Conv2D, DepthwiseConv2D
or Dense layer with no activation, whose output feeds nothing else, and it normalizes the last
(channel) axis. Nested models are folded inside.
"""

from __future__ import annotations

import numpy as np

from .._keras import keras


def fold_batch_norms(model) -> list[str]:
    """Fold every foldable BatchNormalization of `model` in place; the names of those folded."""
    folded = []
    for producer, norm in _pairs(model):
        if _fold(producer, norm):
            folded.append(norm.name)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            folded += fold_batch_norms(layer)
    return folded


def _kernel_layers() -> tuple[type, ...]:
    layers = keras.layers
    return layers.Conv1D, layers.Conv2D, layers.DepthwiseConv2D, layers.Dense


def _pairs(model) -> list[tuple]:
    """(kernel layer, BatchNormalization) pairs where the second is the only reader of the first."""
    by_name = {layer.name: layer for layer in model.layers}
    if isinstance(model, keras.Sequential):
        return [(a, b) for a, b in zip(model.layers, model.layers[1:]) if _foldable(a, b)]
    config = model.get_config()
    if "layers" not in config or "output_layers" not in config:
        return []
    readers: dict[str, int] = {}
    inputs: dict[str, list[str]] = {}
    for entry in config["layers"]:
        names = [inbound[0] for node in entry.get("inbound_nodes", []) for inbound in node]
        inputs[entry["name"]] = names if len(entry.get("inbound_nodes", [])) == 1 else []
        for name in names:
            readers[name] = readers.get(name, 0) + 1
    for output in config["output_layers"]:
        readers[output[0]] = readers.get(output[0], 0) + 1
    pairs = []
    for name, sources in inputs.items():
        norm = by_name.get(name)
        if len(sources) == 1 and readers.get(sources[0]) == 1 and sources[0] in by_name \
                and _foldable(by_name[sources[0]], norm):
            pairs.append((by_name[sources[0]], norm))
    return pairs


def _foldable(producer, norm) -> bool:
    if type(norm) is not keras.layers.BatchNormalization or type(producer) not in _kernel_layers():
        return False
    if getattr(producer, "activation", None) not in (None, keras.activations.linear):
        return False
    if getattr(producer, "data_format", "channels_last") != "channels_last":
        return False
    axis = norm.axis if isinstance(norm.axis, (list, tuple)) else [norm.axis]
    rank = len(producer.output_shape)
    return [a % rank for a in axis] == [rank - 1]


def _fold(producer, norm) -> bool:
    """Fold `norm` into `producer`; False (nothing changed) when its shift has nowhere to go."""
    variance = norm.moving_variance.numpy().astype(np.float64)
    mean = norm.moving_mean.numpy().astype(np.float64)
    gamma = norm.gamma.numpy().astype(np.float64) if norm.scale else np.ones_like(mean)
    beta = norm.beta.numpy().astype(np.float64) if norm.center else np.zeros_like(mean)
    factor = gamma / np.sqrt(variance + np.float32(norm.epsilon))
    shift = beta - factor * mean
    if not norm.center and np.any(shift != 0):
        return False
    if isinstance(producer, keras.layers.DepthwiseConv2D):
        kernel = producer.depthwise_kernel
        scale = factor.reshape(kernel.shape[-2], kernel.shape[-1])
    else:
        kernel, scale = producer.kernel, factor
    kernel.assign((kernel.numpy() * scale).astype(kernel.dtype.as_numpy_dtype))
    if producer.use_bias:
        producer.bias.assign((producer.bias.numpy() * factor).astype(np.float32))
    if norm.scale:
        norm.gamma.assign(np.ones_like(gamma, np.float32))
    if norm.center:
        norm.beta.assign(shift.astype(np.float32))
    norm.moving_mean.assign(np.zeros_like(mean, np.float32))
    norm.moving_variance.assign(np.full_like(variance, _unit_variance(norm.epsilon), np.float32))
    norm.trainable = False  # inference mode while fine-tuning: batch statistics would scale the channels again
    return True


def _unit_variance(epsilon: float) -> np.float32:
    """The float32 variance v with v + epsilon == 1 exactly in float32, so that 1 / sqrt(v + epsilon) is 1."""
    one, eps = np.float32(1), np.float32(epsilon)
    value = one - eps
    for _ in range(4):
        total = np.float32(value + eps)
        if total == one:
            return value
        value = np.nextafter(value, np.float32(0) if total > one else np.float32(2), dtype=np.float32)
    return value


def folded_copy(model, calibration=None, *, tolerance: float = 1e-4) -> tuple[object, list[str]]:
    """A copy of `model` with its BatchNormalizations folded, and their names; `model` itself
    (nothing folded) if the copy's outputs on a few calibration samples differ by more than
    `tolerance`, relative to the outputs' magnitude."""
    from .. import console

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    folded = fold_batch_norms(copy)
    if not folded or calibration is None:
        return (copy, folded) if folded else (model, [])
    samples = {name: array[:8] for name, array in calibration.inputs.items()}
    before, after = _outputs(model, samples), _outputs(copy, samples)
    scale = max(1.0, max(float(np.max(np.abs(a))) for a in before))
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(before, after)) / scale
    if worst > tolerance:
        console.warn(f"BatchNormalization not folded before clustering: the folded model's outputs differ by "
                     f"{worst:.2g} (relative; at most {tolerance:g} expected)")
        return model, []
    console.note(f"{len(folded)} BatchNormalization folded into the kernels before them, so that the shared "
                 "values reach the file")
    return copy, folded


def _outputs(model, samples: dict[str, np.ndarray]) -> list[np.ndarray]:
    feed = next(iter(samples.values())) if len(model.inputs) == 1 else samples
    value = model(feed, training=False)
    values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
    return [np.asarray(v, np.float64) for v in values]

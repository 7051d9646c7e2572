"""Which QuantizeConfig each layer gets, so that quantization-aware training never refuses a layer.

tfmot's default 8-bit scheme raises `RuntimeError: Layer ... is not supported` for every layer
its registry does not know. tfquant resolves each layer through its own registry first:

- layers with a kernel tfmot lacks (Conv1D, LocallyConnected...) get per-channel weight fake-quant
  and an observed output;
- value-only layers (BatchNormalization anywhere, Rescaling, Normalization, Multiply, slicing and
  other TF-op layers, reshapes) get an observed output: a moving-average range learned while
  training, which the converter uses to make them integer ops;
- layers tfmot supports keep tfmot's own config;
- anything else (custom layers) is left unquantized inside while training, with its output
  observed, so that the converted file is still integer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from .._keras import keras

L = keras.layers


def tfmot_module():
    import tensorflow_model_optimization as tfmot

    return tfmot


def _quantizers():
    return tfmot_module().quantization.keras.quantizers


class ObservedOutputConfig:
    """Weights untouched; the output's range is learned by a moving average while training."""

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [_quantizers().MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

    def get_config(self):
        return {}


class KernelAndOutputConfig(ObservedOutputConfig):
    """Symmetric int8 fake-quant on the kernel, output observed.

    Per tensor: tfmot's per-axis quantizer only handles 2-D and 4-D kernels (Conv1D's is 3-D).
    """

    def get_weights_and_quantizers(self, layer):
        quantizer = _quantizers().LastValueQuantizer(num_bits=8, per_axis=False, symmetric=True, narrow_range=True)
        return [(layer.kernel, quantizer)]

    def set_quantize_weights(self, layer, quantize_weights):
        layer.kernel = quantize_weights[0]


class TfmotWeightsObservedOutputConfig(ObservedOutputConfig):
    """tfmot's own weight fake-quant for the layer; its activation computed float inside, output observed.

    For a layer tfmot knows whose `activation=` tfmot's QuantizeAwareActivation refuses (elu, selu,
    softplus, relu6, hard_sigmoid, leaky_relu...). Holds no state: tfmot's config is looked up from
    the layer each time, so the config serializes as it is.
    """

    def get_weights_and_quantizers(self, layer):
        return _default_registry().get_quantize_config(layer).get_weights_and_quantizers(layer)

    def set_quantize_weights(self, layer, quantize_weights):
        _default_registry().get_quantize_config(layer).set_quantize_weights(layer, quantize_weights)


def _default_registry():
    """tfmot's default 8-bit registry: which layers tfmot wraps itself, and how."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry)

    return default_8bit_quantize_registry.Default8BitQuantizeRegistry()


def as_quantize_config(cls):
    """Make a plain class a tfmot QuantizeConfig subclass (tfmot imported lazily)."""
    return type(cls.__name__, (cls, tfmot_module().quantization.keras.QuantizeConfig), {})


@dataclass(frozen=True)
class _Rule:
    layer_types: tuple[type, ...]
    config: Callable[[], type]
    treatment: str


_RULES: list[_Rule] = []


def register(*layer_types: type, config: type, treatment: str) -> None:
    """Give `layer_types` a QuantizeConfig class and a treatment name for the report."""
    _RULES.append(_Rule(layer_types, lambda: config, treatment))


register(L.Conv1D, L.LocallyConnected1D, L.LocallyConnected2D, config=KernelAndOutputConfig,
         treatment="tfquant: int8 kernel, observed output")
register(L.BatchNormalization, L.LayerNormalization, L.Rescaling, L.Normalization, L.Multiply,
         L.Reshape, L.Lambda, config=ObservedOutputConfig, treatment="tfquant: observed output")

TFMOT_DEFAULT = "tfmot: default 8-bit"
UNKNOWN = "tfquant: unknown layer, unquantized inside, observed output"
NOT_WRAPPED = "input"
TF_OP = "tfquant: TF op layer, not wrapped (its input's scale passes through)"
INTEGER_INPUT = "tfquant: reads integer ids, not wrapped (its output is observed by the next layer)"


def reads_integers(layer) -> bool:
    """True if any input of `layer` is an integer tensor (token ids, masks, position ids)."""
    try:
        inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
    except (AttributeError, ValueError):
        return False
    return any(getattr(t, "dtype", None) is not None and t.dtype.is_integer or getattr(t, "dtype", None) == "bool"
               for t in inputs)


def _is_op_layer(layer) -> bool:
    # TFOpLambda / SlicingOpLambda: x[:, :4], tf.nn.relu6(x), ... in a functional model.
    return type(layer).__name__ in ("TFOpLambda", "SlicingOpLambda")


def resolve(layer) -> tuple[Optional[type], str]:
    """The QuantizeConfig class for `layer` (None: tfmot's own) and the treatment to report."""
    if isinstance(layer, L.InputLayer):
        return None, NOT_WRAPPED
    for rule in _RULES:
        if isinstance(layer, rule.layer_types):
            return rule.config(), rule.treatment
    if _is_op_layer(layer) or type(layer).__name__ == "Keras3Op":
        # Wrapping a TF-op layer loses its output shape; slicing and reshaping keep their input's
        # scale, which the converter carries across them.
        return None, TF_OP
    if isinstance(layer, MULTI_INPUT_LAYERS):
        return None, MULTI_INPUT
    if _several_outputs(layer):
        return None, MULTI_OUTPUT
    if _default_registry().supports(layer):
        if isinstance(layer, L.Activation) and not _tfmot_activation(layer):
            return ObservedOutputConfig, ACTIVATION
        if not isinstance(layer, L.Activation) and not _activation_tfmot_wraps(layer):
            return TfmotWeightsObservedOutputConfig, KERNEL_ACTIVATION
        return None, TFMOT_DEFAULT
    return ObservedOutputConfig, UNKNOWN


# Layers called with several tensors (query, value, key, masks): tfmot's wrapper passes one.
MULTI_INPUT_LAYERS = (L.MultiHeadAttention, L.Attention, L.AdditiveAttention)
MULTI_INPUT = "tfquant: several tensor inputs, not wrapped (calibrated after training)"
ACTIVATION = "tfquant: activation tfmot does not know, observed output"
# A layer that returns several tensors (an RNN with return_state): tfmot's wrapper handles one.
MULTI_OUTPUT = "tfquant: several output tensors, not wrapped (calibrated after training)"


def _several_outputs(layer) -> bool:
    """Whether any call of `layer` in its model returned more than one tensor."""
    for node in getattr(layer, "_inbound_nodes", None) or []:
        outputs = getattr(node, "outputs", None)
        if isinstance(outputs, (list, tuple)) and len(outputs) > 1:
            return True
    return False


# The functions tfmot's config for an Activation layer takes; it raises 'Activation ... not supported'
# for any other.
ACTIVATION_LAYER_FUNCTIONS = ("relu", "relu6", "swish", "gelu", "linear", "softmax", "sigmoid", "tanh")
# The functions tfmot's QuantizeAwareActivation takes as a layer's `activation=`; it raises 'Only some
# Keras activations ... are supported' for any other (elu, selu, softplus, relu6, hard_sigmoid...).
WRAPPED_ACTIVATIONS = ("linear", "relu", "swish", "gelu", "softmax", "sigmoid", "tanh")


def _tfmot_activation(layer) -> bool:
    """Whether tfmot's default activation config handles this Activation layer's function."""
    return getattr(layer.activation, "__name__", "") in ACTIVATION_LAYER_FUNCTIONS


KERNEL_ACTIVATION = "tfquant: tfmot's weights; an activation tfmot does not wrap, computed inside, observed output"


def _activation_tfmot_wraps(layer) -> bool:
    activation = getattr(layer, "activation", None)
    return activation is None or getattr(activation, "__name__", None) in WRAPPED_ACTIVATIONS

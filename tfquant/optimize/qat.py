"""Quantization-aware training that never refuses a layer.

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
from ..types import LayerTreatment

L = keras.layers


def _tfmot():
    import tensorflow_model_optimization as tfmot

    return tfmot


def _quantizers():
    return _tfmot().quantization.keras.quantizers


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


def _as_quantize_config(cls):
    """Make a plain class a tfmot QuantizeConfig subclass (tfmot imported lazily)."""
    return type(cls.__name__, (cls, _tfmot().quantization.keras.QuantizeConfig), {})


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
    if _is_op_layer(layer):
        # Wrapping a TF-op layer loses its output shape; slicing and reshaping keep their input's
        # scale, which the converter carries across them.
        return None, TF_OP
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import default_8bit_quantize_registry

    if default_8bit_quantize_registry.Default8BitQuantizeRegistry().supports(layer):
        return None, TFMOT_DEFAULT
    return ObservedOutputConfig, UNKNOWN


def quantize_aware(model, *, scheme=None) -> tuple[object, list[LayerTreatment]]:
    """Wrap `model` for quantization-aware training; return it and what each layer got.

    Example:
        >>> qat_model, layers = quantize_aware(model)       # doctest: +SKIP
        >>> qat_model.fit(x, y, epochs=2)

    Args:
        model: a built tf_keras Sequential or functional model.
        scheme: a tfmot QuantizeScheme. Defaults to tfmot's Default8BitQuantizeScheme; pass
            `Default8BitPrunePreserveQuantizeScheme()` for sparsity-preserving QAT.
    """
    tfmot = _tfmot()
    qk = tfmot.quantization.keras
    treatments: list[LayerTreatment] = []
    classes: dict[str, type] = {}

    def annotate(layer):
        config_class, treatment = resolve(layer)
        treatments.append(LayerTreatment(layer.name, type(layer).__name__, treatment))
        if treatment in (NOT_WRAPPED, TF_OP):
            return layer.__class__.from_config(layer.get_config())
        clone = layer.__class__.from_config(layer.get_config())
        if config_class is None:
            return qk.quantize_annotate_layer(clone)
        config = classes.setdefault(config_class.__name__, _as_quantize_config(config_class))
        return qk.quantize_annotate_layer(clone, quantize_config=config())

    annotated = keras.models.clone_model(model, clone_function=annotate)
    annotated.set_weights(model.get_weights())
    # quantize_apply clones the model again: user-defined layer classes must be in scope by name.
    custom = {type(layer).__name__: type(layer) for layer in model.layers
              if not type(layer).__module__.startswith(("tf_keras.", "keras."))}
    with qk.quantize_scope({**custom, **classes}):
        wrapped = qk.quantize_apply(annotated, scheme) if scheme is not None else qk.quantize_apply(annotated)
    return wrapped, treatments


def keras2_model(loaded, stage: str):
    """The tf_keras model behind `loaded`, or a clear error for what tfmot cannot wrap."""
    from .. import _keras
    from ..errors import ModelLoadError

    if loaded.flavor == "keras3":
        try:
            return _keras.to_keras2(loaded.keras_model)
        except (ValueError, TypeError, KeyError) as exc:
            raise ModelLoadError(f"{loaded.source}: {_keras.keras3_unsupported(stage)}; rebuilding it as "
                                 f"tf_keras failed: {exc}") from None
    if loaded.keras_model is None:  # a SavedModel folder: tf_keras can revive its own
        from ..models import revive_keras2

        try:
            return revive_keras2(loaded)
        except ModelLoadError as exc:
            raise ModelLoadError(f"{exc}; {stage} needs a SavedModel written by tf_keras") from None
    return loaded.keras_model


def qat(
    model,
    train_data,
    *,
    epochs: int,
    calibration_data=None,
    eval_data=None,
    batch_size: int = 32,
    learning_rate: float = 1e-4,
    io: Optional[str] = None,
    calib_samples: int = 200,
    max_drop: Optional[float] = None,
    strict: bool = False,
    callbacks: Optional[list] = None,
    num_threads: Optional[int] = None,
    bench_runs: int = 30,
    safe_mode: bool = True,
    verbose: int = 0,
    progress: Optional[bool] = None,
):
    """Fine-tune `model` with fake quantization, convert it to full int8 and verify it on the interpreter.

    Example:
        >>> result = tfquant.qat("digits.keras", "data/digits_train.npz", epochs=2,
        ...                      eval_data="data/digits_test.npz")        # doctest: +SKIP
        >>> result.report.training.keras_accuracy, result.report.quantized.accuracy

    Args:
        model: a tf_keras model or a path (`.keras`, `.h5`, tf_keras SavedModel).
        train_data: labelled training data.
        epochs: fine-tuning epochs.
        calibration_data: representative inputs for integer IO. Defaults to the training data.
        eval_data: labelled data for the report's float, QAT-in-Keras and int8 accuracies.
        batch_size: Defaults to `32`.
        learning_rate: Adam's rate; fine-tuning wants it small. Defaults to `1e-4`.
        io: `int8`, `uint8` or `float32`. Defaults to `int8`.
        max_drop, strict: gates, as in `tfquant.quantize`.
        callbacks: extra Keras callbacks for `fit` (e.g. `tfquant.callbacks.Int8Validation`).
    """
    import time

    from ..convert import convert_quantization_aware
    from ..export import export
    from ..types import Budget, Mode, Recipe, Training
    from ..verify import verify
    from .training import fit, keras_accuracy, outputs_probabilities, start

    recipe = Recipe(mode=Mode.INT8, io=io, calib_samples=calib_samples)
    begun = start(model, train_data, stage="tfquant qat", epochs=epochs, calibration_data=calibration_data,
                  eval_data=eval_data, recipe=recipe, max_drop=max_drop, safe_mode=safe_mode,
                  learning_rate=learning_rate)
    prepared = begun.prepared
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    qat_model, layers = quantize_aware(begun.keras_model)
    fit(qat_model, begun.train, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
        callbacks=callbacks, verbose=verbose, probabilities=outputs_probabilities(begun.keras_model))
    seconds["train"] = time.perf_counter() - started
    keras_acc = None if prepared.evaluation is None else keras_accuracy(qat_model, prepared.evaluation)

    started = time.perf_counter()
    trained = export(prepared.loaded.trained(qat_model, quantization_aware=True), shapes=_shapes(prepared))
    tflite = convert_quantization_aware(trained, recipe, prepared.calibration, source=prepared.source)
    seconds["convert"] = time.perf_counter() - started
    training = Training(kind="qat", epochs=epochs, keras_accuracy=keras_acc, layers=layers)
    return verify(prepared, recipe, tflite, seconds=seconds, budget=Budget(max_drop=max_drop), strict=strict,
                  num_threads=num_threads, bench_runs=bench_runs, progress=progress, extra={"training": training})


def _shapes(prepared) -> dict[str, tuple]:
    """The input shapes the float reference was exported with, so the trained model is exported alike."""
    return {spec.name: tuple(spec.shape[1:]) for spec in prepared.exported.inputs
            if all(d is not None for d in spec.shape[1:])}

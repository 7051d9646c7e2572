"""Magnitude pruning with tfmot schedules, then full int8: PTQ or sparsity-preserving QAT.

Pruning makes weights zero, but a .tflite file stores zeros like any other value: the file
shrinks only once it is compressed. So the report gives raw and gzip bytes of the float, int8
and pruned-int8 files, and the sparsity of every weight tensor as read from the .tflite file.
"""

from __future__ import annotations

import math
import time
from typing import Optional

import numpy as np

from .._keras import keras
from ..types import FileSize, Training

WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")


def _sparsity():
    import tensorflow_model_optimization as tfmot

    return tfmot.sparsity.keras


def schedule_for(kind: str, sparsity: float, end_step: int):
    """A tfmot pruning schedule reaching `sparsity` at `end_step` (pruning every ~1/20 of the run)."""
    sk = _sparsity()
    frequency = max(1, end_step // 20)
    if kind == "polynomial":
        return sk.PolynomialDecay(initial_sparsity=0.0, final_sparsity=sparsity, begin_step=0,
                                  end_step=end_step, frequency=frequency)
    return sk.ConstantSparsity(target_sparsity=sparsity, begin_step=0, frequency=frequency)


def prunable(layer) -> bool:
    """Layers with a kernel that tfmot can prune (Conv, Dense, ...)."""
    from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry

    return prune_registry.PruneRegistry.supports(layer) and bool(layer.trainable_weights)


def wrap_for_pruning(model, *, sparsity: float, schedule: str, end_step: int, block: Optional[str] = None):
    """Clone `model` with every prunable layer wrapped in tfmot's `prune_low_magnitude`."""
    sk = _sparsity()
    options = {"pruning_schedule": schedule_for(schedule, sparsity, end_step)}
    if block is not None:
        options["sparsity_m_by_n"] = tuple(int(v) for v in block.split(":"))

    # tfmot's own pattern: wrap the existing layer objects (weights and all) inside clone_model,
    # here of a private copy so that the caller's model is never trained in place.
    base = keras.models.clone_model(model)
    base.set_weights(model.get_weights())

    def wrap(layer):
        return sk.prune_low_magnitude(layer, **options) if prunable(layer) else layer

    return keras.models.clone_model(base, clone_function=wrap)


def tflite_sparsity(tflite: bytes) -> dict[str, float]:
    """Fraction of zeros in each constant weight tensor of CONV/FC ops, read from the file itself."""
    from ai_edge_litert.tools import flatbuffer_utils

    from ..inspect import inspect

    info = inspect(tflite)
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    tensors = model.subgraphs[0].tensors
    result = {}
    for op in info.ops:
        if op.name not in WEIGHT_OPS or op.subgraph != 0 or len(op.inputs) < 2:
            continue
        tensor_info = info.tensors[op.inputs[1]]
        if not tensor_info.constant:
            continue
        tensor = tensors[op.inputs[1]]
        dtype = {"int8": np.int8, "float32": np.float32, "float16": np.float16}.get(tensor_info.dtype)
        if dtype is None:
            continue
        raw = model.buffers[tensor.buffer].data
        values = np.frombuffer(bytes(bytearray(raw)), dtype=dtype)
        zero = 0
        if tensor_info.quantization is not None and tensor_info.quantization.zero_point:
            zero = tensor_info.quantization.zero_point[0]  # symmetric int8 weights: 0
        result[tensor_info.name.split(";")[0]] = round(float(np.mean(values == zero)), 4) if values.size else 0.0
    return result


def prune(
    model,
    train_data,
    *,
    calibration_data=None,
    eval_data=None,
    spec=None,
    callbacks: Optional[list] = None,
    safe_mode: bool = True,
    verbose: int = 0,
    progress: Optional[bool] = None,
    **options,
):
    """Prune `model` to `sparsity` while fine-tuning, then convert to full int8 and verify on the interpreter.

    Example:
        >>> result = tfquant.prune("digits.keras", "data/digits_train.npz", sparsity=0.8, epochs=4,
        ...                        eval_data="data/digits_test.npz")          # doctest: +SKIP
        >>> result.report.training.files["pruned_int8"].gzip_bytes

    Args:
        model: a tf_keras or Keras 3 model or a path.
        train_data: labelled training data.
        calibration_data, eval_data, callbacks, verbose: as in `tfquant.qat`.
        spec: every option (`tfquant.spec.PruneSpec`); keyword `options` build or override it:
            `sparsity` (required: the final fraction of zero weights in every pruned layer, in
            (0, 1)), `epochs` (required: the schedule ends at 3/4 of the steps, the rest lets the
            net recover), `schedule` (`"polynomial"` 0 -> sparsity, or `"constant"`), `block`
            (`"2:4"` for structured 2-of-4 sparsity), `then` (`"ptq"`, or `"qat"`:
            sparsity-preserving QAT, tfmot's prune-preserve scheme), `qat_epochs` (default: half
            the epochs), `log_dir` (tfmot's PruningSummaries for TensorBoard), `learning_rate`
            (1e-3, tfmot's usual), and the options of `tfquant.qat`.
    """
    from ..convert import convert, convert_quantization_aware
    from ..export import export
    from ..spec import PruneSpec
    from ..verify import gzip_size, verify
    from .qat import quantize_aware
    from .training import fit, keras_accuracy, outputs_probabilities, start

    spec = PruneSpec.from_options(spec, **options)
    recipe, epochs, batch_size, learning_rate = spec.recipe, spec.epochs, spec.batch_size, spec.learning_rate
    begun = start(model, train_data, stage="tfquant prune", calibration_data=calibration_data,
                  eval_data=eval_data, recipe=recipe, max_drop=spec.max_drop, safe_mode=safe_mode)
    prepared = begun.prepared
    keras_model, float_tflite = begun.keras_model, prepared.exported.tflite
    probabilities = outputs_probabilities(keras_model)
    started = time.perf_counter()
    unpruned_int8 = convert(prepared.exported, recipe, calibration=prepared.calibration, source=prepared.source)
    seconds = {"unpruned_int8": time.perf_counter() - started}

    started = time.perf_counter()
    steps = math.ceil(len(begun.train) / batch_size) * epochs
    pruning = wrap_for_pruning(keras_model, sparsity=spec.sparsity, schedule=spec.schedule,
                               end_step=max(1, int(steps * 0.75)), block=spec.block)
    sk = _sparsity()
    steps_callbacks = [sk.UpdatePruningStep()] + ([sk.PruningSummaries(log_dir=spec.log_dir)] if spec.log_dir else [])
    fit(pruning, begun.train, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
        callbacks=steps_callbacks + list(callbacks or []), verbose=verbose, probabilities=probabilities)
    stripped = sk.strip_pruning(pruning)
    seconds["prune"] = time.perf_counter() - started

    started = time.perf_counter()
    kind, layers, total_epochs = "prune+ptq", [], epochs
    if spec.then == "qat":
        import tensorflow_model_optimization as tfmot

        scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
        aware, layers = quantize_aware(stripped, scheme=scheme)
        extra_epochs = spec.qat_epochs or max(1, epochs // 2)
        fit(aware, begun.train, epochs=extra_epochs, batch_size=batch_size, learning_rate=learning_rate,
            verbose=verbose, probabilities=probabilities)
        kind, total_epochs, final_model = "prune+qat", epochs + extra_epochs, aware
        trained = export(prepared.loaded.trained(aware, quantization_aware=True), shapes=prepared.exported.sample_shapes())
        tflite = convert_quantization_aware(trained, recipe, prepared.calibration, source=prepared.source)
    else:
        final_model = stripped
        trained = export(prepared.loaded.trained(stripped), shapes=prepared.exported.sample_shapes())
        tflite = convert(trained, recipe, calibration=prepared.calibration, source=prepared.source)
    seconds["convert"] = time.perf_counter() - started

    training = Training(
        kind=kind, epochs=total_epochs,
        keras_accuracy=None if prepared.evaluation is None else keras_accuracy(final_model, prepared.evaluation),
        layers=layers, target_sparsity=spec.sparsity, sparsity=tflite_sparsity(tflite),
        files={name: FileSize(len(data), gzip_size(data)) for name, data in
               (("float", float_tflite), ("int8", unpruned_int8), ("pruned_int8", tflite))},
    )
    return verify(prepared, recipe, tflite, seconds=seconds, budget=spec.budget, strict=spec.strict,
                  num_threads=spec.num_threads, bench_runs=spec.bench_runs, progress=progress,
                  extra={"training": training}, spec=spec)

"""Magnitude pruning with tfmot schedules, then full int8: PTQ or sparsity-preserving QAT.

Pruning makes weights zero, but a .tflite file stores zeros like any other value: the file
shrinks only once it is compressed, or when its zeros are written in TFLite's sparse format
(`sparse=True`). So the report gives raw and gzip bytes of the float, int8 and pruned-int8 files
(and of the sparse file, with its latency next to the dense one's), and the sparsity of every
weight tensor as read from the .tflite file (`tfquant.optimize.weights`).
"""

from __future__ import annotations

import math
import time
from typing import Optional

from .._keras import keras
from ..types import FileSize, SparseFile, Training



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


def prune_stage(keras_model, train, *, sparsity: float, epochs: int, batch_size: int, learning_rate: float,
                schedule: str = "polynomial", block: Optional[str] = None, log_dir: Optional[str] = None,
                callbacks: Optional[list] = None, verbose: int = 0, probabilities: Optional[dict[str, bool]] = None):
    """Fine-tune `keras_model` while pruning it to `sparsity` (the schedule ends at 3/4 of the steps, the
    rest lets the network recover); returns the stripped model, its zeros in its kernels."""
    from .training import fit

    steps = math.ceil(len(train) / batch_size) * epochs
    pruning = wrap_for_pruning(keras_model, sparsity=sparsity, schedule=schedule, end_step=max(1, int(steps * 0.75)),
                               block=block)
    sk = _sparsity()
    steps_callbacks = [sk.UpdatePruningStep()] + ([sk.PruningSummaries(log_dir=log_dir)] if log_dir else [])
    fit(pruning, train, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
        callbacks=steps_callbacks + list(callbacks or []), verbose=verbose, probabilities=probabilities)
    return sk.strip_pruning(pruning)


def sparse_file(tflite: bytes, *, num_threads: Optional[int] = None) -> tuple[bytes, SparseFile]:
    """The file with its zeros stored sparse, and what that did: bytes, tensors, latency against the dense file.

    Where the sparse encoding (values plus their indices) is not smaller than the dense file, at
    moderate sparsity, the dense file is returned and the record says so."""
    from .. import console, timing
    from ..sizes import gzip_size
    from .weights import write_sparse

    with console.step("writing the zero weights in TFLite's sparse format"):
        sparse, stored, dense = write_sparse(tflite)
    dense_bench, sparse_bench = timing.benchmark(tflite, sparse, runs=30, warmup=3, num_threads=num_threads,
                                                  max_seconds=3.0)
    written = len(sparse) < len(tflite)
    record = SparseFile(tflite_bytes=len(sparse), gzip_bytes=gzip_size(sparse), dense_bytes=len(tflite),
                        sparse_tensors=stored, dense_tensors=dense, latency_p50_ms=sparse_bench.inference_ms.p50,
                        dense_latency_p50_ms=dense_bench.inference_ms.p50, written=written,
                        runs_on="XNNPACK" if sparse_bench.delegate == "XNNPACK" else
                        "TFLite's builtin kernels (XNNPACK does not take the densified weights)")
    return (sparse if written else tflite), record


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
    from ..sizes import gzip_size
    from ..verify import verify
    from .qat import quantize_aware
    from .training import fit, keras_accuracy, outputs_probabilities, start
    from .weights import sparsity as weight_sparsity

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
    stripped = prune_stage(keras_model, begun.train, sparsity=spec.sparsity, epochs=epochs, batch_size=batch_size,
                           learning_rate=learning_rate, schedule=spec.schedule, block=spec.block, log_dir=spec.log_dir,
                           callbacks=callbacks, verbose=verbose, probabilities=probabilities)
    seconds["prune"] = time.perf_counter() - started

    started = time.perf_counter()
    kind, layers, total_epochs = "prune+ptq", [], epochs
    if spec.then == "qat":
        import tensorflow_model_optimization as tfmot

        scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
        aware, layers = quantize_aware(stripped, scheme=scheme, samples=prepared.calibration, source=prepared.source)
        extra_epochs = spec.qat_epochs or max(1, epochs // 2)
        fit(aware, begun.train, epochs=extra_epochs, batch_size=batch_size, learning_rate=learning_rate,
            verbose=verbose, probabilities=probabilities)
        kind, total_epochs, final_model = "prune+qat", epochs + extra_epochs, aware
        trained = export(prepared.loaded.trained(aware, quantization_aware=True), shapes=prepared.exported.sample_shapes(),
                         keep_weights=True)
        tflite = convert_quantization_aware(trained, recipe, prepared.calibration, source=prepared.source)
    else:
        final_model = stripped
        trained = export(prepared.loaded.trained(stripped), shapes=prepared.exported.sample_shapes(), keep_weights=True)
        tflite = convert(trained, recipe, calibration=prepared.calibration, source=prepared.source)
    seconds["convert"] = time.perf_counter() - started
    files = [("float", float_tflite), ("int8", unpruned_int8), ("pruned_int8", tflite)]
    sparse = None
    if spec.sparse:
        tflite, sparse = sparse_file(tflite, num_threads=spec.num_threads)
        files.append(("pruned_int8_sparse", tflite))

    training = Training(
        kind=kind, epochs=total_epochs,
        keras_accuracy=None if prepared.evaluation is None else keras_accuracy(final_model, prepared.evaluation),
        layers=layers, target_sparsity=spec.sparsity, sparsity=weight_sparsity(files[2][1]),
        files={name: FileSize(len(data), gzip_size(data)) for name, data in files}, sparse=sparse,
    )
    return verify(prepared, recipe, tflite, seconds=seconds, budget=spec.budget, strict=spec.strict,
                  num_threads=spec.num_threads, bench_runs=spec.bench_runs, progress=progress,
                  extra={"training": training}, spec=spec, retrained=True)

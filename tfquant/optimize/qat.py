"""Quantization-aware training that never refuses a layer.

Each layer is wrapped as `tfquant.optimize.registry` resolves it (tfmot's own config where tfmot
has one, tfquant's QuantizeConfigs elsewhere, left as it is where nothing is to be fake-quantized);
every activation's fake-quant range starts where the float model puts it on the calibration
samples, every BatchNormalization fine-tunes in inference mode, and the report puts the QAT file
beside the PTQ file.
"""

from __future__ import annotations

import logging
import re
from typing import Optional

from .._keras import keras
from ..errors import called, one_line
from ..types import LayerTreatment
from .registry import (INTEGER_INPUT, MULTI_INPUT, MULTI_OUTPUT, NOT_WRAPPED, TF_OP, as_quantize_config, reads_integers,
                       resolve, tfmot_module)

log = logging.getLogger("tfquant")


def quantize_aware(model, *, scheme=None, samples=None, source: str = "<model>") -> tuple[object, list[LayerTreatment]]:
    """Wrap `model` for quantization-aware training; return it and what each layer got.

    Example:
        >>> qat_model, layers = quantize_aware(model, samples=calibration)       # doctest: +SKIP
        >>> qat_model.fit(x, y, epochs=2)

    Args:
        model: a built tf_keras Sequential or functional model.
        scheme: a tfmot QuantizeScheme. Defaults to tfmot's Default8BitQuantizeScheme; pass
            `Default8BitPrunePreserveQuantizeScheme()` for sparsity-preserving QAT.
        samples: calibration data (a `tfquant.data.Dataset`): every activation's fake-quant range
            then starts where `model` puts that activation on these samples (`start_ranges`).
            Defaults to tfmot's start, [-6, 6].
        source: the model's file, for the error when tensorflow-model-optimization cannot wrap it.

    Raises:
        ModelLoadError: tensorflow-model-optimization refused the wrapped model (one line: the layer
            and what it said).
    """
    tfmot = tfmot_module()
    qk = tfmot.quantization.keras
    treatments: list[LayerTreatment] = []
    classes: dict[str, type] = {}

    def annotate(layer):
        config_class, treatment = resolve(layer)
        if treatment not in (NOT_WRAPPED, TF_OP, MULTI_INPUT, MULTI_OUTPUT) and reads_integers(layer):
            treatment = INTEGER_INPUT  # ids (tokens, masks, positions): nothing to fake-quantize
        treatments.append(LayerTreatment(layer.name, type(layer).__name__, treatment))
        if treatment in (NOT_WRAPPED, TF_OP, INTEGER_INPUT, MULTI_INPUT, MULTI_OUTPUT):
            return layer.__class__.from_config(layer.get_config())
        clone = layer.__class__.from_config(layer.get_config())
        if config_class is None:
            return qk.quantize_annotate_layer(clone)
        config = classes.setdefault(config_class.__name__, as_quantize_config(config_class))
        return qk.quantize_annotate_layer(clone, quantize_config=config())

    annotated = keras.models.clone_model(model, clone_function=annotate)
    annotated.set_weights(model.get_weights())
    # quantize_apply clones the model again: user-defined layer classes must be in scope by name.
    # So must the layer classes that live outside `tf_keras.layers` (user-defined, or keras.applications'
    # own, such as ConvNeXt's LayerScale).
    custom = {type(layer).__name__: type(layer) for layer in model.layers
              if getattr(keras.layers, type(layer).__name__, None) is not type(layer)}
    with qk.quantize_scope({**custom, **classes}):
        try:
            wrapped = qk.quantize_apply(annotated, scheme) if scheme is not None else qk.quantize_apply(annotated)
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
            from ..errors import ModelLoadError, problem

            said = one_line(exc)
            layer = re.search(r'calling layer "([^"]+)"', said)
            last = [line.strip() for line in str(exc).strip().splitlines() if line.strip()][-1:]
            raise ModelLoadError(problem(
                source, "layers tensorflow-model-optimization can wrap for quantization-aware training",
                (f"layer {layer.group(1)!r}: " if layer else "") + (last[0] if last else said)[:200]
                + " (tfquant convert quantizes it without training)")) from None
    if samples is not None:
        start_ranges(wrapped, model, samples)
    freeze_batch_norm(wrapped)
    return wrapped, treatments


def freeze_batch_norm(model) -> None:
    """Fine-tune with every BatchNormalization in inference mode: its moving statistics kept as the
    float model has them (tfmot's wrapper still lets gamma and beta fine-tune).

    In training mode a BatchNormalization normalizes each batch by the batch's own statistics and
    pulls its moving statistics toward them. With QAT's short fine-tuning on a few hundred samples,
    those moving statistics end where the last few dozen batches left them, not where the float
    model (and PTQ, which calibrated on them) had them: one epoch of 600 samples took a ResNet50's
    QAT file 13 points below PTQ. A non-trainable BatchNormalization runs in inference mode
    (tf_keras), and the convolutions around it adapt to fixed statistics instead.
    """
    for layer in model.layers:
        if isinstance(getattr(layer, "layer", layer), keras.layers.BatchNormalization):
            layer.trainable = False  # a tfmot wrapper passes it on to its layer


# The fake-quant variables of an activation: a wrapped layer's output (before its activation, for a
# softmax or sigmoid), and the model's quantized inputs.
_ACTIVATION_RANGES = ("post_activation", "pre_activation", "output", "quantize_layer")


def start_ranges(qat_model, float_model, samples) -> int:
    """Start every activation fake-quant range where the float model puts that activation on `samples`.

    tfmot starts each range at [-6, 6] and moves it by an exponential moving average with decay
    0.999 and no bias correction: after the 90 steps of two epochs on 1,400 samples the range is
    still 91 % of [-6, 6], whatever the layer's values, so a short fine-tuning trains against
    scales that have nothing to do with the ones PTQ calibrates. Started from the min/max of the
    float layer's outputs on the calibration samples (zero kept inside), QAT begins where PTQ is and
    the moving average refines it. Returns how many ranges were set.
    """
    import numpy as np

    targets: dict[str, list] = {}  # float layer (or input) name -> its (min, max) variables in the QAT model
    for layer in qat_model.layers:
        found, before = {}, False
        for weight in layer.weights:
            # A second model built in the same process names its variables "quantize_layer_1_min".
            short = re.sub(r"_\d+(?=_min$|_max$)", "", weight.name.split("/")[-1].split(":")[0])
            for stem in _ACTIVATION_RANGES:
                if short in (f"{stem}_min", f"{stem}_max"):
                    found[short[-3:]] = weight
                    before = stem == "pre_activation"
        if set(found) != {"min", "max"}:
            continue
        inner = getattr(layer, "layer", None)
        if inner is not None:
            targets.setdefault(f"pre:{inner.name}" if before else inner.name, []).append((found["min"], found["max"]))
        elif type(layer).__name__ == "QuantizeLayer":
            source = _input_of(qat_model, layer)
            if source is not None:
                targets.setdefault(f"input:{source}", []).append((found["min"], found["max"]))
    names = [n for n in targets if ":" not in n and _single_output(float_model, n)]
    before = [n[4:] for n in targets if n.startswith("pre:") and _single_output(float_model, n[4:])
              and not isinstance(float_model.get_layer(n[4:]).get_input_at(-1), (list, tuple, dict))]
    inputs = list(samples.inputs.values()) if len(samples.inputs) > 1 else next(iter(samples.inputs.values()))
    values: dict[str, np.ndarray] = {}
    # A layer object shared with an earlier model (a stripped pruning or clustering wrapper) has a node
    # in each: this model's is the last one.
    tensors = [float_model.get_layer(n).get_output_at(-1) for n in names] + \
        [float_model.get_layer(n).get_input_at(-1) for n in before]
    if tensors:
        try:
            probe = keras.Model(float_model.inputs, tensors)
        except ValueError as exc:  # a graph the probe cannot cut: tfmot's own start, and the log says so
            log.info("QAT ranges start at tfmot's [-6, 6]: %s", one_line(exc, 160))
            return 0
        outputs = probe.predict(inputs, batch_size=64, verbose=0)
        outputs = outputs if len(tensors) > 1 else [outputs]
        values = dict(zip(names, outputs[:len(names)]))
        for name, layer_input in zip(before, outputs[len(names):]):
            values[f"pre:{name}"] = _before_activation(float_model.get_layer(name), layer_input)
    for position, name in enumerate(float_model.input_names):
        values[f"input:{position}"] = np.asarray(samples.inputs[name] if name in samples.inputs else
                                                 list(samples.inputs.values())[position])
    count = 0
    for name, pairs in targets.items():
        if name not in values or not np.issubdtype(values[name].dtype, np.floating):
            continue
        low, high = min(0.0, float(values[name].min())), max(0.0, float(values[name].max()))
        if high - low <= 0:
            continue
        for min_var, max_var in pairs:
            min_var.assign(np.full(min_var.shape, low, np.float32))
            max_var.assign(np.full(max_var.shape, high, np.float32))
            count += 1
    return count


def _before_activation(layer, layer_input):
    """What `layer` computes on `layer_input` before its activation (a dense layer's logits)."""
    linear = layer.__class__.from_config({**layer.get_config(), "activation": "linear"})
    linear.build(layer_input.shape)
    linear.set_weights(layer.get_weights())
    return linear(layer_input).numpy()


def _input_of(qat_model, layer):
    """Which of the model's inputs (by position) a QuantizeLayer quantizes."""
    try:
        tensor = layer.input
    except (AttributeError, ValueError):
        return None
    for position, model_input in enumerate(qat_model.inputs):
        if model_input is tensor or getattr(model_input, "ref", lambda: None)() == getattr(tensor, "ref", lambda: 0)():
            return position
    return None


def _single_output(model, name: str) -> bool:
    try:
        output = model.get_layer(name).get_output_at(-1)
    except (ValueError, AttributeError, IndexError, RuntimeError):
        return False
    return not isinstance(output, (list, tuple, dict))


def _qat_files(prepared, original, qat_model, recipe, notes: list[str]) -> list[tuple[str, bytes]]:
    """The int8 files of a fine-tuned QAT model: the converter's reading of its fake-quant ranges, and
    its fine-tuned weights calibrated as in PTQ (ranges, bias correction). The second always exists;
    the first where the converter takes the graph and makes it fully integer."""
    from ..convert import convert, convert_quantization_aware
    from ..errors import ConversionError
    from ..export import export
    from ..inspect import inspect

    shapes = prepared.exported.sample_shapes()
    found: list[tuple[str, bytes]] = []
    try:
        trained = export(prepared.loaded.trained(qat_model, quantization_aware=True), shapes=shapes, keep_weights=True)
        data = convert_quantization_aware(trained, recipe, prepared.calibration, source=prepared.source)
        if inspect(data).fully_integer and _runs_on_the_default_delegate(data):
            found.append(("the fake-quant ranges", data))
        else:
            notes.append("the converter's file of the fake-quant QAT model was not fully integer or not runnable on "
                         "XNNPACK; its fine-tuned weights were calibrated instead")
    except ConversionError as exc:
        notes.append(f"the converter refused the fake-quant QAT model ({str(exc)[-160:]}); its fine-tuned weights "
                     "were calibrated instead")
    fine_tuned = export(prepared.loaded.trained(stripped_weights(original, qat_model)), shapes=shapes)
    found.append(("the fine-tuned weights, calibrated",
                  convert(fine_tuned, recipe, calibration=prepared.calibration, source=prepared.source)))
    return found


def _runs_on_the_default_delegate(data: bytes) -> bool:
    from ..harness import Runner
    from ..timing import invoke_once

    runner = Runner(data, num_threads=1)
    try:
        invoke_once(runner)
        return True
    except RuntimeError:
        return False


def stripped_weights(original, qat_model):
    """A copy of `original` carrying the weights QAT fine-tuned (read from inside the wrappers)."""
    copy = keras.models.clone_model(original)
    by_name = {layer.name: layer for layer in qat_model.layers}
    for layer in copy.layers:
        source = by_name.get(layer.name) or by_name.get(f"quant_{layer.name}")
        if source is None or not layer.weights:
            continue
        # A wrapper holds the layer's own variables next to its quantizers' (min, max, step):
        # match each of the layer's weights by its short name and shape.
        pool = [w for w in source.weights if not _quantizer_variable(w.name)]
        values = []
        for weight in layer.weights:
            short = _short(weight.name)
            match = next((w for w in pool if _short(w.name) == short and tuple(w.shape) == tuple(weight.shape)), None)
            if match is None:
                raise ValueError(f"QAT model: no fine-tuned {short} for layer {layer.name!r}")
            pool = [w for w in pool if w is not match]  # by identity: == on variables compares values
            values.append(match.numpy())
        layer.set_weights(values)
    return copy


def _short(name: str) -> str:
    return name.split("/")[-1].split(":")[0]


def _quantizer_variable(name: str) -> bool:
    short = _short(name)
    return short.endswith(("_min", "_max")) or short in ("optimizer_step", "min", "max")


def qat(
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
    """Fine-tune `model` with fake quantization, convert it to full int8 and verify it on the interpreter.

    Example:
        >>> result = tfquant.qat("digits.keras", "data/digits_train.npz", epochs=2,
        ...                      eval_data="data/digits_test.npz")        # doctest: +SKIP
        >>> result.report.training.keras_accuracy, result.report.quantized.accuracy

    Args:
        model: a tf_keras or Keras 3 model or a path (`.keras`, `.h5`, SavedModel).
        train_data: labelled training data.
        calibration_data: representative inputs for integer IO. Defaults to the training data.
        eval_data: labelled data for the report's float, PTQ, QAT-in-Keras and int8 accuracies.
        spec: every option (`tfquant.spec.QATSpec`); keyword `options` build or override it:
            `epochs` (required), `batch_size` (32), `learning_rate` (1e-4: fine-tuning wants it
            small), `io` (int8), `calib_samples` (200), `max_drop`, `strict`, `keep_best` (True: when the
            QAT file scores below plain PTQ on the evaluation data, return the PTQ file; the report
            says so), `num_threads`, `bench_runs`.
        callbacks: extra Keras callbacks for `fit` (e.g. `tfquant.callbacks.Int8Validation`).
        verbose: Keras' fit verbosity. Defaults to `0`.
    """
    import time

    from ..convert import convert
    from ..harness import Runner
    from ..spec import QATSpec
    from ..types import Training
    from ..verify import Reference, verify
    from .training import fit, keras_accuracy, outputs_probabilities, start

    spec = QATSpec.from_options(spec, **options)
    recipe, max_drop, num_threads, epochs = spec.recipe, spec.max_drop, spec.num_threads, spec.epochs
    begun = start(model, train_data, stage="tfquant qat", calibration_data=calibration_data,
                  eval_data=eval_data, recipe=recipe, max_drop=max_drop, safe_mode=safe_mode)
    prepared = begun.prepared
    seconds: dict[str, float] = {}

    # The PTQ file first: the baseline QAT must beat, and what keep_best falls back to.
    started = time.perf_counter()
    ptq_tflite = convert(prepared.exported, recipe, calibration=prepared.calibration, source=prepared.source)
    reference = ptq_score = None
    ptq_misses: list[str] = []

    def measured(data: bytes, retrained: bool) -> tuple[Optional[float], list[str], float]:
        """A file's score on the evaluation data, the budgets it misses, and how it ranks (higher is
        better: the classification score, or without a classifier the budget share its outputs leave,
        their error against the labels where there are labels, for both files alike)."""
        judged = reference.judge(Runner(data, num_threads=num_threads).predict(prepared.evaluation, progress=False))
        score, used = reference.score(judged), reference.budget_used(judged, spec.budget, labels=True)
        rank = score if score is not None else (-used if used is not None else 0.0)
        return score, reference.violations(judged, spec.budget, retrained=retrained), rank

    ptq_rank = None
    if prepared.evaluation is not None:
        reference = Reference.measure(prepared.exported.tflite, prepared.evaluation, num_threads=num_threads)
        ptq_score, ptq_misses, ptq_rank = measured(ptq_tflite, retrained=False)
    seconds["ptq"] = time.perf_counter() - started

    started = time.perf_counter()
    qat_model, layers = quantize_aware(begun.keras_model, samples=prepared.calibration, source=prepared.source)
    probabilities = outputs_probabilities(begun.keras_model)  # by the names the wrappers change
    fit(qat_model, begun.train, epochs=epochs, batch_size=spec.batch_size, learning_rate=spec.learning_rate,
        callbacks=callbacks, verbose=verbose, probabilities=probabilities)
    seconds["train"] = time.perf_counter() - started
    keras_acc = None if prepared.evaluation is None else keras_accuracy(qat_model, prepared.evaluation, probabilities)

    started = time.perf_counter()
    notes: list[str] = []
    candidates = _qat_files(prepared, begun.keras_model, qat_model, recipe, notes)
    seconds["convert"] = time.perf_counter() - started
    kept, qat_score = "qat", None
    tflite = candidates[0][1]
    if reference is not None:
        scored = []
        for route, data in candidates:
            score, misses, rank = measured(data, retrained=True)
            scored.append((rank, route, data, misses, score))
        # within budget first (a regression head beside the classifier), then the higher rank
        qat_rank, route, tflite, misses, qat_score = max(scored, key=lambda item: (not item[3], item[0]))
        if len(scored) > 1:
            notes.append(f"QAT int8 from {route} (" + ", ".join(
                f"{r}: {score:.4f}" if score is not None else f"{r}: {_share(-rank, 'the')}"
                for rank, r, _, _, score in scored) + ")")
        if qat_score is not None:
            below = f"QAT int8 scored {qat_score:.4f}, below plain PTQ int8 at {ptq_score:.4f}"
        else:  # no classifier: the share of the budget the furthest output uses
            below = (f"QAT int8's outputs use {_share(-qat_rank, 'their')}, plain PTQ int8's {_share(-ptq_rank, 'their')}"
                     if ptq_rank is not None else "")
        if misses and not ptq_misses and spec.keep_best:
            tflite, kept = ptq_tflite, "ptq"
            notes.append(f"QAT int8 is outside the budget ({'; '.join(misses)}) where plain PTQ int8 is within it: the "
                         "PTQ file is kept")
        elif ptq_rank is not None and qat_rank < ptq_rank and bool(misses) >= bool(ptq_misses):
            if spec.keep_best:
                tflite, kept = ptq_tflite, "ptq"
                notes.append(f"{below}: the PTQ file is kept; fine-tune longer or with a smaller learning rate")
            else:
                asked = called("keep_best")
                asked = asked if asked.startswith("--") else f"{asked}=False"
                notes.append(f"{below}, and the QAT file is kept as asked ({asked}): fine-tune longer or with a "
                             "smaller learning rate")
    training = Training(kind="qat", epochs=epochs, keras_accuracy=keras_acc, layers=layers, ptq_accuracy=ptq_score,
                        qat_accuracy=qat_score, kept=kept)
    return verify(prepared, recipe, tflite, seconds=seconds, budget=spec.budget, reference=reference,
                  strict=spec.strict, num_threads=num_threads, bench_runs=spec.bench_runs, progress=progress,
                  warnings=notes, extra={"training": training}, spec=spec, retrained=kept == "qat")


def _share(used: float, whose: str) -> str:
    """A budget share as a note says it; below 0 a file is closer to the labels than the float model."""
    return f"{used:.0%} of {whose} budget" if used >= 0 else f"none of {whose} budget (closer to the labels than float)"

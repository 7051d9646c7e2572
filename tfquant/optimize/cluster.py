"""Weight clustering (weight sharing), and collaborative optimization: prune, then cluster, then QAT.

Clustering replaces each kernel's weights by the nearest of a few shared values (16 by default:
4 bits of information per weight in an 8-bit file), fine-tuned with tfmot's `cluster_weights`
and stripped with `strip_clustering`. It pays where the file goes over a wire: a clustered int8
file compresses to about half of a plain one.

What ships is the int8 file, so the clusters must survive quantization:

- the file uses one scale per weight tensor (per-channel scales would turn 16 shared values into
  16 per output channel, and a conv kernel's distinct codes into hundreds);
- BatchNormalization is folded into the kernel before clustering (`fold.py`): the converter's own
  fold would multiply the shared values by one factor per channel;
- depthwise kernels are clustered as well (tfmot's registry leaves them out);
- `then="qat"` fine-tunes with tfmot's cluster-preserving QAT scheme (CQAT), which trains the
  centroids through the fake-quant ops instead of the weights one by one; where it trained one
  set of centroids per channel, `retie` brings each tensor back to one set; the fine-tuned
  weights are then calibrated like PTQ's;
- `collaborate()` (`tfquant optimize`) chains pruning, clustering that keeps the zeros (sparsity-preserving clustering)
  and QAT that keeps zeros and clusters (PCQAT), and measures every stage as an int8 file.

Every count of distinct values and zeros in the report is read from the .tflite file
(`tfquant.optimize.weights`).
"""

from __future__ import annotations

import functools
import time
from typing import Optional

import numpy as np

from .._keras import keras
from ..types import FileSize, Mode, Recipe, Stage, Training


def _clustering():
    import tensorflow_model_optimization as tfmot

    return tfmot.clustering.keras


_INITS = {"kmeans_plus_plus": "KMEANS_PLUS_PLUS", "linear": "LINEAR", "density": "DENSITY_BASED", "random": "RANDOM"}


def clusterable(layer) -> bool:
    """Layers with a kernel tfmot can cluster (Conv, DepthwiseConv, Dense, recurrent cells, attention)."""
    from tensorflow_model_optimization.python.core.clustering.keras.clustering_registry import ClusteringRegistry

    return bool(layer.trainable_weights) and ClusteringRegistry.supports(layer)


@functools.cache
def _clusterable_depthwise() -> type:
    """DepthwiseConv2D with its kernel offered for clustering (tfmot's registry clusters none of its
    weights, so a MobileNet's depthwise kernels would keep every value they have)."""
    class ClusterableDepthwiseConv2D(keras.layers.DepthwiseConv2D, _clustering().ClusterableLayer):
        def get_clusterable_weights(self):
            return [("depthwise_kernel", self.depthwise_kernel)]

    return ClusterableDepthwiseConv2D


def _same_layer(layer, kind: type):
    """`layer` as a new layer of class `kind`, with its config and weights."""
    copy = kind.from_config(layer.get_config())
    copy.build(layer.input_shape)
    copy.set_weights(layer.get_weights())
    return copy


def _plain_depthwise(model):
    """`model` with the clusterable depthwise layers back as DepthwiseConv2D (what tfmot's QAT knows)."""
    depthwise = _clusterable_depthwise()
    if not any(isinstance(layer, depthwise) for layer in model.layers):
        return model
    return keras.models.clone_model(model, clone_function=lambda layer: _same_layer(
        layer, keras.layers.DepthwiseConv2D) if isinstance(layer, depthwise) else layer)


def wrap_for_clustering(model, *, clusters: int, init: str = "kmeans_plus_plus", preserve_sparsity: bool = False):
    """A copy of `model` with every clusterable layer wrapped by tfmot's `cluster_weights` (the others as they are)."""
    ck = _clustering()
    centroids = getattr(ck.CentroidInitialization, _INITS[init])
    base = keras.models.clone_model(model)
    base.set_weights(model.get_weights())

    def wrap(layer):
        if type(layer) is keras.layers.DepthwiseConv2D:
            layer = _same_layer(layer, _clusterable_depthwise())
        elif not clusterable(layer):
            return layer
        return ck.cluster_weights(layer, number_of_clusters=clusters, cluster_centroids_init=centroids,
                                  preserve_sparsity=preserve_sparsity)

    return keras.models.clone_model(base, clone_function=wrap)


def cluster_stage(keras_model, train, *, clusters: int, init: str, epochs: int, batch_size: int, learning_rate: float,
                  preserve_sparsity: bool = False, callbacks: Optional[list] = None, verbose: int = 0,
                  probabilities: Optional[dict[str, bool]] = None):
    """Fine-tune `keras_model` with clustered kernels; returns the stripped model, `clusters` values per kernel."""
    from .training import fit

    wrapped = wrap_for_clustering(keras_model, clusters=clusters, init=init, preserve_sparsity=preserve_sparsity)
    fit(wrapped, train, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, callbacks=callbacks,
        verbose=verbose, probabilities=probabilities)
    return _plain_depthwise(_clustering().strip_clustering(wrapped))


def retie(clustered, tuned, clusters: int):
    """`tuned`'s clustered kernels back to one set of shared values per tensor, in place.

    tfmot's cluster-preserving QAT trains one set of centroids per output channel of a Conv2D
    whose channels each hold all the clusters, so its fine-tuned kernel holds up to `clusters`
    values per channel. The file has one scale per tensor: each shared value of `clustered`
    (the kernel before QAT) becomes the mean of what QAT made of it; a zero stays zero.
    """
    before = {layer.name: layer for layer in clustered.layers}
    for layer in tuned.layers:
        source = before.get(layer.name)
        if source is None or not clusterable(layer):
            continue
        values = []
        for old, new in zip(source.get_weights(), layer.get_weights()):
            shared, index = np.unique(old, return_inverse=True)
            if old.shape == new.shape and old.size > clusters >= len(shared):
                counts = np.bincount(index.ravel(), minlength=len(shared))
                means = np.bincount(index.ravel(), weights=new.ravel().astype(np.float64),
                                    minlength=len(shared)) / counts
                means[shared == 0] = 0.0
                new = means[index].reshape(new.shape).astype(new.dtype)
            values.append(new)
        layer.set_weights(values)
    return tuned


def _qat_scheme(*, pruned: bool, clustered: bool):
    """tfmot's QAT scheme that keeps what the earlier stages made: zeros, clusters, or both."""
    import tensorflow_model_optimization as tfmot

    combine = tfmot.experimental.combine
    if clustered:
        return combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=pruned)
    if pruned:
        return combine.Default8BitPrunePreserveQuantizeScheme()
    return None


def cluster(model, train_data, *, calibration_data=None, eval_data=None, spec=None, callbacks: Optional[list] = None,
            safe_mode: bool = True, verbose: int = 0, progress: Optional[bool] = None, **options):
    """Cluster `model`'s weights while fine-tuning, convert to full int8 and verify it on the interpreter.

    Example:
        >>> result = tfquant.cluster("digits.keras", "data/digits_train.npz", clusters=16, epochs=2,
        ...                          then="qat", eval_data="data/digits_test.npz")      # doctest: +SKIP
        >>> max(result.report.training.unique_values.values())
        16

    Args:
        model: a tf_keras or Keras 3 model or a path.
        train_data: labelled training data.
        calibration_data, eval_data, callbacks, verbose: as in `tfquant.qat`.
        spec: every option (`tfquant.spec.ClusterSpec`); keyword `options` build or override it:
            `clusters` (16), `init` (`"kmeans_plus_plus"`, `"linear"`, `"density"`, `"random"`),
            `epochs` (required), `then` (`"ptq"`, or `"qat"`: cluster-preserving QAT),
            `qat_epochs` (default: half the epochs), `learning_rate` (1e-4), and the options of
            `tfquant.qat`.
    """
    from ..spec import ClusterSpec

    spec = ClusterSpec.from_options(spec, **options)
    return _collaborate(model, train_data, spec, sparsity=None, clusters=spec.clusters, qat=spec.then == "qat",
                        qat_epochs=spec.qat_epochs or max(1, spec.epochs // 2), sparse=False,
                        calibration_data=calibration_data, eval_data=eval_data, callbacks=callbacks,
                        safe_mode=safe_mode, verbose=verbose, progress=progress)


def collaborate(model, train_data, *, calibration_data=None, eval_data=None, spec=None, callbacks: Optional[list] = None,
             safe_mode: bool = True, verbose: int = 0, progress: Optional[bool] = None, **options):
    """Collaborative optimization (`tfquant optimize`): prune, then cluster keeping the zeros, then QAT keeping
    both (PCQAT).

    Each stage given runs in that order, `epochs` each, and is measured as an int8 file on the
    interpreter (accuracy, raw and gzip bytes), so the report shows what each one bought.

    Example:
        >>> result = tfquant.collaborate("digits.keras", "data/digits_train.npz", prune=0.5, cluster=16,
        ...                           qat=True, epochs=2, eval_data="data/digits_test.npz")  # doctest: +SKIP
        >>> [(s.name, s.gzip_bytes) for s in result.report.training.stages]

    Args:
        spec: every option (`tfquant.spec.OptimizeSpec`); keyword `options` build or override it:
            `prune` (a fraction of zeros), `cluster` (shared values per kernel), `qat` (bool),
            `epochs` (required, per stage), `init`, `sparse` (store the zeros sparse),
            `learning_rate` (1e-4), and the options of `tfquant.qat`.
        The other arguments as in `tfquant.cluster`.
    """
    from ..spec import OptimizeSpec

    spec = OptimizeSpec.from_options(spec, **options)
    return _collaborate(model, train_data, spec, sparsity=spec.prune, clusters=spec.cluster, qat=spec.qat,
                        qat_epochs=spec.epochs, sparse=spec.sparse, calibration_data=calibration_data,
                        eval_data=eval_data, callbacks=callbacks, safe_mode=safe_mode, verbose=verbose,
                        progress=progress)


def _collaborate(model, train_data, spec, *, sparsity: Optional[float], clusters: Optional[int], qat: bool,
                 qat_epochs: int, sparse: bool, calibration_data, eval_data, callbacks, safe_mode: bool, verbose: int,
                 progress: Optional[bool]):
    """The stages given, in order (prune, cluster, QAT), each measured as an int8 file; the last one's file verified."""
    from .. import console
    from ..convert import convert
    from ..export import export
    from ..harness import Runner
    from ..sizes import gzip_size
    from ..verify import Reference, verify
    from .fold import folded_copy
    from .prune import prune_stage, sparse_file
    from .qat import quantize_aware, stripped_weights
    from .training import fit, keras_accuracy, outputs_probabilities, start
    from .weights import sparsity as weight_sparsity
    from .weights import unique_values

    recipe = spec.recipe
    # Per-tensor weight scales once clustered: a cluster's value is then one int8 code in the whole tensor.
    # Not equalized: rescaling each channel by its own factor would split every shared value.
    file_recipe = Recipe(mode=Mode.INT8, io=recipe.io, calib_samples=recipe.calib_samples, per_channel=clusters is None,
                         equalize=False)
    begun = start(model, train_data, stage=f"tfquant {spec.command}", calibration_data=calibration_data,
                  eval_data=eval_data, recipe=recipe, max_drop=spec.max_drop, safe_mode=safe_mode)
    prepared = begun.prepared
    probabilities = outputs_probabilities(begun.keras_model)
    reference = None if prepared.evaluation is None else Reference.measure(
        prepared.exported.tflite, prepared.evaluation, num_threads=spec.num_threads, progress=False)
    seconds: dict[str, float] = {}
    stages: list[Stage] = []
    files: dict[str, bytes] = {"float": prepared.exported.tflite}

    def measure(name: str, data: bytes) -> None:
        score = None
        if reference is not None:
            outputs = Runner(data, num_threads=spec.num_threads).predict(prepared.evaluation, progress=False)
            score = reference.score(reference.judge(outputs))
        stages.append(Stage(name=name, accuracy=score, tflite_bytes=len(data), gzip_bytes=gzip_size(data)))
        files[name] = data

    def as_int8(keras_model, stage_recipe: Recipe) -> bytes:
        # Trained weights as they are: their zeros and shared values are what the stage made.
        exported = export(prepared.loaded.trained(keras_model), shapes=prepared.exported.sample_shapes(),
                          keep_weights=True)
        return convert(exported, stage_recipe, calibration=prepared.calibration, source=prepared.source)

    stages.append(Stage(name="float", accuracy=None if reference is None else reference.score(reference.metrics),
                        tflite_bytes=len(files["float"]), gzip_bytes=gzip_size(files["float"])))
    started = time.perf_counter()
    with console.step("the plain int8 file, for comparison"):
        measure("int8", convert(prepared.exported, recipe, calibration=prepared.calibration, source=prepared.source))
    seconds["int8"] = time.perf_counter() - started

    current, kinds, epochs, layers, folded = begun.keras_model, [], 0, [], []
    fitting = dict(batch_size=spec.batch_size, learning_rate=spec.learning_rate, verbose=verbose,
                   probabilities=probabilities)
    if sparsity is not None:
        started = time.perf_counter()
        current = prune_stage(current, begun.train, sparsity=sparsity, epochs=spec.epochs, callbacks=callbacks,
                              **fitting)
        measure("pruned", as_int8(current, recipe))
        kinds, epochs = kinds + ["prune"], epochs + spec.epochs
        seconds["prune"] = time.perf_counter() - started
    if clusters is not None:
        started = time.perf_counter()
        current, folded = folded_copy(current, prepared.calibration)
        current = cluster_stage(current, begun.train, clusters=clusters, init=spec.init, epochs=spec.epochs,
                                preserve_sparsity=sparsity is not None, callbacks=callbacks, **fitting)
        measure("clustered", as_int8(current, file_recipe))
        kinds, epochs = kinds + ["cluster"], epochs + spec.epochs
        seconds["cluster"] = time.perf_counter() - started
    if qat:
        started = time.perf_counter()
        aware, layers = quantize_aware(current, scheme=_qat_scheme(pruned=sparsity is not None,
                                                                   clustered=clusters is not None),
                                       samples=prepared.calibration, source=prepared.source)
        fit(aware, begun.train, epochs=qat_epochs, callbacks=callbacks, **fitting)
        # The fine-tuned weights keep the zeros and the shared values: calibrated as in PTQ, per tensor once clustered.
        tuned = stripped_weights(current, aware)
        current = tuned if clusters is None else retie(current, tuned, clusters)
        measure("qat", as_int8(current, file_recipe))
        kinds, epochs = kinds + ["qat"], epochs + qat_epochs
        seconds["qat"] = time.perf_counter() - started
    if not (qat or clusters):
        kinds.append("ptq")
    tflite = files[stages[-1].name]
    sparse_record = None
    if sparse:
        tflite, sparse_record = sparse_file(tflite, num_threads=spec.num_threads)
        files["sparse"] = tflite

    training = Training(
        kind="+".join(kinds), epochs=epochs,
        keras_accuracy=None if prepared.evaluation is None else keras_accuracy(current, prepared.evaluation),
        layers=layers, target_sparsity=sparsity, sparsity=weight_sparsity(files[stages[-1].name]) if sparsity else {},
        files={name: FileSize(len(data), gzip_size(data)) for name, data in files.items()},
        clusters=clusters, unique_values=unique_values(files[stages[-1].name]) if clusters else {}, folded=folded,
        stages=stages,
        sparse=sparse_record, ptq_accuracy=stages[1].accuracy,
    )
    return verify(prepared, file_recipe if clusters else recipe, tflite, seconds=seconds, budget=spec.budget,
                  reference=reference, strict=spec.strict, num_threads=spec.num_threads, bench_runs=spec.bench_runs,
                  progress=progress, extra={"training": training}, spec=spec,
                  retrained=sparsity is not None or clusters is not None or qat)

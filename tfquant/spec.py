"""The options of every task, declared once: `ConvertSpec`, `QATSpec`, `PruneSpec`, `ClusterSpec`, `OptimizeSpec`.

Each option is a field of a frozen, versioned dataclass with its type, default, bounds, choices
and help text (the machinery is `tfquant.options`). The three ways in are built from it:

- the Python API: `tfquant.quantize(..., spec=ConvertSpec(...))`, or keyword options that build
  the spec (`tfquant.quantize(model, data, max_drop=0.01)`);
- the command: `cli.build_parser()` adds one flag per option (`add_options`), with the same
  default and help, and turns the parsed flags into the spec (`from_flags`);
- the service: the JSON options of a job are the spec's `to_dict()` plus `"command"`, checked by
  `from_dict` (unknown keys refused, older `schema_version`s migrated), and its OpenAPI document
  carries each spec's JSON schema (`json_schema`).

Errors name an option the way the caller knows it: `called("max_drop")` is `max_drop` in
Python and over HTTP, and `--max-drop` once the command has set `naming("command")`.

This module imports no TensorFlow, so the command checks every option before it loads anything.

Example:
    >>> spec = ConvertSpec(mode="int8", max_drop=0.01, fallback="auto")
    >>> spec.recipe.mode.value, spec.budget.max_drop
    ('int8', 0.01)
    >>> ConvertSpec.from_dict(spec.to_dict()) == spec
    True
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from .errors import RecipeError, called, naming, spell
from .options import (Option, Spec, add_options, flag_of, flags, from_flags, given_flags, json_schema, option,
                      replay)
from .types import FLOAT_IO_NORM, NORM_FORMS, QUANTIZERS, RANGE_METHODS, SCHEMA_VERSION, WEIGHT_ROUNDINGS, WEIGHT_SCALES, Budget, IOType, Mode, Recipe

__all__ = ["ConvertSpec", "QATSpec", "PruneSpec", "ClusterSpec", "OptimizeSpec", "SPECS", "TRAINING", "Option", "Spec",
           "called", "naming", "spec_for", "training_function", "recipe_file", "add_options", "from_flags", "flags",
           "given_flags", "json_schema", "replay"]

FALLBACKS = ("off", "auto")

# The arguments that are not options (files, the trust policy), as each kind of caller spells them.
ARGUMENTS = {
    "calibration_data": {"command": "--calib", "service": "the calib file"},
    "eval_data": {"command": "--eval", "service": "the eval file"},
    "train_data": {"command": "--train", "service": "the train file"},
    "safe_mode": {"python": "safe_mode=False", "command": "--allow-unsafe-models",
                  "service": "the server's --allow-unsafe-models"},
    "overwrite": {"command": "--overwrite"},
    "image_size": {"command": "--image-size HxW"},
    "recipe": {"command": "--recipe"},
}
for _name, _spellings in ARGUMENTS.items():
    spell(_name, **_spellings)


# --- the specs ----------------------------------------------------------------------------------


_IO = tuple(t.value for t in IOType)
_MODES = tuple(m.value for m in Mode)


@dataclass(frozen=True, kw_only=True)
class ConvertSpec(Spec):
    """Every option of a conversion (`tfquant convert`, `tfquant.quantize`, a `convert` job).

    The options marked `recipe` make up the `Recipe` (what decides the file's bytes); the others
    say what to measure and which gates to apply.
    """

    command: ClassVar[str] = "convert"

    mode: str = option("int8", choices=_MODES, recipe=True,
                       help="int8 (full integer), int16x8, dynamic (weights only), float16 or float32")
    io: Optional[str] = option(None, choices=_IO, recipe=True,
                               help="dtype of the file's float inputs and outputs (integer inputs such as token ids "
                                    "stay integer); default: the mode's own (int8 for int8, int16 for int16x8)")
    calib_samples: int = option(200, low=1, recipe=True, help="representative samples drawn from the calibration data")
    quantizer: str = option("converter", choices=QUANTIZERS, recipe=True,
                            help="converter: TFLiteConverter's quantizer; litert: LiteRT Quantizer (int8 only)")
    ranges: str = option("auto", choices=RANGE_METHODS, recipe=True,
                         help="int8 activation ranges: min/max, MSE-optimal, the average of each sample's extremes, "
                              "or auto (whichever keeps the outputs closest to float on held-out calibration samples); "
                              "int16x8 keeps min/max unless one other than mse is named")
    bias_correction: bool = option(True, recipe=True, flag="--no-bias-correction",
                                   help="fold the mean shift of int8 weight rounding into the biases (with "
                                        "ranges auto: unless held-out calibration samples show it clearly worse)")
    per_channel: bool = option(True, recipe=True, flag="--no-per-channel", help="per-channel weight scales")
    split_joins: bool = option(True, recipe=True, flag="--no-split-joins",
                               help="where a concatenation's inputs' ranges differ more than 16x, split the dense and "
                                    "conv ops that read it per input (and ADDs), so that no int8 scale is shared")
    equalize: bool = option(True, recipe=True, flag="--no-equalize",
                            help="with per-tensor weight scales (see {per_channel}): rescale the channels of "
                                 "conv/dense pairs joined by no activation or a RELU so that their weight ranges match "
                                 "(cross-layer equalization; the same float function)")
    float_io_norm: str = option("auto", choices=FLOAT_IO_NORM, recipe=True,
                                   help="on: where one int8 scale cannot hold a float input's features or an "
                                        "output's columns (a table's raw columns, targets in different units), give "
                                        "that input or output float32 and run its normalization or rescaling in float "
                                        "around the int8 graph, where held-out calibration samples show the outputs "
                                        "clearly closer to float (an IO change, announced); auto: on unless {io} pins "
                                        "an integer type")
    weight_scales: str = option("max", choices=WEIGHT_SCALES, recipe=True,
                                help="int8 weight scales per channel: max (max|w| / 127, the quantizer's own) or mse "
                                     "(clipped to the least squared rounding-plus-clipping error)")
    weight_rounding: str = option("nearest", choices=WEIGHT_ROUNDINGS, recipe=True,
                                  help="int8 weight values: nearest (each weight to its nearest step) or gptq (rounded "
                                       "column by column so that each op's output error on the calibration samples is "
                                       "least)")
    norm_form: str = option("auto", choices=NORM_FORMS, recipe=True,
                            help="int8: auto traces the LayerNormalizations and RMSNormalizations over the last axis "
                                 "both as Keras computes them and through L2_NORMALIZATION (the same function) and "
                                 "keeps the form held-out calibration samples show clearly closer to float; keras: "
                                 "as Keras computes them")
    denylist: tuple[str, ...] = option((), recipe=True, metavar="OP", flag="--keep-float",
                                       help="an op (by its output tensor name) to keep in float; repeatable")
    input_shapes: dict[str, tuple[int, ...]] = option(factory=dict, recipe=True, pairs="shape", flag="--input-shape",
                                                      metavar="INPUT=D1,D2",
                                                      help="the shape of one sample of an input whose dims the model "
                                                           "leaves open (a sequence length); repeatable")
    fallback: str = option("off", choices=FALLBACKS,
                           help="auto: try int8, int8 with the worst ops in float, int16x8, dynamic, float16, float32 "
                                "until every output is within budget (needs {eval_data}, and {max_drop} for a classifier)")
    max_drop: Optional[float] = option(None, low=0, high=1,
                                       help="largest accepted accuracy drop of a classification output (and retrieval "
                                            "drop of an embedding), as a fraction: 0.01 is one point")
    max_rel_rmse: float = option(0.05, low=0, low_open=True,
                                 help="regression budget: RMSE against float, as a fraction of float's standard deviation")
    min_cosine: float = option(0.99, low=-1, high=1, help="embedding budget: mean cosine to the float embeddings")
    strict: bool = option(False, help="fail unless every op besides the IO adapters is integer, in any mode")
    tasks: dict[str, str] = option(factory=dict, pairs="task", flag="--task", metavar="OUTPUT=TASK",
                                   help="classification, regression or embedding for an output (default: detected); "
                                        "repeatable")
    diagnose: bool = option(True, flag="--no-diagnose",
                            help="rank tensors by int8 error and lint their ranges in the report")
    num_threads: Optional[int] = option(None, low=1, flag="--threads", service=False,
                                        help="interpreter threads for evaluation and latency (default: every core)")
    bench_runs: int = option(30, low=1, help="timed invokes per file for the report's latency")
    parallel: int = option(1, low=1, high=64,
                           help="measure the ladder's int8 candidates and the per-op sensitivity sweep this many at "
                                "a time (worker processes, or Ray tasks in a job on Ray); the result is the serial one")
    schema_version: int = SCHEMA_VERSION

    def check(self) -> None:
        recipe = self.recipe  # mode/io, quantizer and denylist rules
        if self.fallback == "auto" and recipe.quantizer != "converter":
            raise RecipeError(f"{called('fallback')} auto climbs with {called('quantizer')} converter (it keeps single "
                              f"ops float), found {called('quantizer')} {recipe.quantizer}")

    @property
    def recipe(self) -> Recipe:
        fields = {name: getattr(self, name) for name in _RECIPE_FIELDS}
        if fields["float_io_norm"] == "auto":  # off where an integer IO type is pinned: every input takes it
            fields["float_io_norm"] = "off" if self.io not in (None, IOType.FLOAT32.value) else "on"
        return Recipe(**fields)

    @property
    def budget(self) -> Budget:
        return Budget(max_drop=self.max_drop, max_rel_rmse=self.max_rel_rmse, min_cosine=self.min_cosine)

    def with_recipe(self, recipe: Recipe) -> "ConvertSpec":
        """This spec with the recipe's choices (a replayed recipe, the ladder's rung, the ranges chosen)."""
        values = {name: getattr(recipe, name) for name in _RECIPE_FIELDS}
        return dataclasses.replace(self, **{name: value.value if isinstance(value, enum.Enum) else
                                            tuple(value) if isinstance(value, list) else value
                                            for name, value in values.items()})


# A conversion's recipe is every Recipe field but the schema version, each an option of the same name.
_RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(Recipe) if f.name != "schema_version")


_TRAIN_IO = tuple(t.value for t in IOType if t is not IOType.INT16)


@dataclass(frozen=True, kw_only=True)
class TrainSpec(Spec):
    """What every training stage takes: fine-tuning, then a full int8 file checked like a conversion."""

    entry: ClassVar[str] = ""  # "module:function" that runs the command, imported when it runs

    epochs: int = option(low=1, recipe=True, help="fine-tuning epochs")
    batch_size: int = option(32, low=1, recipe=True, help="training batch size")
    learning_rate: float = option(1e-4, low=0, low_open=True, flag="--lr", recipe=True, help="Adam learning rate")
    io: Optional[str] = option(None, choices=_TRAIN_IO, recipe=True, help="dtype of the file's inputs and outputs "
                                                                          "(default: int8)")
    calib_samples: int = option(200, low=1, recipe=True, help="representative samples for integer IO")
    max_drop: Optional[float] = option(None, low=0, high=1,
                                       help="largest accepted accuracy drop against the float model, as a fraction")
    max_rel_rmse: float = option(0.05, low=0, low_open=True,
                                 help="regression budget: RMSE against float, as a fraction of float's standard deviation")
    min_cosine: float = option(0.99, low=-1, high=1, help="embedding budget: mean cosine to the float embeddings")
    strict: bool = option(False, help="fail unless every op besides the IO adapters is integer")
    num_threads: Optional[int] = option(None, low=1, flag="--threads", service=False,
                                        help="interpreter threads for evaluation and latency (default: every core)")
    bench_runs: int = option(30, low=1, help="timed invokes per file for the report's latency")
    schema_version: int = SCHEMA_VERSION

    @property
    def recipe(self) -> Recipe:
        return Recipe(mode=Mode.INT8, io=self.io, calib_samples=self.calib_samples)

    @property
    def budget(self) -> Budget:
        return Budget(max_drop=self.max_drop, max_rel_rmse=self.max_rel_rmse, min_cosine=self.min_cosine)


@dataclass(frozen=True, kw_only=True)
class QATSpec(TrainSpec):
    """Quantization-aware fine-tuning (`tfquant qat`)."""

    command: ClassVar[str] = "qat"
    entry: ClassVar[str] = "tfquant.optimize.qat:qat"

    learning_rate: float = option(1e-4, low=0, low_open=True, flag="--lr", recipe=True,
                                  help="Adam learning rate; fine-tuning wants it small")
    keep_best: bool = option(True, recipe=True, flag="--no-keep-best",
                             help="keep the plain PTQ file when the QAT file scores below it on the evaluation data")


@dataclass(frozen=True, kw_only=True)
class PruneSpec(TrainSpec):
    """Magnitude pruning while fine-tuning, then PTQ or sparsity-preserving QAT (`tfquant prune`)."""

    command: ClassVar[str] = "prune"
    entry: ClassVar[str] = "tfquant.optimize.prune:prune"

    sparsity: float = option(low=0, high=1, low_open=True, high_open=True, recipe=True,
                             help="final fraction of zero weights in every pruned layer, e.g. 0.8")
    schedule: str = option("polynomial", choices=("polynomial", "constant"), recipe=True,
                           help="polynomial (0 to sparsity over the first 3/4 of the steps) or constant")
    block: Optional[str] = option(None, choices=("2:4",), recipe=True, help="structured 2-of-4 sparsity")
    then: str = option("ptq", choices=("ptq", "qat"), recipe=True,
                       help="ptq: calibrate and convert; qat: sparsity-preserving QAT, then convert")
    qat_epochs: Optional[int] = option(None, low=1, recipe=True,
                                       help="epochs of the QAT step with {then} qat (default: half the pruning epochs)")
    learning_rate: float = option(1e-3, low=0, low_open=True, flag="--lr", recipe=True,
                                  help="Adam learning rate; pruning recovers at tfmot's usual 1e-3")
    log_dir: Optional[str] = option(None, service=False, help="write tfmot's pruning summaries for TensorBoard here")
    sparse: bool = option(False, recipe=True, help="write the pruned weights in TFLite's sparse format (a smaller raw "
                                                   "file; the interpreter densifies them when it loads the file)")


CLUSTER_INITS = ("kmeans_plus_plus", "linear", "density", "random")


@dataclass(frozen=True, kw_only=True)
class ClusterSpec(TrainSpec):
    """Weight clustering (weight sharing) while fine-tuning, then PTQ or cluster-preserving QAT (`tfquant cluster`)."""

    command: ClassVar[str] = "cluster"
    entry: ClassVar[str] = "tfquant.optimize.cluster:cluster"

    clusters: int = option(16, low=2, high=256, recipe=True,
                           help="shared values per weight tensor (each layer's kernel keeps only this many)")
    init: str = option("kmeans_plus_plus", choices=CLUSTER_INITS, recipe=True,
                       help="how the centroids start: k-means++, evenly spaced, by the weights' density, or random")
    then: str = option("ptq", choices=("ptq", "qat"), recipe=True,
                       help="ptq: calibrate and convert; qat: cluster-preserving QAT (CQAT), then convert")
    qat_epochs: Optional[int] = option(None, low=1, recipe=True,
                                       help="epochs of the QAT step with {then} qat (default: half the clustering epochs)")
    learning_rate: float = option(1e-4, low=0, low_open=True, flag="--lr", recipe=True,
                                  help="Adam learning rate; the centroids fine-tune at a small one")


@dataclass(frozen=True, kw_only=True)
class OptimizeSpec(TrainSpec):
    """Collaborative optimization (`tfquant optimize`): pruning, then clustering that keeps the zeros, then QAT
    that keeps both (PCQAT), each stage measured as an int8 file."""

    command: ClassVar[str] = "optimize"
    entry: ClassVar[str] = "tfquant.optimize.cluster:collaborate"

    prune: Optional[float] = option(None, low=0, high=1, low_open=True, high_open=True, recipe=True,
                                    help="prune first, to this fraction of zero weights, e.g. 0.5")
    cluster: Optional[int] = option(None, low=2, high=256, recipe=True,
                                    help="then cluster each weight tensor to this many shared values, e.g. 16")
    qat: bool = option(False, recipe=True, help="then quantization-aware training that keeps the zeros and the clusters")
    init: str = option("kmeans_plus_plus", choices=CLUSTER_INITS, recipe=True, help="the clusters' initial centroids")
    sparse: bool = option(False, recipe=True, help="write the zero weights in TFLite's sparse format")

    def check(self) -> None:
        if self.prune is None and self.cluster is None and not self.qat:
            raise RecipeError(f"optimize needs a stage: {called('prune')}, {called('cluster')} or {called('qat')}")
        if self.sparse and self.prune is None:
            raise RecipeError(f"{called('sparse')} writes pruned weights sparse: it needs {called('prune')}")


SPECS: dict[str, type[Spec]] = {cls.command: cls for cls in (ConvertSpec, QATSpec, PruneSpec, ClusterSpec,
                                                             OptimizeSpec)}
for _cls in SPECS.values():
    for _field, _option, _ in _cls.options():
        spell(_field.name, command=flag_of(_field.name, _option), service=_field.name)


TRAINING = tuple(name for name, cls in SPECS.items() if issubclass(cls, TrainSpec))


def training_function(command: str):
    """The function that runs a training command (`qat`, `prune`, `cluster`, `optimize`), imported now."""
    import importlib

    module, name = SPECS[command].entry.split(":")
    return getattr(importlib.import_module(module), name)


def recipe_file(report) -> bytes:
    """recipe.json for a report: its command and the options that decide the file's bytes."""
    import json

    data = spec_for(report.spec).replayable() if report.spec else report.recipe.to_dict()
    return (json.dumps(data, indent=2) + "\n").encode()


def spec_for(data: Any) -> Spec:
    """A job's or a recipe file's JSON -> the spec of its `command` (default convert)."""
    if not isinstance(data, dict):
        raise RecipeError(f"options: expected a JSON object, found {type(data).__name__}")
    command = data.get("command", "convert")
    if command not in SPECS:
        raise RecipeError(f"unknown command {command!r}; expected one of: {', '.join(SPECS)}")
    return SPECS[command].from_dict(data)

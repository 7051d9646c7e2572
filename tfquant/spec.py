"""The options of every task, declared once: `ConvertSpec`, `QATSpec`, `PruneSpec`.

Each option is a field of a frozen, versioned dataclass with its type, default, bounds, choices
and help text. The three ways in are built from it:

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

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Optional

from .errors import RecipeError, called, naming, spell
from .types import QUANTIZERS, RANGE_METHODS, SCHEMA_VERSION, Budget, IOType, Mode, Recipe, migrate

__all__ = ["ConvertSpec", "QATSpec", "PruneSpec", "ClusterSpec", "OptimizeSpec", "SPECS", "Option", "called", "naming", "spec_for",
           "add_options", "from_flags", "json_schema", "replay"]

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

TASK_CHOICES = ("classification", "regression", "embedding")
FALLBACKS = ("off", "auto")


@dataclass(frozen=True)
class Option:
    """How one spec field is offered: help, bounds, choices, and its flag on the command line."""

    help: str
    choices: tuple = ()
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False  # the bound itself is not allowed
    high_open: bool = False
    flag: Optional[str] = None  # defaults to --the-name
    metavar: Optional[str] = None
    service: bool = True  # offered over HTTP (the server decides threads and paths itself)
    recipe: bool = False  # decides the bytes of the file: written to recipe.json, replayed by --recipe
    pairs: Optional[str] = None  # a dict given as NAME=VALUE pairs: what the value is ("task", "shape")


def option(default: Any = dataclasses.MISSING, *, factory: Optional[Callable[[], Any]] = None, **meta: Any):
    """A spec field with its `Option`."""
    info = {"option": Option(**meta)}
    if factory is not None:
        return field(default_factory=factory, metadata=info)
    return field(default=default, metadata=info)


def _flag(name: str, opt: Option) -> str:
    return opt.flag or "--" + name.replace("_", "-")


class Spec:
    """The shared machinery of every spec: checks, JSON round trip, the command's flags."""

    command: ClassVar[str] = ""

    # --- the fields ---

    @classmethod
    def options(cls) -> Iterator[tuple[dataclasses.Field, Option, Any]]:
        """(field, option, type hint) of every option, in declaration order."""
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if "option" in f.metadata:
                yield f, f.metadata["option"], hints[f.name]

    @classmethod
    def default_of(cls, f: dataclasses.Field) -> Any:
        if f.default is not dataclasses.MISSING:
            return f.default
        if f.default_factory is not dataclasses.MISSING:
            return f.default_factory()
        return dataclasses.MISSING

    def __post_init__(self):
        for f, opt, hint in self.options():
            object.__setattr__(self, f.name, _checked(f.name, getattr(self, f.name), hint, opt))
        if self.schema_version != SCHEMA_VERSION:
            raise RecipeError(f"{self.command} options: schema_version: expected {SCHEMA_VERSION}, "
                              f"found {self.schema_version!r}")
        self.check()

    def check(self) -> None:
        """Rules that join several options (a subclass adds its own)."""

    # --- JSON ---

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": self.schema_version,
                **{f.name: _plain(getattr(self, f.name)) for f, _, _ in self.options()}}

    @classmethod
    def from_dict(cls, data: Any) -> "Spec":
        """A spec from JSON: unknown keys refused, older schema versions migrated, missing keys defaulted."""
        if not isinstance(data, dict):
            raise RecipeError(f"{cls.command} options: expected a JSON object, found {type(data).__name__}")
        data = migrate(dict(data), f"{cls.command} options")
        data.pop("command", None)
        names = {f.name for f, _, _ in cls.options()}
        unknown = sorted(set(data) - names - {"schema_version"})
        if unknown:
            raise RecipeError(f"unknown option(s) {', '.join(unknown)} for {cls.command}; expected some of: "
                              f"{', '.join(sorted(names))}")
        missing = [f.name for f, _, _ in cls.options() if f.name not in data and cls.default_of(f) is dataclasses.MISSING]
        if missing:
            raise RecipeError(f"{cls.command} needs {', '.join(repr(called(n)) for n in missing)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "Spec":
        return dataclasses.replace(self, **changes)

    def replayable(self) -> dict[str, Any]:
        """What recipe.json holds: the command and every option that decides the file's bytes."""
        data = self.to_dict()
        return {"command": self.command, "schema_version": self.schema_version,
                **{f.name: data[f.name] for f, opt, _ in self.options() if opt.recipe}}

    @classmethod
    def from_options(cls, spec: Optional["Spec"] = None, **options: Any) -> "Spec":
        """`spec` (or the defaults) with keyword options applied; an unknown keyword is a RecipeError."""
        names = {f.name for f, _, _ in cls.options()}
        unknown = sorted(set(options) - names)
        if unknown:
            raise RecipeError(f"unknown option(s) {', '.join(unknown)} for {cls.command}; expected some of: "
                              f"{', '.join(sorted(names))}")
        if spec is None:
            return cls(**options)
        if not isinstance(spec, cls):
            raise RecipeError(f"spec: expected a {cls.__name__}, found {type(spec).__name__}")
        return dataclasses.replace(spec, **options) if options else spec


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _checked(name: str, value: Any, hint: Any, opt: Option) -> Any:
    """`value` as the field's type, within its choices and bounds, or a RecipeError naming the option."""
    where = called(name)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where}: expected true or false, found {value!r}")
        return value
    if hint in (int, float):
        whole = hint is int
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and whole and isinstance(value, float):
            ok = value.is_integer()
            value = int(value) if ok else value
        if not ok or (isinstance(value, float) and not math.isfinite(value)):
            raise RecipeError(f"{where}: expected {'a whole number' if whole else 'a number'}{_bounds_text(opt)}, "
                              f"found {value!r}")
        value = int(value) if whole else float(value)
        if not _within(value, opt):
            raise RecipeError(f"{where}: expected {'a whole number' if whole else 'a number'}{_bounds_text(opt)}, "
                              f"found {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where}: expected text, found {value!r}")
        if opt.choices and value not in opt.choices:
            raise RecipeError(f"{where}: unknown value {value!r}; expected one of: {', '.join(opt.choices)}")
        return value
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise RecipeError(f"{where}: expected a list of names, found {value!r}")
        return tuple(value)
    if origin is dict:
        return _pairs(where, value, opt)
    raise TypeError(f"{name}: no check for {hint!r}")  # pragma: no cover - a spec declaration bug


def _within(value: float, opt: Option) -> bool:
    if opt.low is not None and (value < opt.low or (opt.low_open and value == opt.low)):
        return False
    return not (opt.high is not None and (value > opt.high or (opt.high_open and value == opt.high)))


def _bounds_text(opt: Option) -> str:
    low = None if opt.low is None else f"{'above' if opt.low_open else 'at least'} {opt.low:g}"
    high = None if opt.high is None else f"{'below' if opt.high_open else 'at most'} {opt.high:g}"
    if opt.low is not None and opt.high is not None:
        return f" between {opt.low:g} and {opt.high:g}" + (" (exclusive)" if opt.low_open and opt.high_open else "")
    return f" {low or high}" if (low or high) else ""


def _pairs(where: str, value: Any, opt: Option) -> dict[str, Any]:
    """A dict option from a dict or from NAME=VALUE texts (the command's repeated flag)."""
    example = "probs=classification" if opt.pairs == "task" else "seq=20,8"
    if isinstance(value, (list, tuple)):
        items = []
        for text in value:
            name, sep, rest = str(text).partition("=")
            if not sep or not name:
                raise RecipeError(f"{where}: expected NAME=VALUE such as {example}, found {text!r}")
            items.append((name, rest))
    elif isinstance(value, dict):
        items = list(value.items())
    else:
        raise RecipeError(f"{where}: expected an object of NAME: VALUE, found {value!r}")
    found: dict[str, Any] = {}
    for name, raw in items:
        if opt.pairs == "task":
            if raw not in TASK_CHOICES:
                raise RecipeError(f"{where}: unknown task {raw!r} for output {name!r}; expected one of: "
                                  f"{', '.join(TASK_CHOICES)}")
            found[str(name)] = raw
            continue
        try:
            dims = tuple(int(d) for d in (raw.replace("x", ",").split(",") if isinstance(raw, str) else raw))
            if not dims or min(dims) < 1:
                raise ValueError
        except (ValueError, TypeError):
            raise RecipeError(f"{where}: expected NAME=D1,D2,... such as {example}, found {name}={raw!r}") from None
        found[str(name)] = dims
    return found


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
                              "or auto (whichever keeps the outputs closest to float on held-out calibration samples)")
    bias_correction: bool = option(True, recipe=True, flag="--no-bias-correction",
                                   help="fold the mean shift of int8 weight rounding into the biases")
    per_channel: bool = option(True, recipe=True, flag="--no-per-channel", help="per-channel weight scales")
    split_joins: bool = option(True, recipe=True, flag="--no-split-joins",
                               help="where a concatenation's inputs' ranges differ more than 16x, split the dense and "
                                    "conv ops that read it per input (and ADDs), so that no int8 scale is shared")
    denylist: tuple[str, ...] = option((), recipe=True, metavar="OP", flag="--keep-float",
                                       help="an op (by its output tensor name) to keep in float; repeatable")
    input_shapes: dict[str, tuple[int, ...]] = option(factory=dict, recipe=True, pairs="shape", flag="--input-shape",
                                                      metavar="INPUT=D1,D2",
                                                      help="the shape of one sample of an input whose dims the model "
                                                           "leaves open (a sequence length); repeatable")
    fallback: str = option("off", choices=FALLBACKS,
                           help="auto: try int8, int8 with the worst ops in float, int16x8, dynamic, float16, float32 "
                                "until every output is within budget (needs {max_drop})")
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
    schema_version: int = SCHEMA_VERSION

    def check(self) -> None:
        recipe = self.recipe  # mode/io, quantizer and denylist rules
        if self.fallback == "auto" and self.max_drop is None:
            raise RecipeError(f"{called('fallback')} auto needs {called('max_drop')}: the budget the ladder climbs to")
        if self.fallback == "auto" and recipe.quantizer != "converter":
            raise RecipeError(f"{called('fallback')} auto climbs with {called('quantizer')} converter (it keeps single "
                              f"ops float), found {called('quantizer')} {recipe.quantizer}")

    @property
    def recipe(self) -> Recipe:
        return Recipe(mode=self.mode, io=self.io, calib_samples=self.calib_samples, per_channel=self.per_channel,
                      denylist=self.denylist, ranges=self.ranges, bias_correction=self.bias_correction,
                      quantizer=self.quantizer, split_joins=self.split_joins)

    @property
    def budget(self) -> Budget:
        return Budget(max_drop=self.max_drop, max_rel_rmse=self.max_rel_rmse, min_cosine=self.min_cosine)

    def with_recipe(self, recipe: Recipe) -> "ConvertSpec":
        """This spec with the recipe's choices (a replayed recipe, the ladder's rung, the ranges chosen)."""
        return dataclasses.replace(
            self, mode=recipe.mode.value, io=recipe.io.value, calib_samples=recipe.calib_samples,
            per_channel=recipe.per_channel, denylist=tuple(recipe.denylist), ranges=recipe.ranges,
            bias_correction=recipe.bias_correction, quantizer=recipe.quantizer, split_joins=recipe.split_joins)


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
        return Budget(max_drop=self.max_drop)


@dataclass(frozen=True, kw_only=True)
class QATSpec(TrainSpec):
    """Quantization-aware fine-tuning (`tfquant qat`)."""

    command: ClassVar[str] = "qat"
    entry: ClassVar[str] = "tfquant.optimize.qat:qat"

    learning_rate: float = option(1e-4, low=0, low_open=True, flag="--lr", recipe=True,
                                  help="Adam learning rate; fine-tuning wants it small")
    keep_best: bool = option(False, recipe=True, help="keep the plain PTQ file when QAT ends below it")


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
        spell(_field.name, command=_flag(_field.name, _option), service=_field.name)


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


# --- the command's flags ------------------------------------------------------------------------


class _Called(dict):
    """`"... {max_drop} ..."`.format_map(_Called()) spells each named option as the current caller does."""

    def __missing__(self, key: str) -> str:
        return called(key)


def help_text(opt: Option) -> str:
    """An option's help, with the other options it names spelled for the current caller."""
    return opt.help.format_map(_Called())


def add_options(parser, cls: type[Spec]) -> None:
    """One flag per option of `cls`, with its default and help; parsed values stay None unless given."""
    with naming("command"):
        for f, opt, hint in cls.options():
            flag = _flag(f.name, opt)
            default = cls.default_of(f)
            text = help_text(opt)
            if hint is bool:
                text += "; on unless this flag is given" if default else ""
                parser.add_argument(flag, dest=f.name, action="store_const", const=not default, default=None,
                                    help=text)
                continue
            if default is not dataclasses.MISSING and default not in (None, (), {}):
                text += f" (default: {default:g})" if isinstance(default, float) else f" (default: {default})"
            if opt.pairs or typing.get_origin(hint) is tuple:
                parser.add_argument(flag, dest=f.name, action="append", metavar=opt.metavar, default=None, help=text)
                continue
            number = _parser_for(hint, opt)
            metavar = opt.metavar or (None if opt.choices else {"int": "N", "float": "F"}.get(getattr(number, "__name__", ""),
                                                                                             "TEXT"))
            parser.add_argument(flag, dest=f.name, default=None, help=text, metavar=metavar,
                                choices=list(opt.choices) or None, type=number,
                                required=default is dataclasses.MISSING)


def _parser_for(hint: Any, opt: Option) -> Optional[Callable[[str], Any]]:
    """A type= for argparse: the number, checked by the same rule as the spec, or an ArgumentTypeError."""
    if typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint not in (int, float):
        return None

    def parse(text: str):
        kind = "a whole number" if hint is int else "a number"
        try:
            value = hint(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, found {text!r}") from None
        if not math.isfinite(value) or not _within(value, opt):
            raise argparse.ArgumentTypeError(f"expected {kind}{_bounds_text(opt)}, found {text}")
        return value

    parse.__name__ = hint.__name__
    return parse


def from_flags(ns: argparse.Namespace, cls: type[Spec], base: Optional[dict[str, Any]] = None) -> Spec:
    """The spec from parsed flags (those given) over `base` (a recipe file's options)."""
    data = dict(base or {})
    data.pop("command", None)
    for f, _, _ in cls.options():
        value = getattr(ns, f.name, None)
        if value is not None:
            data[f.name] = value
    return cls.from_dict(data)


def given_flags(ns: argparse.Namespace, cls: type[Spec]) -> dict[str, str]:
    """{option name: flag} of the options given on the command line."""
    return {f.name: _flag(f.name, opt) for f, opt, _ in cls.options() if getattr(ns, f.name, None) is not None}


def flags(cls: type[Spec]) -> dict[str, str]:
    """{option name: flag} of every option of `cls`."""
    return {f.name: _flag(f.name, opt) for f, opt, _ in cls.options()}


def replay(text: str, cls: type[Spec], where: str) -> dict[str, Any]:
    """The options a recipe file (recipe.json, a whole report.json, or an older plain recipe) sets."""
    import json

    try:
        data = json.loads(text)
    except ValueError as exc:
        raise RecipeError(f"{where}: expected a recipe JSON file, found invalid JSON ({exc})") from None
    if isinstance(data, dict) and "quantized" in data and "recipe" in data:  # a whole report.json
        data = data.get("spec") or data["recipe"]
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a JSON object, found {type(data).__name__}")
    command = data.get("command", cls.command)
    if command != cls.command:
        raise RecipeError(f"{where}: expected a recipe of tfquant {cls.command}, found one of tfquant {command}")
    try:
        with naming("python"):  # a JSON file's keys are the options' own names
            cls.from_dict(data)  # checked now, with the file's name in the message
    except RecipeError as exc:
        raise RecipeError(f"{where}: {exc}") from None
    data = migrate(dict(data), "recipe")
    data.pop("command", None)
    data.pop("schema_version", None)
    return data


# --- the service's schema -----------------------------------------------------------------------


def json_schema(cls: type[Spec]) -> dict[str, Any]:
    """The JSON schema of a job's options for `cls` (the OpenAPI document carries it)."""
    with naming("service"):
        return _json_schema(cls)


def _json_schema(cls: type[Spec]) -> dict[str, Any]:
    command: dict[str, Any] = {"type": "string", "enum": [cls.command]}
    required = []
    if cls is ConvertSpec:
        command["default"] = cls.command  # a job without "command" is a conversion
    else:
        required.append("command")
    properties: dict[str, Any] = {"command": command}
    for f, opt, hint in cls.options():
        if not opt.service:
            continue
        schema = _type_schema(hint)
        schema["description"] = help_text(opt)
        if opt.choices:
            schema["enum"] = list(opt.choices) + ([None] if _optional(hint) else [])
        if opt.low is not None:
            schema["exclusiveMinimum" if opt.low_open else "minimum"] = opt.low
        if opt.high is not None:
            schema["exclusiveMaximum" if opt.high_open else "maximum"] = opt.high
        default = cls.default_of(f)
        if default is dataclasses.MISSING:
            required.append(f.name)
        else:
            schema["default"] = _plain(default)
        properties[f.name] = schema
    properties["schema_version"] = {"type": "integer", "default": SCHEMA_VERSION,
                                    "description": "the options' schema version; older ones are migrated"}
    return {"title": cls.__name__, "type": "object", "properties": properties, "required": required,
            "additionalProperties": False}


def _optional(hint: Any) -> bool:
    return typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)


def _type_schema(hint: Any) -> dict[str, Any]:
    nullable = _optional(hint)
    if nullable:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    origin = typing.get_origin(hint)
    if hint is bool:
        schema: dict[str, Any] = {"type": "boolean"}
    elif hint is int:
        schema = {"type": "integer"}
    elif hint is float:
        schema = {"type": "number"}
    elif hint is str:
        schema = {"type": "string"}
    elif origin is tuple:
        schema = {"type": "array", "items": {"type": "string"}}
    else:  # dict: tasks (text values) or input shapes (lists of whole numbers)
        value = typing.get_args(hint)[1]
        schema = {"type": "object", "additionalProperties":
                  {"type": "string"} if value is str else {"type": "array", "items": {"type": "integer", "minimum": 1}}}
    if nullable:
        schema = {"anyOf": [schema, {"type": "null"}]}
    return schema

"""The recipe: every option that decides the bytes of a converted file, its modes and IO types, and the
migration of recipes written by older schema versions."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from .errors import RecipeError, called
from .records import Record

SCHEMA_VERSION = 8
# What each older schema version meant, applied to its records so that they replay as they did.
MIGRATIONS: dict[int, dict[str, Any]] = {
    1: {"ranges": "minmax", "bias_correction": False},  # v1: min/max ranges, no bias correction
    2: {},  # v2: a recipe held only the Recipe's fields; v3 recipe files are the options of a command
    3: {"split_joins": False},  # v3: mismatched joins were left as they were
    4: {"equalize": False},  # v4: weights were not equalized across layers
    5: {"keep_best": False},  # v5: QAT kept its own file even when it ended below PTQ
    6: {"float_io_norm": "off"},  # v6: every float input was taken on int8's one scale
    7: {"norm_form": "keras"},  # v7: normalizations whose sums do not cancel were traced as Keras computes them
}


def migrate(data: dict[str, Any], what: str, fields: Iterable[str]) -> dict[str, Any]:
    """A recipe dict of an older schema version, brought to the current one: each change since then
    that concerns one of `fields` (the options of what the dict describes) is set to its old meaning."""
    version = data.get("schema_version", SCHEMA_VERSION)
    if version == SCHEMA_VERSION:
        return data
    if version not in MIGRATIONS:
        raise RecipeError(f"{what} schema_version: expected {SCHEMA_VERSION} (or an older one: "
                          f"{', '.join(map(str, sorted(MIGRATIONS)))}), found {version!r}")
    migrated, fields = dict(data), set(fields)
    for old in sorted(v for v in MIGRATIONS if v >= version):
        for key, value in MIGRATIONS[old].items():
            if key in fields:
                migrated.setdefault(key, value)
    migrated["schema_version"] = SCHEMA_VERSION
    return migrated


class Mode(str, enum.Enum):
    """What the converter does to weights and activations."""

    INT8 = "int8"  # full integer: int8 weights (per channel) and int8 activations
    INT16X8 = "int16x8"  # int8 weights, int16 activations: slower, more accurate
    DYNAMIC = "dynamic"  # int8 weights, float activations quantized on the fly
    FLOAT16 = "float16"  # float16 weights
    FLOAT32 = "float32"  # no quantization


class IOType(str, enum.Enum):
    """The dtype of the .tflite file's inputs and outputs."""

    INT8 = "int8"
    UINT8 = "uint8"
    INT16 = "int16"
    FLOAT32 = "float32"


# The IO types each mode can produce, the first being its default.
MODE_IO: dict[Mode, tuple[IOType, ...]] = {
    Mode.INT8: (IOType.INT8, IOType.UINT8, IOType.FLOAT32),
    Mode.INT16X8: (IOType.INT16, IOType.FLOAT32, IOType.INT8),  # int8: requantized at the edges (int16_io.with_io)
    Mode.DYNAMIC: (IOType.FLOAT32,),
    Mode.FLOAT16: (IOType.FLOAT32,),
    Mode.FLOAT32: (IOType.FLOAT32,),
}


def parse_enum(enum_type: type[enum.Enum], value: Any, option: str):
    """Turn a user's string into an enum member or raise a RecipeError listing the choices."""
    if isinstance(value, enum_type):
        return value
    try:
        return enum_type(value)
    except ValueError:
        choices = ", ".join(m.value for m in enum_type)
        raise RecipeError(f"{called(option)}: unknown value {value!r}; expected one of: {choices}") from None


QUANTIZERS = ("converter", "litert")
RANGE_METHODS = ("auto", "percentile", "minmax", "mse", "average")  # auto and tfquant.ranges.ESTIMATORS
WEIGHT_SCALES = ("max", "mse")  # int8 weight scales: the quantizer's max|w| / 127, or tfquant.weights
FLOAT_IO_NORM = ("auto", "on", "off")  # float inputs normalized in float before the int8 graph (tfquant.float_io)
WEIGHT_ROUNDINGS = ("nearest", "gptq")  # int8 weight values: each to its nearest step, or tfquant.rounding
NORM_FORMS = ("auto", "keras")  # normalizations through L2_NORMALIZATION where measured closer, or as Keras has them


@dataclass(frozen=True)
class Recipe(Record):
    """Everything that decides the bytes of a converted file, given the model and the data.

    Example:
        >>> Recipe(mode="int8").io
        <IOType.INT8: 'int8'>
        >>> Recipe.from_dict(Recipe(mode="dynamic").to_dict()) == Recipe(mode="dynamic")
        True

    Args:
        mode: a `Mode` or its name. Defaults to `"int8"`.
        io: the inputs' and outputs' dtype. Defaults to the mode's own: int8 for int8, int16
            for int16x8, float32 otherwise.
        calib_samples: how many samples the representative dataset draws, deterministically,
            from the calibration data. Defaults to `200`.
        per_channel: per-channel weight scales for conv and dense kernels. Defaults to `True`.
        denylist: names of ops to keep in float (selective quantization). Defaults to none.
        ranges: activation ranges (`tfquant.ranges`; int16x8 keeps min/max unless another, not
            `"mse"`, is named): `"percentile"` (per side, the 95th percentile over samples of
            each sample's extreme), `"minmax"`, `"mse"`
            (MSE-optimal clipping per tensor), `"average"` (the mean of each sample's extremes,
            as LiteRT Quantizer) or `"auto"` (percentile unless min/max or MSE keeps the outputs
            clearly closer to float on held-out calibration samples; a report's recipe records
            the one chosen). Defaults to `"auto"`.
        bias_correction: fold the mean shift of int8 weight rounding into the biases; with
            `ranges="auto"`, unless the outputs stay clearly closer to float without it on held-out
            calibration samples (a report's recipe records what was done). Defaults to `True`.
        split_joins: where a concatenation's inputs' ranges differ more than 16x, split the dense
            and conv ops that read it into one op per input and ADDs in the float file, so that no
            int8 scale is shared across them (`tfquant.joins`). Defaults to `True`.
        equalize: with per-tensor weight scales (`per_channel=False`), cross-layer equalization of
            the float file before calibration: each pair of conv/dense ops joined by no activation
            or a RELU gets its channels rescaled so that both ops' weight ranges per channel are
            equal (`tfquant.equalize`; the same function in float). Per-channel scales need no
            such help, and on EfficientNetB0 it cost 1.4 points there, so it is not applied
            with them. Defaults to `True`.
        float_io_norm: `"on"`: where one int8 scale cannot hold a float input's features
            (their ranges far apart, as a table's raw columns) and the ops reading it normalize
            each feature (a Normalization layer), the int8 file takes that input as float32 and
            runs the normalization in float before its int8 graph; where dense layers read the
            raw features, a standardization is put before them first, its inverse folded into
            their weights (`tfquant.float_io`); outputs likewise. `"off"`: every input and output
            takes `io`. `"auto"`: what the convert options resolve it to (`ConvertSpec.recipe`): on,
            unless they pin `io` to an integer type (a report's recipe records which); a recipe
            built with "auto" elsewhere (training commands, callbacks) leaves it off. Defaults to
            `"auto"`.
        weight_scales: int8 weight scales per channel: `"max"` (the quantizer's own, `max|w| / 127`)
            or `"mse"` (the clipped scale of least squared rounding-plus-clipping error per channel,
            `tfquant.weights`). Not the default: at 8 bits it moved the zoo CNNs' top-1
            agreement with float both ways, by up to 2.2 points (EfficientNetB0 88.9 to 91.1 % on
            one trained model, 89.1 to 86.9 % on another), with no consistent gain. Defaults to `"max"`.
        weight_rounding: int8 weight values: `"nearest"` (each weight to its nearest step) or `"gptq"`
            (rounded column by column against the op's input moments on the calibration samples, so
            that the op's output error is least, `tfquant.rounding`), for int8 and int16x8. Ranges
            and bias correction are chosen as for nearest rounding. Defaults to `"nearest"`.
        norm_form: for int8, `"auto"`: the model's LayerNormalizations and RMSNormalizations over the
            last axis are traced both as Keras computes them and through L2_NORMALIZATION (the same
            function), and the file is made with the form that held-out calibration samples show
            clearly closer to float (`prepare.export_for_int8`); `"keras"`: as Keras computes them. A
            LayerNormalization whose sums cancel is centered either way. Defaults to `"auto"`.
        quantizer: who quantizes the float file: `"converter"` (TFLiteConverter's MLIR quantizer,
            from TFLite's calibrator) or `"litert"` (LiteRT Quantizer, `ai-edge-quantizer`, int8
            only, with its own min/max calibration on the same samples). Defaults to `"converter"`.
    """

    mode: Mode = Mode.INT8
    io: Optional[IOType] = None
    calib_samples: int = 200
    per_channel: bool = True
    denylist: tuple[str, ...] = ()
    ranges: str = "auto"
    bias_correction: bool = True
    quantizer: str = "converter"
    split_joins: bool = True
    equalize: bool = True
    float_io_norm: str = "auto"
    weight_scales: str = "max"
    weight_rounding: str = "nearest"
    norm_form: str = "auto"
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        mode = parse_enum(Mode, self.mode, "mode")
        object.__setattr__(self, "mode", mode)
        allowed = MODE_IO[mode]
        io = allowed[0] if self.io is None else parse_enum(IOType, self.io, "io")
        if io not in allowed:
            raise RecipeError(
                f"{called('io')} {io.value} does not go with {called('mode')} {mode.value}; expected one of: "
                + ", ".join(a.value for a in allowed)
            )
        object.__setattr__(self, "io", io)
        if isinstance(self.calib_samples, bool) or not isinstance(self.calib_samples, int) or self.calib_samples < 1:
            raise RecipeError(f"{called('calib_samples')}: expected a whole number at least 1, found {self.calib_samples!r}")
        object.__setattr__(self, "denylist", tuple(self.denylist))
        for name, choices in (("ranges", RANGE_METHODS), ("weight_scales", WEIGHT_SCALES),
                              ("float_io_norm", FLOAT_IO_NORM),
                              ("weight_rounding", WEIGHT_ROUNDINGS), ("norm_form", NORM_FORMS)):
            if getattr(self, name) not in choices:
                raise RecipeError(f"{called(name)}: unknown value {getattr(self, name)!r}; expected one of: "
                                  f"{', '.join(choices)}")
        for flag in ("bias_correction", "split_joins", "equalize"):
            if not isinstance(getattr(self, flag), bool):
                raise RecipeError(f"{called(flag)}: expected true or false, found {getattr(self, flag)!r}")
        if self.denylist and mode is not Mode.INT8:
            raise RecipeError(f"{called('denylist')}: keeping ops in float is an int8 option, found {called('mode')} {mode.value}")
        if self.ranges == "mse" and mode is Mode.INT16X8:  # tfquant.ranges weighs clipping against 255 steps
            raise RecipeError(f"{called('ranges')} mse weighs clipping against int8's 255 steps; at {called('mode')} "
                              "int16x8 expected auto, minmax, percentile or average, found mse")
        if self.quantizer not in QUANTIZERS:
            raise RecipeError(f"{called('quantizer')}: unknown value {self.quantizer!r}; expected one of: {', '.join(QUANTIZERS)}")
        if self.quantizer == "litert":
            if mode is not Mode.INT8 or io not in (IOType.INT8, IOType.FLOAT32) or self.denylist:
                raise RecipeError(f"{called('quantizer')} litert: expected {called('mode')} int8 with {called('io')} int8 "
                                  f"or float32 and no {called('denylist')}, found {called('mode')} {mode.value}, "
                                  f"{called('io')} {io.value}"
                                  + (f", denylist of {len(self.denylist)} op(s)" if self.denylist else ""))
            # LiteRT Quantizer chooses its own min/max ranges, does no bias correction and gets the export as it is.
            object.__setattr__(self, "ranges", "minmax")
            object.__setattr__(self, "bias_correction", False)
            object.__setattr__(self, "split_joins", False)
            object.__setattr__(self, "equalize", False)
            object.__setattr__(self, "float_io_norm", "off")
            object.__setattr__(self, "weight_scales", "max")
            object.__setattr__(self, "weight_rounding", "nearest")
        if self.schema_version != SCHEMA_VERSION:
            raise RecipeError(
                f"recipe schema_version: expected {SCHEMA_VERSION}, found {self.schema_version!r}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recipe":
        """A recipe from JSON; older schema versions are migrated to replay as they did."""
        if isinstance(data, dict):
            data = migrate(data, "recipe", (f.name for f in dataclasses.fields(cls)))
        return super().from_dict(data)

    @property
    def needs_calibration(self) -> bool:
        return self.mode in (Mode.INT8, Mode.INT16X8)

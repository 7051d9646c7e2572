"""The first stage of every pipeline: load the model, check every data source against it, export the float file.

Everything a user can get wrong is checked here, before any quantization or training: the model
file, the data's names, shapes and dtypes, the options. Then the model is exported once to the
float `.tflite` file that calibration, every quantized candidate and the float reference start
from (`tfquant.export`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from . import console
from .data import Dataset, ImageOptions, load_data
from .errors import ModelLoadError, RecipeError, TfquantError, called, one_line, problem
from .export import Exported, export
from .models import LoadedModel, load_model
from .types import Mode, Recipe

log = logging.getLogger("tfquant")


def export_for_int8(loaded: LoadedModel, calibration: Dataset, *, shapes: Optional[dict[str, tuple]] = None,
                    keep_weights: bool = False, per_channel: bool = True, norm_form: str = "auto",
                    source: str = "<model>") -> Exported:
    """The float file int8 starts from: as `export` makes it, or traced again where int8 would lose
    resolution in a layer Keras computes one way and could compute another (the same function):

    - LSTM cells whose SPLIT would share one int8 scale across gates of mismatched ranges get their gates
      apart (`tfquant.gates`), read from the calibrated float file;
    - LayerNormalizations whose sums cancel there (`tracing.cancelling_norms`) are given their centered
      input, over the last axis through L2_NORMALIZATION;
    - the other normalizations over the last axis (`tracing.unit_norms`) are computed through
      L2_NORMALIZATION too where, each file calibrated on one half of the calibration samples and judged
      on the other, that keeps the outputs clearly closer to float (`convert.clearly_better`, by their
      relative RMSE: few top-1 classes change on calibration samples): rows whose variances span decades
      lose their precision in Keras's form, wide layers in the L2 form (with `norm_form` "auto"; "keras"
      leaves them as Keras computes them).

    Where none applies, the calibration is handed on, not run again."""
    from .convert import calibrate, clearly_better, folded
    from .gates import GATE_RATIO, gate_ratio
    from .tracing import cancelling_norms, fused_lstm_cells, layer_norms, unit_norms

    exported = export(loaded, shapes=shapes, keep_weights=keep_weights)
    traced = loaded.keras_model is not None and exported.function is not None
    cells = fused_lstm_cells(loaded.keras_model) if traced else []
    norms = layer_norms(loaded.keras_model) if traced else []
    units = unit_norms(loaded.keras_model) if traced and norm_form == "auto" else []
    if not cells and not norms and not units:
        return exported
    started = time.perf_counter()
    calibrated = calibrate(exported.tflite, calibration, source=source)
    ratio = gate_ratio(calibrated, [cell.name for cell in cells]) if cells else 1.0
    cancelling = cancelling_norms(calibrated, norms, numbered=loaded.flavor == "keras3") if norms else {}
    rest = frozenset(units) - set(cancelling)
    chosen, decided = exported, []
    if ratio > GATE_RATIO or cancelling:
        chosen = export(loaded, shapes=shapes, keep_weights=keep_weights, split_gates=ratio > GATE_RATIO,
                        norms=frozenset(cancelling))
    if ratio > GATE_RATIO:
        decided.append(f"LSTM gates computed apart (two FULLY_CONNECTED ops per gate and step): computed together, "
                       f"their narrowest gate spanned 1/{ratio:.1f} of the int8 range they shared, on average over "
                       "the steps")
    if cancelling:
        worst = max(cancelling, key=cancelling.get)
        decided.append(f"{len(cancelling)} LayerNormalization(s) computed on their input minus its mean (over the "
                       "last axis through L2_NORMALIZATION), so that int8 does not subtract two large products "
                       f"({worst}: a sum {cancelling[worst]:.1f}× narrower than its input)")
    unit = None
    if rest:
        try:  # a candidate: where it does not trace or convert, the file is made as Keras computes the layers
            unit = export(loaded, shapes=shapes, keep_weights=keep_weights, split_gates=ratio > GATE_RATIO,
                          norms=frozenset(cancelling) | rest)
        except (TfquantError, ValueError, TypeError) as exc:
            log.info("normalizations through L2 not tried: %s", one_line(exc, 160))
    if unit is not None:
        keep = lambda data, half: []  # noqa: E731 - no input or output kept float
        # Judged as they would be quantized: a normalization of looked-up rows is computed on the table.
        if clearly_better(calibration, per_channel, source, (folded(chosen.tflite, calibration, quiet=True)[0], keep),
                          (folded(unit.tflite, calibration, quiet=True)[0], keep), "normalizations through L2",
                          rmse_only=True, rough=True):
            chosen = unit
            decided.append(f"{len(rest)} normalization(s) computed through L2_NORMALIZATION (held-out calibration "
                           f"samples: clearly closer to float than as Keras computes them): {', '.join(sorted(rest))}")
    chosen.notes.extend(decided)
    measured = time.perf_counter() - started  # part of the export: it decided which one to make
    if chosen is exported:  # kept as it is: its calibration is handed on rather than run again
        return replace(exported, calibrated=(exported.tflite, calibration, calibrated),
                       seconds=exported.seconds + measured)
    chosen.seconds = exported.seconds + measured
    return chosen


@dataclass
class Prepared:
    """A loaded model with its validated data and its float file."""

    loaded: LoadedModel
    exported: Optional[Exported]
    calibration: Optional[Dataset]
    evaluation: Optional[Dataset]
    train: Optional[Dataset] = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return self.loaded.source


def check_budget(max_drop: Optional[float], eval_data: Any, *, fallback: str = "off") -> None:
    """`max_drop` is a fraction in [0, 1] and comes with data to measure the drop on, as does the ladder."""
    if max_drop is not None and (isinstance(max_drop, bool) or not isinstance(max_drop, (int, float))
                                 or not 0 <= max_drop <= 1):
        raise RecipeError(f"max_drop: expected a fraction between 0 and 1 (0.01 = one point), found {max_drop!r}")
    if max_drop is not None and eval_data is None:
        raise RecipeError(f"{called('max_drop')} needs {called('eval_data')}: the drop is measured on evaluation data")
    if fallback == "auto" and eval_data is None:
        raise RecipeError(f"{called('fallback')} auto needs {called('eval_data')}: the ladder measures every candidate on "
                          "evaluation data")


def refuse_quantization_aware(loaded: LoadedModel, what: str) -> None:
    """Refuse a quantization-aware model where a float one is needed (`what`: training it again, or
    calibrating it): its int8 file is the converter's reading of its fake-quant ranges."""
    if loaded.quantization_aware:
        raise ModelLoadError(problem(loaded.source, f"a float model for {what}",
                                     "a quantization-aware model (tfmot's fake-quant layers): tfquant convert makes "
                                     "its int8 file from the ranges they learned"))


def _fake_quant_recipe(loaded: LoadedModel, recipe: Recipe) -> None:
    """A quantization-aware model has one file, int8 by the converter from its fake-quant ranges: a recipe
    asking for another is refused as soon as the model is loaded, before any data is read."""
    if loaded.quantization_aware and (recipe.mode is not Mode.INT8 or recipe.quantizer != "converter"):
        found = f"--mode {recipe.mode.value}" if recipe.mode is not Mode.INT8 else f"--quantizer {recipe.quantizer}"
        raise RecipeError(problem(loaded.source, "--mode int8 with the converter's quantizer for a quantization-aware "
                                  "model (its fake-quant layers learned int8 ranges)", found))


def prepare(
    model: Any,
    *,
    recipe: Recipe,
    calibration_data: Any = None,
    eval_data: Any = None,
    train_data: Any = None,
    images: ImageOptions = ImageOptions(),
    safe_mode: bool = True,
    input_shapes: Optional[dict[str, tuple]] = None,
    export_model: bool = True,
) -> Prepared:
    """Load and validate everything, then export the float file (unless `export_model=False`).

    Calibration data defaults to the training data. Open dims of the model's inputs (a sequence
    length, an image size) are fixed from `input_shapes`, else from the data.
    """
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    with console.step(f"loading {model if isinstance(model, (str, Path)) else 'the model'}"):
        loaded = load_model(model, safe_mode=safe_mode)
    _fake_quant_recipe(loaded, recipe)
    unknown = sorted(set(input_shapes or {}) - {s.name for s in loaded.inputs})
    if unknown:
        raise RecipeError(f"input_shapes: unknown input(s) {', '.join(map(repr, unknown))}; the model's inputs are "
                          f"{', '.join(repr(s.name) for s in loaded.inputs)}")
    train = None
    if train_data is not None:
        train = load_data(train_data, loaded.inputs, outputs=loaded.outputs, labels="required", images=images,
                          name="training data")
    calibration = None
    if recipe.needs_calibration:
        if calibration_data is None and train is None:
            raise RecipeError(f"{called('mode')} {recipe.mode.value} needs {called('calibration_data')}")
        source = train if calibration_data is None else calibration_data
        calibration = load_data(source, loaded.inputs, labels="ignored", images=images, name="calibration data")
        calibration = calibration.calibration_subset(recipe.calib_samples)
    evaluation = None
    if eval_data is not None:
        evaluation = load_data(eval_data, loaded.inputs, outputs=loaded.outputs, images=images, name="eval data")
    seconds["load"] = time.perf_counter() - started
    exported = None
    if export_model:
        shapes = {}
        for data in (evaluation, train, calibration):
            if data is not None:
                shapes.update(data.sample_shapes())
        shapes.update(input_shapes or {})
        with console.step(f"exporting {loaded.source} to a float32 .tflite file"):
            if recipe.mode is Mode.INT8 and calibration is not None and not loaded.quantization_aware:
                exported = export_for_int8(loaded, calibration, shapes=shapes, keep_weights=loaded.keep_weights,
                                           per_channel=recipe.per_channel, norm_form=recipe.norm_form,
                                           source=loaded.source)
            else:
                exported = export(loaded, shapes=shapes, keep_weights=loaded.keep_weights)
        seconds["export"] = exported.seconds
        for note in exported.notes:
            log.info("export: %s", note)
    return Prepared(loaded, exported, calibration, evaluation, train, seconds)

"""Recipes and records round-trip and reject what they do not know."""

from __future__ import annotations

import pytest

from tfquant.errors import RecipeError
from tfquant.types import SCHEMA_VERSION, IOType, Mode, Recipe


def test_recipe_defaults_follow_the_mode():
    assert Recipe().io is IOType.INT8
    assert Recipe(mode="int16x8").io is IOType.INT16
    assert Recipe(mode="float16").io is IOType.FLOAT32


def test_recipe_round_trip():
    recipe = Recipe(mode=Mode.INT8, io="uint8", calib_samples=64, per_channel=False, denylist=("a", "b"))
    data = recipe.to_dict()
    assert data == {"mode": "int8", "io": "uint8", "calib_samples": 64, "per_channel": False,
                    "denylist": ["a", "b"], "ranges": "auto", "bias_correction": True, "quantizer": "converter", "split_joins": True,
                    "equalize": True, "float_io_norm": "auto", "weight_scales": "max", "weight_rounding": "nearest",
                    "norm_form": "auto", "schema_version": SCHEMA_VERSION}
    assert Recipe.from_dict(data) == recipe


def test_a_recipe_of_the_first_schema_replays_as_it_did():
    old = {"mode": "int8", "io": "int8", "calib_samples": 200, "per_channel": True, "denylist": [], "schema_version": 1}
    migrated = Recipe.from_dict(old)
    assert migrated.ranges == "minmax" and migrated.bias_correction is False
    assert migrated.split_joins is False and migrated.equalize is False and migrated.float_io_norm == "off"
    assert migrated.norm_form == "keras"  # v7 and before: normalizations traced as Keras computes them
    assert migrated.schema_version == SCHEMA_VERSION
    seventh = {key: value for key, value in Recipe().to_dict().items() if key != "norm_form"}
    assert Recipe.from_dict({**seventh, "schema_version": 7}).norm_form == "keras"


@pytest.mark.parametrize("data, message", [
    ({"mode": "int4"}, "mode: unknown value 'int4'; expected one of: int8, int16x8, dynamic, float16, float32"),
    ({"mode": "int16x8", "io": "uint8"}, "io uint8 does not go with mode int16x8; expected one of: int16, float32, int8"),
    ({"calib_samples": 0}, "calib_samples: expected a whole number at least 1, found 0"),
    ({"mode": "int16x8", "ranges": "mse"}, "ranges mse weighs clipping against int8's 255 steps; at mode int16x8 "
                                           "expected auto, minmax, percentile or average, found mse"),
    ({"schema_version": 9}, "recipe schema_version: expected 8 (or an older one: 1, 2, 3, 4, 5, 6, 7), found 9"),
    ({"bits": 4}, "Recipe: unknown key(s) bits"),
])
def test_recipe_rejects(data, message):
    with pytest.raises(RecipeError) as caught:
        Recipe.from_dict(data)
    assert message in str(caught.value)

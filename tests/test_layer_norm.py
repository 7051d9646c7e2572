"""A LayerNormalization of features far from 0: traced on its input minus its mean, through L2_NORMALIZATION
(`tracing.centered_layer_norms`)."""

from __future__ import annotations

import numpy as np
import pytest

import tfquant


def raw_columns(offset: float) -> np.ndarray:
    """Eight columns in [offset, offset + 100]: each row has its own spread, all of it far from 0 next to it."""
    rng = np.random.default_rng(0)
    return (offset + rng.uniform(0, 60, (600, 8)) + np.linspace(0, 40, 8)).astype(np.float32)


@pytest.mark.parametrize("version", [3, 2])
def test_a_layer_normalization_of_raw_columns_keeps_its_output(version):
    """Keras computes x·s + (beta − mean·s): at 500 ± 50 the two products are ten times the result, and int8
    sized for them left the output 22 % (Keras 3) and 10 % (Keras 2) of its spread off float; at 0–100,
    5.9 %. The calibrated float file shows the sums cancelling, and the layer is traced again on its centered
    input, through L2_NORMALIZATION: 3.9 % and 1.4 %."""
    from tfquant._keras import keras, keras3

    k = keras3() if version == 3 else keras
    k.utils.set_random_seed(0)
    inputs = k.Input((8,), name="x")
    model = k.Model(inputs, k.layers.Dense(4, name="y")(k.layers.LayerNormalization()(inputs)))
    errors = []
    for offset in (0.0, 500.0):
        x = raw_columns(offset)
        result = tfquant.quantize(model, {"x": x[:300]}, eval_data={"x": x[300:]}, bench_runs=1, diagnose=False)
        assert result.info.fully_integer
        errors.append(result.report.outputs[0].quantized.rel_rmse)
    assert errors[0] < 0.03 and errors[1] < 0.05, errors
    (note,) = [note for note in result.report.to_dict()["export"]["notes"] if "LayerNormalization" in note]
    assert note.startswith("1 LayerNormalization(s) computed on their input minus its mean"), note
    # Columns centered already: the sums add beta to the scaled input and cancel nothing; the layer is left as
    # Keras computes it (a SUB would be one more rounding).
    centered = np.random.default_rng(1).standard_normal((300, 8)).astype(np.float32)
    result = tfquant.quantize(model, {"x": centered}, bench_runs=1, diagnose=False)
    assert not [note for note in result.report.to_dict()["export"]["notes"] if "LayerNormalization" in note]


@pytest.mark.parametrize("version", [3, 2])
def test_rows_whose_features_are_all_equal_do_not_size_the_other_rows_scales(version):
    """A fifth of the rows hold one value in every column (a sensor at rest, an empty record): their
    variance is 0 and 1/sqrt(var + eps) is 1/sqrt(eps). Computed as Keras writes it, that factor's one int8
    scale was sized for them, and the other rows' factors (1/σ, about 0.05) kept a level or two. Through
    L2_NORMALIZATION, which sums the squares in int32, the rows keep their own precision."""
    from tfquant._keras import keras, keras3

    from tfquant.inspect import inspect

    k = keras3() if version == 3 else keras
    k.utils.set_random_seed(0)
    inputs = k.Input((8,), name="x")
    model = k.Model(inputs, k.layers.Dense(4, name="y")(k.layers.LayerNormalization()(inputs)))
    x = raw_columns(500.0)
    x[::5] = 520.0  # every fifth row constant
    result = tfquant.quantize(model, {"x": x[:300]}, eval_data={"x": x[300:]}, bench_runs=1, diagnose=False)
    assert result.info.fully_integer and "L2_NORMALIZATION" in {op.name for op in inspect(result.tflite).ops}
    assert result.report.outputs[0].quantized.rel_rmse < 0.05, result.report.outputs[0].quantized.rel_rmse

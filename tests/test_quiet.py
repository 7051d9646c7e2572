"""Samples too quiet for an input's one int8 scale (audio at every loudness): named where they carry int8's changes."""

from __future__ import annotations

import re

import numpy as np
import pytest

import tfquant
from tfquant.errors import AccuracyBudgetError
from tfquant.lint import QUIET_STEPS, quiet_samples

GAINS = (1e-3, 1.0)  # each sample's loudness, log-uniform: 60 dB between the quietest and the loudest


def louder(x: np.ndarray, seed: int) -> np.ndarray:
    """The digits, each at its own random gain, as recordings come at any loudness."""
    gains = np.exp(np.random.default_rng(seed).uniform(*np.log(GAINS), len(x))).astype(np.float32)
    return x * gains[:, None, None, None]


@pytest.fixture(scope="module")
def loudness_model(digits):
    """A CNN without biases, whose ReLUs make its classes the same at every gain: float classifies the
    quiet digits as well as the loud ones."""
    from tfquant._keras import keras3

    k = keras3()
    k.utils.set_random_seed(0)
    model = k.Sequential([
        k.Input((8, 8, 1), name="x"),
        k.layers.Conv2D(16, 3, activation="relu", use_bias=False),
        k.layers.Conv2D(32, 3, activation="relu", use_bias=False),
        k.layers.Flatten(),
        k.layers.Dense(10, use_bias=False, name="logits"),
    ])
    model.compile("adam", k.losses.SparseCategoricalCrossentropy(from_logits=True))
    peak = digits["x"] / digits["x"].reshape(len(digits["x"]), -1).max(axis=1)[:, None, None, None]
    model.fit(peak, digits["y"], epochs=8, batch_size=32, verbose=0)
    return model


def test_quiet_samples_are_named_with_what_they_cost_and_first_in_a_missed_budget(loudness_model, digits):
    calib, test = louder(digits["x"], 1)[:300], louder(digits["x_test"], 2)
    result = tfquant.quantize(loudness_model, calib, eval_data=(test, digits["y_test"]), bench_runs=1)
    (output,) = result.report.outputs
    assert output.float.accuracy > 0.9
    assert output.quantized.agreement < 0.93, output.quantized.agreement  # the quiet digits are rounded away
    (port,) = [t for t in result.report.io if t.kind == "input"]
    reach = np.abs(test.reshape(len(test), -1)).max(axis=1) / port.scale
    share = 100 * np.mean(reach < QUIET_STEPS)
    changed = round((1 - output.quantized.agreement) * len(test))
    (note,) = [w for w in result.report.warnings if w.startswith("input 'x'")]
    found = re.match(r"input 'x': ([\d.]+) % of the evaluation samples reach fewer than 4 of its int8 steps "
                     r"\(([\d.e-]+)\) from 0 \(the quietest reaches [\d.e-]+\), where the loudest calibration samples "
                     r"set the scale, and they carry (\d+) of the (\d+) decisions int8 changed", note)
    assert found, note
    assert float(found[1]) == pytest.approx(share, abs=0.05) and float(found[2]) == pytest.approx(port.scale, rel=1e-3)
    lost, total = int(found[3]), int(found[4])
    assert total == changed and lost >= 0.8 * total, (lost, total)
    assert "log-magnitude spectrogram" in note and "int16x8" in note
    ties = [w for w in result.report.warnings if w.startswith("top-1 agreement")]
    assert len(ties) == 1 and "(the quiet inputs above)" in ties[0], ties

    with pytest.raises(AccuracyBudgetError) as missed:
        tfquant.quantize(loudness_model, calib, eval_data=(test, digits["y_test"]), bench_runs=1, max_drop=0.01)
    assert "(max_drop)" in str(missed.value) and f"; {note}" in str(missed.value)


def test_the_fix_it_names_works_and_leaves_it_silent(loudness_model, digits):
    """Each sample brought to its own peak, as the warning says, before the same model (whose classes
    do not depend on gain): int8 keeps float's classes and says nothing of quiet samples."""
    def peak(x):
        return x / np.abs(x.reshape(len(x), -1)).max(axis=1)[:, None, None, None]

    calib, test = peak(louder(digits["x"], 1)[:300]), peak(louder(digits["x_test"], 2))
    result = tfquant.quantize(loudness_model, calib, eval_data=(test, digits["y_test"]), bench_runs=1)
    (output,) = result.report.outputs
    assert output.quantized.agreement >= 0.97, output.quantized.agreement
    assert not [w for w in result.report.warnings if "quiet" in w], result.report.warnings


def test_quiet_samples_are_not_named_unless_they_carry_the_changes():
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 1, (100, 16)).astype(np.float32)
    values[:30] *= 0.01  # 30 quiet samples: under 4 steps of 1/255 from 0
    scale = 1 / 255
    changed = np.zeros(100)
    changed[[0, 1, 2, 50, 60, 70, 80]] = 1  # 3 of 7 among the quiet: under half
    assert quiet_samples("x", values, scale, changed) is None
    changed[[3, 4, 5]] = 1  # 6 of 10 on 30 % of the samples, at 3.5 times the others' rate
    assert "30 % of the evaluation samples" in quiet_samples("x", values, scale, changed)
    assert "carry 6 of the 10 decisions" in quiet_samples("x", values, scale, changed)
    changed[50:] = 1  # the loud samples change as often: not the quiet ones' doing
    assert quiet_samples("x", values, scale, changed) is None
    assert quiet_samples("x", (values * 255).astype(np.int32), scale, changed) is None  # integer inputs: not rounded


def test_without_evaluation_data_the_calibration_samples_say_it(loudness_model, digits):
    """No evaluation data: the two files' decisions are compared on the calibration samples, and only
    because some of them are quiet (a look at the inputs first; a model whose samples are not is not run
    again)."""
    calib = louder(digits["x"], 1)[:200]
    result = tfquant.quantize(loudness_model, calib, bench_runs=1)
    (note,) = [w for w in result.report.warnings if w.startswith("input 'x'")]
    (port,) = [t for t in result.report.io if t.kind == "input"]
    share = 100 * np.mean(np.abs(calib.reshape(len(calib), -1)).max(axis=1) / port.scale < QUIET_STEPS)
    assert note.startswith(f"input 'x': {share:.3g} % of the calibration samples reach fewer than 4 of its int8 steps")
    lost, total = map(int, re.search(r"they carry (\d+) of the (\d+) decisions int8 changed", note).groups())
    assert total >= 10 and lost >= 0.8 * total, (lost, total)

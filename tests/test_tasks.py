"""Each output's task, its labels and its metrics, on known values."""

from __future__ import annotations

import numpy as np
import pytest

from tfquant import tasks
from tfquant.errors import DataError, RecipeError
from tfquant.types import Budget

RNG = np.random.default_rng(0)


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_tasks_are_detected_from_the_float_outputs():
    logits = RNG.standard_normal((50, 4))
    unit = logits / np.linalg.norm(logits, axis=1, keepdims=True)
    assert tasks.detect(softmax(logits)) == "classification"
    assert tasks.detect(unit) == "embedding"
    assert tasks.detect(RNG.standard_normal((50, 1))) == "regression"
    assert tasks.detect(logits) == "regression"  # raw vectors without labels
    assert tasks.detect(logits, RNG.integers(0, 4, 50)) == "classification"  # logits with class labels
    sigmoid = 1 / (1 + np.exp(-logits[:, :1]))
    assert tasks.detect(sigmoid, RNG.integers(0, 2, 50)) == "classification"
    assert tasks.parse_tasks(["score=regression"]) == {"score": "regression"}
    with pytest.raises(RecipeError, match="unknown task 'ranking'; expected one of: classification, regression, embedding"):
        tasks.parse_tasks({"score": "ranking"})


def test_classification_metrics_and_budget():
    probs = softmax(RNG.standard_normal((100, 10)))
    labels = probs.argmax(axis=1)
    labels[:10] = (labels[:10] + 1) % 10  # float accuracy 0.90
    quantized = probs.copy()
    quantized[10:15] = np.roll(quantized[10:15], 1, axis=1)  # five more wrong, and five changes of top-1
    f = tasks.measure("classification", "probs", probs, labels=labels)
    q = tasks.measure("classification", "probs", quantized, labels=labels, reference=probs)
    assert f.accuracy == pytest.approx(0.90) and q.accuracy == pytest.approx(0.85) and q.agreement == pytest.approx(0.95)
    assert tasks.violations(f, q, Budget(max_drop=0.06)) == []
    assert tasks.violations(f, q, Budget(max_drop=0.01)) == [
        "output 'probs': expected an accuracy drop of at most 0.0100 (max_drop), found 0.0500 (float 0.9000, quantized "
        "0.8500)"]
    one_hot = np.eye(10)[labels]
    assert np.array_equal(tasks.check_labels("classification", "probs", probs, one_hot, "d.npz"), labels)
    with pytest.raises(DataError, match=r"d.npz: expected labels in 0..9 for output 'probs' \(10 classes\), found labels 0..12"):
        tasks.check_labels("classification", "probs", probs, np.arange(100) % 13, "d.npz")


def test_a_multi_label_output_is_judged_per_decision():
    probs = 1 / (1 + np.exp(-3 * RNG.standard_normal((100, 4))))  # four independent sigmoid units
    labels = (probs > 0.5).astype(np.float32)
    labels[:10, 0] = 1 - labels[:10, 0]  # 10 of 400 decisions wrong in float
    assert tasks.detect(probs) == "regression"  # no labels: nothing says these are decisions
    assert tasks.detect(probs, labels) == "classification"
    assert tasks.detect(softmax(RNG.standard_normal((100, 4))), np.eye(4)[RNG.integers(0, 4, 100)]) == "classification"
    checked = tasks.check_labels("classification", "tags", probs, labels, "d.npz")
    assert checked.shape == (100, 4)  # kept per unit, not reduced to a class id as one-hot labels are
    quantized = probs.copy()
    quantized[10:16, 1] = 1 - quantized[10:16, 1]  # six more decisions flip
    f = tasks.measure("classification", "tags", probs, labels=checked)
    q = tasks.measure("classification", "tags", quantized, labels=checked, reference=probs)
    assert f.accuracy == pytest.approx(390 / 400) and q.agreement == pytest.approx(394 / 400)
    assert q.accuracy == pytest.approx(384 / 400)
    assert tasks.violations(f, q, Budget(max_drop=0.01)) == [
        "output 'tags': expected an accuracy drop of at most 0.0100 (max_drop), found 0.0150 (float 0.9750, quantized "
        "0.9600)"]


def test_one_sigmoid_unit_per_pixel_is_judged_on_every_pixel():
    """A binary segmentation mask: one sigmoid unit per pixel, shape (N, H, W, 1), with 0/1 labels (N, H, W).
    Its labels were refused ("expected labels of shape (N,)"), and judged as a classifier without them only
    the first pixel of each sample was compared."""
    rng = np.random.default_rng(1)
    probs = 1 / (1 + np.exp(-3 * rng.standard_normal((50, 4, 4, 1))))
    labels = (probs[..., 0] > 0.5).astype(np.float32)
    labels[:5, 2, 3] = 1 - labels[:5, 2, 3]  # 5 of 800 pixels wrong in float, none of them a first pixel
    assert tasks.detect(probs, labels) == "classification" and tasks.detect(probs) == "regression"
    checked = tasks.check_labels("classification", "mask", probs, labels[..., None], "d.npz")
    assert checked.shape == (50, 4, 4)
    quantized = probs.copy()
    quantized[10:18, 1, 1, 0] = 1 - quantized[10:18, 1, 1, 0]  # eight more pixels flip
    f = tasks.measure("classification", "mask", probs, labels=checked)
    q = tasks.measure("classification", "mask", quantized, labels=checked, reference=probs)
    assert (f.accuracy, q.decisions) == (pytest.approx(795 / 800), 16)
    assert q.agreement == pytest.approx(792 / 800) and q.accuracy == pytest.approx(787 / 800)
    one_unit = probs[:, 0, 0]  # (N, 1): one decision per sample, as before
    assert tasks.check_labels("classification", "p", one_unit, labels[:, 0, 0], "d.npz").shape == (50,)
    assert tasks.measure("classification", "p", one_unit, labels=labels[:, 0, 0]).decisions is None


def test_one_logit_with_0_1_labels_is_a_binary_classifier():
    """`Dense(1)` fitted with `BinaryCrossentropy(from_logits=True)` (TensorFlow's text classification
    tutorial): its sign is the decision. It had been judged as a regression of its 0/1 labels."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 200).astype(np.float32)
    logits = np.where(labels == 1, 1.0, -1.0) * np.abs(rng.normal(2.0, 1.0, 200)) + rng.normal(0, 0.3, 200)
    logits = logits.astype(np.float32)[:, None]
    assert tasks.detect(logits, labels) == "classification" and tasks.detect(logits) == "regression"
    fitted = (labels + rng.normal(0, 0.2, 200)).astype(np.float32)[:, None]  # a regression of 0/1 targets
    assert tasks.detect(fitted, labels) == "regression"
    quantized = logits.copy()
    flipped = np.flatnonzero(np.abs(logits[:, 0]) < 0.6)[:3]
    quantized[flipped] = -quantized[flipped]
    checked = tasks.check_labels("classification", "positive", logits, labels, "d.npz")
    f = tasks.measure("classification", "positive", logits, labels=checked)
    q = tasks.measure("classification", "positive", quantized, labels=checked, reference=logits)
    assert f.accuracy == pytest.approx(float(np.mean((logits[:, 0] > 0) == labels)))
    assert q.agreement == pytest.approx(1 - len(flipped) / 200) and len(flipped) == 3


def test_class_ids_a_model_picks_itself_are_compared_as_they_are():
    """An argmax in the graph: an int32 output of one class id per sample (or per token)."""
    ids = RNG.integers(0, 10, 100).astype(np.int32)
    assert tasks.detect(ids) == "classification" and tasks.detect(ids[:, None]) == "classification"
    labels = ids.astype(np.float32)[:, None]  # as a label file may hold them
    labels[:8] = (labels[:8] + 1) % 10
    checked = tasks.check_labels("classification", "label", ids, labels, "d.npz")
    assert checked.shape == (100,) and checked.dtype == np.int64
    quantized = ids.copy()
    quantized[8:11] = (quantized[8:11] + 1) % 10
    f = tasks.measure("classification", "label", ids, labels=checked)
    q = tasks.measure("classification", "label", quantized, labels=checked, reference=ids)
    assert (f.accuracy, q.accuracy, q.agreement, q.decisions) == (0.92, 0.89, 0.97, None)
    tokens = RNG.integers(0, 5, (20, 6)).astype(np.int64)  # a tag per token
    assert tasks.measure("classification", "tags", tokens, reference=np.where(tokens == 4, 0, tokens)).decisions == 6
    with pytest.raises(DataError, match=r"d.npz: expected one whole-number class id per value of output 'label', "
                                        r"shape \(100,\), found labels of shape \(100, 2\)"):
        tasks.check_labels("classification", "label", ids, np.zeros((100, 2)), "d.npz")


def test_regression_is_judged_relative_to_the_float_spread():
    reference = RNG.standard_normal((200, 1)) * 3.0
    quantized = reference + 0.03  # 1 % of the standard deviation
    targets = reference + RNG.standard_normal((200, 1)) * 0.3
    m = tasks.measure("regression", "price", quantized, labels=targets, reference=reference)
    assert m.rel_rmse == pytest.approx(0.03 / np.std(reference), rel=1e-6)
    assert m.max_abs_error == pytest.approx(0.03)
    assert 0.98 < m.r2 < 1.0
    off = tasks.measure("regression", "price", reference * 1.3, reference=reference)
    assert tasks.violations(m, off, Budget())[0].startswith(
        "output 'price': expected an RMSE of at most 0.050 of the float output's standard deviation (max_rel_rmse), "
        "found 0.3")


def test_a_retrained_file_is_held_to_the_labels():
    """Fine-tuning (QAT, pruning, clustering) moves the function: 7.5 % of σ from float, yet closer to the
    labels, is within budget; a file whose label error grows past what 5 % of σ off float would add in
    quadrature is not. Without labels, the float outputs judge as for PTQ."""
    reference = RNG.standard_normal((400, 1)) * 2.0
    targets = reference + RNG.standard_normal((400, 1)) * 0.5
    f = tasks.measure("regression", "price", reference, labels=targets)
    closer = tasks.measure("regression", "price", 0.7 * reference + 0.3 * targets, labels=targets, reference=reference)
    assert closer.rel_rmse > 0.07 and closer.label_rmse < f.label_rmse
    assert tasks.violations(f, closer, Budget())[0].startswith("output 'price': expected an RMSE of at most 0.050")
    assert tasks.violations(f, closer, Budget(), retrained=True) == []
    worse = tasks.measure("regression", "price", reference + RNG.standard_normal((400, 1)) * 0.2, labels=targets,
                          reference=reference)
    allowed = np.hypot(f.label_rmse, 0.05 * f.std)
    assert worse.label_rmse > allowed
    assert tasks.violations(f, worse, Budget(), retrained=True) == [
        f"output 'price': expected an RMSE against the labels of at most {allowed:.4g} (the float model's "
        f"{f.label_rmse:.4g} and 0.050 of its output's standard deviation (max_rel_rmse) in quadrature: the weights "
        f"were trained again, so the labels judge), found {worse.label_rmse:.4g}"]
    unlabelled = tasks.measure("regression", "price", 0.7 * reference + 0.3 * targets, reference=reference)
    assert tasks.violations(tasks.measure("regression", "price", reference), unlabelled, Budget(),
                            retrained=True)[0].startswith("output 'price': expected an RMSE of at most 0.050")


def test_a_retrained_embedding_is_held_to_retrieval_only_where_max_drop_budgets_it():
    centers = np.eye(4)
    labels = np.repeat(np.arange(4), 25)
    vectors = centers[labels] + RNG.standard_normal((100, 4)) * 0.1
    reference = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    f = tasks.measure("embedding", "emb", reference, labels=labels)
    scrambled = tasks.measure("embedding", "emb", np.roll(reference, 10, axis=0), labels=labels, reference=reference)
    assert tasks.violations(f, scrambled, Budget(), retrained=True)[0].startswith(
        "output 'emb': expected a mean cosine to the float embedding of at least 0.990")
    (lost,) = tasks.violations(f, scrambled, Budget(max_drop=0.01), retrained=True)
    assert lost.startswith("output 'emb': expected a retrieval-accuracy drop of at most 0.0100")


def test_embedding_cosine_and_retrieval():
    centers = np.eye(4)
    labels = np.repeat(np.arange(4), 25)
    vectors = centers[labels] + RNG.standard_normal((100, 4)) * 0.1
    reference = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    noisy = reference + RNG.standard_normal(reference.shape) * 0.01
    m = tasks.measure("embedding", "emb", noisy, labels=labels, reference=reference)
    assert 0.99 < m.mean_cosine <= 1.0 and m.min_cosine <= m.mean_cosine
    assert m.retrieval == 1.0  # every nearest neighbour is of its own cluster
    scrambled = tasks.measure("embedding", "emb", np.roll(reference, 10, axis=0), labels=labels, reference=reference)
    f = tasks.measure("embedding", "emb", reference, labels=labels)
    assert len(tasks.violations(f, scrambled, Budget(max_drop=0.01))) == 2

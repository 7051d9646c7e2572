"""Each output judged by its own metric: classification, regression or embedding.

A task is chosen per output from what the float file outputs (rows of probabilities are a
classifier, rows of unit length an embedding, anything else a regression), with integer labels
turning logits into a classifier; `tasks={"name": "regression"}` (`--task name=regression`)
overrides the choice. Every task is registered with a small decorator, and each one measures:

- **classification**: top-1 (and top-5) accuracy against labels; for the quantized file, top-1
  agreement with the float file; its budget is the accuracy drop (or, without labels, the share
  of samples whose top-1 class changed). A multi-label output (independent sigmoid units, with
  0/1 labels of the output's own shape) is judged per decision: accuracy and agreement are the
  share of (sample, label) decisions at 0.5 that match. So is one sigmoid unit per pixel or token (a
  binary segmentation mask, shape (N, H, W, 1), with labels (N, H, W)). One unit outside [0, 1] with 0/1
  labels is a binary classifier's logit when its means over the two labels lie more than 1.5 apart
  (a fit of 0/1 targets keeps them within 1): its decision is at 0. An integer output holds class
  ids the model picks itself (an argmax in the graph): they are compared as they are.
- **regression**: RMSE of the quantized output against the float output, relative to the float
  output's standard deviation, and the max abs error; R² against labels when given.
- **embedding**: mean and min cosine between quantized and float embeddings; nearest-neighbour
  retrieval accuracy against labels (leave-one-out) when given.

The same functions serve the report, `tfquant eval`, the ladder's budget and the callbacks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np

from .errors import DataError, RecipeError, called, problem
from .types import Budget, OutputMetrics

TASKS = ("classification", "regression", "embedding")
_MEASURES: dict[str, Callable[..., OutputMetrics]] = {}
_CHECKS: dict[str, Callable[..., list[str]]] = {}
RETRIEVAL_SAMPLES = 2000


def _task(name: str):
    def wrap(func):
        _MEASURES[name] = func
        return func

    return wrap


def _budget(name: str):
    def wrap(func):
        _CHECKS[name] = func
        return func

    return wrap


def parse_tasks(values) -> dict[str, str]:
    """`["probs=classification", ...]` or a dict -> {output name: task}, with the choices checked."""
    if values is None:
        return {}
    pairs = values.items() if isinstance(values, dict) else (str(v).split("=", 1) for v in values)
    found = {}
    for pair in pairs:
        if len(pair) != 2 or not pair[0]:
            raise RecipeError(f"task: expected OUTPUT=TASK such as probs=classification, found {'='.join(pair)!r}")
        name, task = pair
        if task not in TASKS:
            raise RecipeError(f"task for output {name!r}: unknown task {task!r}; expected one of: {', '.join(TASKS)}")
        found[name] = task
    return found


def detect(values: np.ndarray, labels: Optional[np.ndarray] = None) -> str:
    """The task of one output, from the float file's values on the evaluation data (and its labels)."""
    if class_ids(values):
        return "classification"
    if values.ndim < 2 or values.shape[-1] == 1:
        if labels is not None and _whole(labels) and set(np.unique(labels)) <= {0, 1} and \
                (_probabilities(values) or _one_logit(values, labels)):
            return "classification"  # one sigmoid unit or logit (per sample, or per pixel or token)
        return "regression"
    rows = values.reshape(-1, values.shape[-1]).astype(np.float64)
    if rows.min() >= -1e-6 and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3):
        return "classification"
    norms = np.linalg.norm(rows, axis=1)
    if np.allclose(norms, 1.0, atol=2e-3):
        return "embedding"
    if labels is not None and _whole(labels) and labels.shape == values.shape[:-1] and \
            labels.min() >= 0 and labels.max() < values.shape[-1]:
        return "classification"  # logits
    if labels is not None and multi_label(values, labels):
        return "classification"
    return "regression"


def _probabilities(values: np.ndarray) -> bool:
    return bool(values.min() >= 0 and values.max() <= 1)


LOGIT_SEPARATION = 1.5  # class means this far apart are a logit's: a fit of 0/1 targets keeps them within 1


def _one_logit(values: np.ndarray, labels: np.ndarray) -> bool:
    """One unit outside [0, 1] whose means over the 0 and the 1 labels lie further apart than 0/1 targets do:
    a binary classifier's logit (`Dense(1)` fitted with `from_logits=True`), not a regression of 0/1 targets."""
    if labels.size != values.size:
        return False
    y = labels.reshape(values.shape).astype(bool)
    if y.all() or not y.any():
        return False
    return bool(values[y].mean() - values[~y].mean() > LOGIT_SEPARATION)


def _threshold(values: np.ndarray) -> float:
    """Where one unit's decision lies: 0.5 for a probability, 0 for a logit."""
    return 0.5 if _probabilities(values) else 0.0


def changed_decisions(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per sample, the share of a classification output's decisions (one per sample, or per pixel or
    token) that differ from the float file's: the top class, or one unit on its side of 0.5 or 0."""
    if class_ids(values):
        moved = values != reference
    elif values.ndim < 2 or values.shape[-1] == 1:
        cut = _threshold(reference)
        moved = (values > cut) != (reference > cut)
    else:
        moved = values.argmax(axis=-1) != reference.argmax(axis=-1)
    return moved.reshape(len(values), -1).mean(axis=1)


def multi_label(values: np.ndarray, labels: np.ndarray) -> bool:
    """Independent sigmoid units with 0/1 labels, one per unit: rows of values in [0, 1] that do not sum
    to one (a softmax's do, and its one-hot labels name one class)."""
    if values.ndim < 2 or values.shape[-1] < 2 or labels.shape != values.shape or values.min() < 0 or values.max() > 1:
        return False
    if not set(np.unique(labels).tolist()) <= {0, 1}:
        return False
    return not np.allclose(values.reshape(-1, values.shape[-1]).sum(axis=1), 1.0, atol=1e-3)


def class_ids(values: np.ndarray) -> bool:
    """An output of integers (or booleans): classes the model picks itself, an argmax in the graph."""
    return values.dtype.kind in "biu"


def _whole(labels: np.ndarray) -> bool:
    return labels.dtype.kind in "biu" or (labels.dtype.kind == "f" and bool(np.all(labels == np.round(labels))))


def measure(task: str, name: str, values: np.ndarray, *, labels: Optional[np.ndarray] = None,
            reference: Optional[np.ndarray] = None) -> OutputMetrics:
    """The metrics of one output. `reference` is the float file's output (for the quantized file)."""
    return _MEASURES[task](name, values, labels, reference)


def check_labels(task: str, name: str, values: np.ndarray, labels: np.ndarray, where: str) -> np.ndarray:
    """Labels in the form the task needs (class ids for classification and embedding), or a DataError."""
    if task == "classification" and class_ids(values):
        if labels.size != values.size or not _whole(labels):
            raise DataError(problem(where, f"one whole-number class id per value of output {name!r}, "
                                    f"shape {values.shape}", f"labels of shape {labels.shape}, dtype {labels.dtype}"))
        return labels.astype(np.int64).reshape(values.shape)
    if task in ("classification", "embedding"):
        y = labels
        classes = values.shape[-1] if values.ndim >= 2 and values.shape[-1] > 1 else 2
        if task == "classification" and multi_label(values, y):
            return y.astype(np.int64)  # one 0/1 decision per unit
        if task == "classification" and y.ndim == values.ndim and y.shape == values.shape and values.shape[-1] > 1:
            y = y.argmax(axis=-1)  # one-hot
        elif y.ndim == values.ndim and y.shape[-1] == 1:
            y = y[..., 0]
        if not _whole(y):
            raise DataError(problem(where, f"whole-number class labels for output {name!r}", "fractional values"))
        y = y.astype(np.int64)
        expected = values.shape[:-1] if values.ndim > 2 or (values.ndim == 2 and values.shape[-1] > 1) else \
            values.shape[:1]
        if task == "classification" and y.shape != expected:
            raise DataError(problem(where, f"labels of shape {expected} for output {name!r}", f"{y.shape}"))
        if task == "classification" and len(y) and (y.min() < 0 or y.max() >= classes):
            raise DataError(problem(where, f"labels in 0..{classes - 1} for output {name!r} ({classes} classes)",
                                    f"labels {y.min()}..{y.max()}"))
        if task == "embedding" and y.ndim != 1:
            raise DataError(problem(where, f"one class id per sample for embedding output {name!r}", f"shape {y.shape}"))
        return y
    y = labels.astype(np.float32)
    if y.size != values.size:
        raise DataError(problem(where, f"regression targets of shape {values.shape} for output {name!r}", f"{labels.shape}"))
    return y.reshape(values.shape)


@_task("classification")
def _classification(name, values, labels, reference) -> OutputMetrics:
    if class_ids(values):  # the file's own decisions: compared as they are
        per_sample = int(np.prod(values.shape[1:]))
        agree = None if reference is None else float(np.mean(values == reference))
        return OutputMetrics(name=name, task="classification", samples=len(values),
                             accuracy=None if labels is None else float(np.mean(values == labels)), agreement=agree,
                             decisions=per_sample if per_sample > 1 else None)
    if labels is not None and labels.shape == values.shape and values.ndim >= 2 and values.shape[-1] > 1:
        predicted = values > 0.5  # multi-label: every unit a decision of its own
        agree = None if reference is None else float(np.mean(predicted == (reference > 0.5)))
        return OutputMetrics(name=name, task="classification", samples=len(values),
                             accuracy=float(np.mean(predicted == labels.astype(bool))), agreement=agree,
                             decisions=int(np.prod(values.shape[1:])))
    top5 = decisions = None
    if values.ndim < 2 or values.shape[-1] == 1:  # one sigmoid unit or logit: per sample, or per pixel or token
        positions = values.reshape(values.shape[:-1]) if values.ndim > 2 else values.reshape(len(values))
        cut = _threshold(values if reference is None else reference)  # the float file's says which
        predicted = (positions > cut).astype(np.int64)
        agree = None if reference is None else float(np.mean(predicted == (reference.reshape(positions.shape) > cut)))
        per_sample = int(np.prod(positions.shape[1:]))
        decisions = per_sample if per_sample > 1 else None
    else:
        predicted = values.argmax(axis=-1)
        agree = None if reference is None else float(np.mean(predicted == reference.argmax(axis=-1)))
        if labels is not None and values.shape[-1] > 5:
            best = np.argpartition(-values, 5, axis=-1)[..., :5]
            top5 = float(np.mean((best == labels[..., None]).any(axis=-1)))
    accuracy = None if labels is None else float(np.mean(predicted == labels))
    return OutputMetrics(name=name, task="classification", samples=len(values), accuracy=accuracy,
                         top5_accuracy=top5, agreement=agree, decisions=decisions)


@_task("regression")
def _regression(name, values, labels, reference) -> OutputMetrics:
    metrics = OutputMetrics(name=name, task="regression", samples=len(values), std=float(np.std(values)))
    if reference is not None:
        error = values.astype(np.float64) - reference
        rmse = float(np.sqrt(np.mean(error ** 2)))
        spread = float(np.std(reference))
        metrics = replace(metrics, rmse=rmse, rel_rmse=rmse / spread if spread > 0 else (0.0 if rmse == 0 else float("inf")),
                          max_abs_error=float(np.abs(error).max()))
    if labels is not None:
        residual = float(np.sum((labels - values) ** 2))
        total = float(np.sum((labels - labels.mean()) ** 2))
        metrics = replace(metrics, r2=1 - residual / total if total > 0 else None,
                          label_rmse=float(np.sqrt(np.mean((labels - values) ** 2))))
    return metrics


@_task("embedding")
def _embedding(name, values, labels, reference) -> OutputMetrics:
    flat = values.reshape(len(values), -1).astype(np.float64)
    metrics = OutputMetrics(name=name, task="embedding", samples=len(values))
    if reference is not None:
        other = reference.reshape(len(reference), -1).astype(np.float64)
        cosine = np.sum(flat * other, axis=1) / np.maximum(np.linalg.norm(flat, axis=1) * np.linalg.norm(other, axis=1), 1e-12)
        metrics = replace(metrics, mean_cosine=float(cosine.mean()), min_cosine=float(cosine.min()))
    if labels is not None:
        metrics = replace(metrics, retrieval=_retrieval(flat[:RETRIEVAL_SAMPLES], labels[:RETRIEVAL_SAMPLES]))
    return metrics


def _retrieval(vectors: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out nearest neighbour (cosine) accuracy: does each sample's nearest other sample share its class?"""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return float(np.mean(labels[similarity.argmax(axis=1)] == labels))


# --- budgets ---------------------------------------------------------------------------------


def violations(float_metrics: OutputMetrics, quantized: OutputMetrics, budget: Budget, *,
               retrained: bool = False) -> list[str]:
    """Every way `quantized` falls outside the budget for its task; empty when it is within.

    A file whose weights were trained again (QAT, pruning, clustering) computes another function
    than the float model, so its distance from the float outputs measures the training as much as
    the rounding: where labels allow, its regression outputs are held to the labels, and its
    embeddings to retrieval when `max_drop` budgets it (else to the cosine, as any file).
    """
    if retrained and quantized.task == "regression" and _label_rule(float_metrics, quantized):
        return _retrained_regression_budget(float_metrics, quantized, budget)
    if retrained and quantized.task == "embedding" and budget.max_drop is not None \
            and float_metrics.retrieval is not None and quantized.retrieval is not None:
        return _embedding_budget(float_metrics, replace(quantized, mean_cosine=None), budget)
    return _CHECKS[quantized.task](float_metrics, quantized, budget)


def _label_rule(float_metrics: OutputMetrics, quantized: OutputMetrics) -> bool:
    return float_metrics.label_rmse is not None and quantized.label_rmse is not None and bool(float_metrics.std)


def allowed_label_rmse(float_metrics: OutputMetrics, budget: Budget) -> float:
    """The RMSE against the labels of a file that is off the float outputs by the budget (`max_rel_rmse`
    of their standard deviation), its error independent of the float model's: the two add in quadrature."""
    return float(np.hypot(float_metrics.label_rmse, budget.max_rel_rmse * float_metrics.std))


def label_budget_used(float_metrics: OutputMetrics, quantized: OutputMetrics, budget: Budget) -> Optional[float]:
    """The share of that quadrature budget a file's label error uses: 1 at the limit, 0 as good as
    float, below 0 better than float."""
    if not _label_rule(float_metrics, quantized):
        return None
    room = (budget.max_rel_rmse * float_metrics.std) ** 2
    return (quantized.label_rmse ** 2 - float_metrics.label_rmse ** 2) / room


def drop(float_metrics: OutputMetrics, quantized: OutputMetrics) -> Optional[float]:
    """The classification drop: accuracy lost against labels, or without labels the top-1 changes."""
    if float_metrics.accuracy is not None and quantized.accuracy is not None:
        return float_metrics.accuracy - quantized.accuracy
    if quantized.agreement is not None:
        return 1.0 - quantized.agreement
    return None


@_budget("classification")
def _classification_budget(float_metrics, quantized, budget: Budget) -> list[str]:
    lost = drop(float_metrics, quantized)
    if budget.max_drop is None or lost is None or lost <= budget.max_drop + 1e-9:
        return []
    if quantized.accuracy is not None:
        return [f"output {quantized.name!r}: expected an accuracy drop of at most {budget.max_drop:.4f} "
                f"({called('max_drop')}), found "
                f"{lost:.4f} (float {float_metrics.accuracy:.4f}, quantized {quantized.accuracy:.4f})"]
    return [f"output {quantized.name!r}: expected top-1 changes (no labels) in at most {budget.max_drop:.4f} of "
            f"samples, found {lost:.4f}"]


@_budget("regression")
def _regression_budget(float_metrics, quantized, budget: Budget) -> list[str]:
    if quantized.rel_rmse is None or quantized.rel_rmse <= budget.max_rel_rmse + 1e-12:
        return []
    return [f"output {quantized.name!r}: expected an RMSE of at most {budget.max_rel_rmse:.3f} of the float output's "
            f"standard deviation ({called('max_rel_rmse')}), found {quantized.rel_rmse:.4f}"]


def _retrained_regression_budget(float_metrics, quantized, budget: Budget) -> list[str]:
    allowed = allowed_label_rmse(float_metrics, budget)
    if quantized.label_rmse <= allowed + 1e-12:
        return []
    return [f"output {quantized.name!r}: expected an RMSE against the labels of at most {allowed:.4g} (the float "
            f"model's {float_metrics.label_rmse:.4g} and {budget.max_rel_rmse:.3f} of its output's standard deviation "
            f"({called('max_rel_rmse')}) in quadrature: the weights were trained again, so the labels judge), "
            f"found {quantized.label_rmse:.4g}"]


@_budget("embedding")
def _embedding_budget(float_metrics, quantized, budget: Budget) -> list[str]:
    found = []
    if quantized.mean_cosine is not None and quantized.mean_cosine < budget.min_cosine - 1e-12:
        found.append(f"output {quantized.name!r}: expected a mean cosine to the float embedding of at least "
                     f"{budget.min_cosine:.3f} ({called('min_cosine')}), found {quantized.mean_cosine:.4f}")
    if budget.max_drop is not None and float_metrics.retrieval is not None and quantized.retrieval is not None:
        lost = float_metrics.retrieval - quantized.retrieval
        if lost > budget.max_drop + 1e-9:
            found.append(f"output {quantized.name!r}: expected a retrieval-accuracy drop of at most "
                         f"{budget.max_drop:.4f}, found {lost:.4f}")
    return found


@dataclass(frozen=True)
class Judged:
    """Every output of one file, measured: by output name, in the model's order."""

    outputs: dict[str, OutputMetrics]

    def primary(self) -> Optional[OutputMetrics]:
        """The first classification output (the one `accuracy` in a report speaks of)."""
        return next((m for m in self.outputs.values() if m.task == "classification"), None)


def judge(outputs: dict[str, np.ndarray], tasks: dict[str, str], labels: dict[str, np.ndarray],
          reference: Optional[dict[str, np.ndarray]] = None) -> Judged:
    return Judged({name: measure(tasks[name], name, values, labels=labels.get(name),
                                 reference=None if reference is None else reference[name])
                   for name, values in outputs.items()})


def choose(float_outputs: dict[str, np.ndarray], labels: dict[str, np.ndarray], chosen: dict[str, str],
           where: str) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """The task of every output (detected unless chosen) and its labels in the form the task needs."""
    unknown = sorted(set(chosen) - set(float_outputs))
    if unknown:
        raise RecipeError(f"task: unknown output(s) {', '.join(map(repr, unknown))}; the model's outputs are "
                          f"{', '.join(map(repr, float_outputs))}")
    tasks, checked = {}, {}
    for name, values in float_outputs.items():
        tasks[name] = chosen.get(name) or detect(values, labels.get(name))
        if name in labels:
            checked[name] = check_labels(tasks[name], name, values, labels[name], where)
    return tasks, checked

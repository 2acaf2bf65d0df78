"""Metrics, in one place: their names, which way each is better, the gate's default metric per task, and
their computation (scikit-learn's, on test rows, held-out rows and labelled served rows alike).

LightGBM's metric names (early stopping, tuning, the defaults comparison) and the test metrics that
``task_metrics`` reports (the champion gate, the loop's holdout and realized windows) share one
direction rule. ``weighted_auc`` is the one metric scikit-learn has no form of: the AUC of rows that are
each part positive and part negative (performance estimated from scores alone, before labels arrive).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, TypeVar

import numpy as np

T = TypeVar("T")

# Higher is better for these; every other metric is a loss or an error rate: lower is better.
HIGHER_IS_BETTER = frozenset({
    # LightGBM's names
    "auc", "average_precision", "ndcg", "map", "auc_mu",
    # evaluate.task_metrics' names
    "roc_auc", "pr_auc", "accuracy", "precision", "recall", "f1", "precision_macro", "recall_macro", "f1_macro", "r2",
})


def higher_is_better(metric: str) -> bool:
    """``ndcg@5`` and ``map@3`` count as ``ndcg`` and ``map``."""
    return metric.split("@")[0] in HIGHER_IS_BETTER


def tune_mode(metric: str) -> str:
    """Ray Tune's ``mode`` for the metric: ``"max"`` or ``"min"``."""
    return "max" if higher_is_better(metric) else "min"


def better(metric: str, new: float, old: float, margin: float = 0.0) -> bool:
    """``new`` beats ``old`` by more than ``margin`` (a tie never beats)."""
    return new > old + margin if higher_is_better(metric) else new < old - margin


def best(metric: str, items: Iterable[T], key: Callable[[T], Any] = lambda x: x) -> T:
    """The item whose ``key`` is best for the metric; the first of equals."""
    it = iter(items)
    try:
        chosen = next(it)
    except StopIteration:
        raise ValueError("best() of no items") from None
    for item in it:
        if better(metric, key(item), key(chosen)):
            chosen = item
    return chosen


def worse_by(metric: str, value: float, reference: float) -> float:
    """How much worse ``value`` is than ``reference`` (negative: better), in the metric's own units."""
    return reference - value if higher_is_better(metric) else value - reference


# The gate's default metric per task: what registration, the loop's promotion and its rollback compare.
DEFAULT_GATE_METRIC = {"binary": "roc_auc", "multiclass": "log_loss", "regression": "rmse"}


def gate_metric(task: str, metric: str | None = None) -> str:
    """The configured gate metric, or the task's default."""
    return metric or DEFAULT_GATE_METRIC[task]


def task_metrics(task: str, y: np.ndarray, p: np.ndarray, threshold: float = 0.5, num_classes: int | None = None) -> dict[str, Any]:
    from sklearn import metrics as skm

    if task == "binary":
        pred = (p >= threshold).astype(int)
        return {
            "roc_auc": float(skm.roc_auc_score(y, p)),
            "pr_auc": float(skm.average_precision_score(y, p)),
            "log_loss": float(skm.log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1])),
            "threshold": float(threshold),
            "accuracy": float(skm.accuracy_score(y, pred)),
            "precision": float(skm.precision_score(y, pred, zero_division=0)),
            "recall": float(skm.recall_score(y, pred, zero_division=0)),
            "f1": float(skm.f1_score(y, pred, zero_division=0)),
        }
    if task == "multiclass":
        labels = list(range(num_classes or p.shape[1]))
        pred = p.argmax(axis=1)
        return {
            "accuracy": float(skm.accuracy_score(y, pred)),
            "precision_macro": float(skm.precision_score(y, pred, average="macro", labels=labels, zero_division=0)),
            "recall_macro": float(skm.recall_score(y, pred, average="macro", labels=labels, zero_division=0)),
            "f1_macro": float(skm.f1_score(y, pred, average="macro", labels=labels, zero_division=0)),
            "log_loss": float(skm.log_loss(y, np.clip(p, 1e-15, 1), labels=labels)),
            "confusion_matrix": skm.confusion_matrix(y, pred, labels=labels).tolist(),
        }
    return {
        "rmse": float(np.sqrt(skm.mean_squared_error(y, p))),
        "mae": float(skm.mean_absolute_error(y, p)),
        "r2": float(skm.r2_score(y, p)),
    }


# The metrics a window of labelled served rows reports (``realized_metrics``), per task.
REALIZED = {"binary": ("roc_auc", "log_loss", "accuracy"), "regression": ("rmse", "mae"),
            "multiclass": ("accuracy", "log_loss")}


def realized_metrics(task: str, y: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """The task's ``REALIZED`` metrics on labelled rows (``y``: class indices, or values for regression;
    ``scores``: the positive class's probability, the values, or rows × classes probabilities); a binary
    window with one class only has no ROC AUC."""
    from sklearn import metrics as skm

    y = np.asarray(y)
    if len(y) == 0:
        return {}
    if task == "binary":
        p = np.clip(np.asarray(scores, dtype=np.float64), 1e-15, 1 - 1e-15)
        y = y.astype(np.int64)
        out = {"log_loss": float(skm.log_loss(y, p, labels=[0, 1])),
               "accuracy": float(skm.accuracy_score(y, (p >= threshold).astype(np.int64)))}
        return {"roc_auc": float(skm.roc_auc_score(y, p)), **out} if len(np.unique(y)) == 2 else out
    if task == "multiclass":
        probs = np.asarray(scores, dtype=np.float64)
        y = y.astype(np.int64)
        labels = list(range(probs.shape[1]))
        return {"accuracy": float(skm.accuracy_score(y, probs.argmax(axis=1))),
                "log_loss": float(skm.log_loss(y, np.clip(probs, 1e-15, 1), labels=labels))}
    p = np.asarray(scores, dtype=np.float64)
    y = y.astype(np.float64)
    return {"rmse": float(np.sqrt(skm.mean_squared_error(y, p))), "mae": float(skm.mean_absolute_error(y, p))}


def weighted_auc(scores: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float | None:
    """ROC AUC of ``scores`` where row i counts as ``pos[i]`` of a positive and ``neg[i]`` of a negative
    (labels: 1/0 weights; CBPE: ``q``/``1 − q``); ties count a half; a row is never paired with itself.
    None when there are no positive or no negative weights."""
    scores, pos, neg = (np.asarray(a, dtype=np.float64) for a in (scores, pos, neg))
    self_pairs = float(np.dot(pos, neg))
    total = float(pos.sum()) * float(neg.sum()) - self_pairs
    if total <= 0:
        return None
    uniq, inverse = np.unique(scores, return_inverse=True)
    p_g = np.bincount(inverse, weights=pos, minlength=len(uniq))
    n_g = np.bincount(inverse, weights=neg, minlength=len(uniq))
    below = np.concatenate([[0.0], np.cumsum(n_g)[:-1]])  # negative weight at strictly lower scores
    wins = float(np.dot(p_g, below + 0.5 * n_g)) - 0.5 * self_pairs
    return wins / total

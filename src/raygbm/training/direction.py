"""Which value of a metric is better: one rule for LightGBM's metric names (early stopping, tuning, the
defaults comparison) and for the test metrics ``evaluate.task_metrics`` reports (the champion gate)."""

from __future__ import annotations

from typing import Any, Callable, Iterable, TypeVar

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

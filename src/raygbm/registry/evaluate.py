"""Evaluation on the held-out test split: metrics and importance (gain, permutation, mean |SHAP|).

Binary: ROC-AUC, PR-AUC, log loss, and accuracy/precision/recall/F1 at the threshold that maximises F1 on
the validation split (never chosen on test). Multiclass: accuracy, macro precision/recall/F1, log loss
and a confusion matrix. Regression: RMSE, MAE, R².
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow as pa

from raygbm.errors import DataError
from raygbm.metrics import higher_is_better, task_metrics
from raygbm.training.train import gain_importance

SHAP_ROWS = 1_000  # test rows whose SHAP contributions the summary plot and mean |SHAP| are computed on


def features_matrix(booster: lgb.Booster, table: pa.Table) -> np.ndarray:
    """The model's own feature columns (a selection may have dropped some) as float64, in its order."""
    names = booster.feature_name()
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise DataError(f"data lacks the model's feature(s): {', '.join(missing[:5])}")
    return np.column_stack([np.asarray(table.column(n), dtype=np.float64) for n in names]) if names else np.empty((table.num_rows, 0))


def predict_scores(booster: lgb.Booster, X: np.ndarray) -> np.ndarray:
    return booster.predict(X, num_threads=0)


def choose_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The probability cut-off with the best F1 on (validation) data."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))]) if len(thresholds) else 0.5


def permutation_importance(booster: lgb.Booster, table: pa.Table, label: str, task: str, metric: str,
                           rows: int, seed: int = 0, num_classes: int | None = None) -> dict[str, float]:
    """Drop in the gate metric when one feature's values are shuffled (validation rows, one repeat)."""
    rng = np.random.default_rng(seed)
    if table.num_rows > rows:
        table = table.take(np.sort(rng.choice(table.num_rows, rows, replace=False)))
    X = features_matrix(booster, table)
    y = np.asarray(table.column(label))
    base = task_metrics(task, y, predict_scores(booster, X), num_classes=num_classes)[metric]
    sign = 1.0 if higher_is_better(metric) else -1.0
    out: dict[str, float] = {}
    for j, name in enumerate(booster.feature_name()):
        saved = X[:, j].copy()
        X[:, j] = rng.permutation(saved)
        out[name] = sign * (base - task_metrics(task, y, predict_scores(booster, X), num_classes=num_classes)[metric])
        X[:, j] = saved
    return out


@dataclass
class Evaluation:
    task: str
    metrics: dict[str, Any]
    gate_metric: str
    importance: dict[str, dict[str, float]]
    plots: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "metrics": self.metrics, "gate_metric": self.gate_metric, "importance": self.importance}


def shap_values(booster: lgb.Booster, X: np.ndarray) -> np.ndarray:
    """LightGBM's exact TreeSHAP contributions (``pred_contrib``) without the bias column: rows × features,
    or rows × classes × features for a multiclass model."""
    n, f = X.shape
    contrib = np.asarray(booster.predict(X, pred_contrib=True, num_threads=0))
    if contrib.shape[1] == f + 1:
        return contrib[:, :f]
    return contrib.reshape(n, -1, f + 1)[:, :, :f]


def categorical_features(booster: lgb.Booster) -> list[str]:
    """The features the model splits on as categories (LightGBM lists their category values)."""
    infos = booster.dump_model(num_iteration=1)["feature_infos"]  # one tree: the header is what is read
    return [name for name, info in infos.items() if info.get("values")]


def mean_abs_shap(contrib: np.ndarray, names: list[str]) -> dict[str, float]:
    """Each feature's mean |contribution| over the rows (summed over the classes of a multiclass model)."""
    per = np.abs(contrib).mean(axis=0)
    per = per.sum(axis=0) if per.ndim == 2 else per
    return {n: float(v) for n, v in zip(names, per)}


def evaluate_model(booster: lgb.Booster, test: pa.Table, validation: pa.Table, label: str, task: str,
                   num_classes: int | None, gate: str, permutation_rows: int,
                   heldout: tuple[np.ndarray, np.ndarray] | None = None,
                   shap_rows: int = SHAP_ROWS) -> tuple[Evaluation, dict[str, np.ndarray]]:
    """Test metrics and importances; also returns arrays for the plots (``y``, ``p``: labels and scores;
    ``X_shap``, ``shap``: a sample of test rows and their contributions; ``categorical``: per feature, whether
    it is categorical). The binary threshold is chosen on
    ``heldout`` (labels and out-of-sample scores: a refit trained on validation, so the selection's
    holdout or out-of-fold scores stand in), else on the model's validation scores."""
    y_test = np.asarray(test.column(label))
    X_test = features_matrix(booster, test)
    p_test = predict_scores(booster, X_test)
    threshold = 0.5
    if task == "binary":
        threshold = choose_threshold(*heldout) if heldout is not None else choose_threshold(
            np.asarray(validation.column(label)), predict_scores(booster, features_matrix(booster, validation)))
    metrics = task_metrics(task, y_test, p_test, threshold, num_classes)
    metrics["test_rows"] = int(test.num_rows)
    importance = {
        "gain": gain_importance(booster),
        "permutation": permutation_importance(booster, validation, label, task, gate, permutation_rows, num_classes=num_classes),
    }
    X_shap = X_test[np.sort(np.random.default_rng(0).choice(len(X_test), min(shap_rows, len(X_test)), replace=False))]
    contrib = shap_values(booster, X_shap)
    importance["shap"] = mean_abs_shap(contrib, booster.feature_name())
    return Evaluation(task, metrics, gate, importance), {
        "y": y_test, "p": p_test, "X_shap": X_shap, "shap": contrib,
        "categorical": np.isin(booster.feature_name(), categorical_features(booster))}

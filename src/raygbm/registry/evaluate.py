"""Evaluation on the held-out test split: metrics, importance, plots and a model card.

Binary: ROC-AUC, PR-AUC, log loss, and accuracy/precision/recall/F1 at the threshold that maximises F1 on
the validation split (never chosen on test). Multiclass: accuracy, macro precision/recall/F1, log loss
and a confusion matrix. Regression: RMSE, MAE, R².
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow as pa

from raygbm.errors import DataError
from raygbm.training.direction import higher_is_better
from raygbm.training.train import gain_importance

# The gate's default metric per task (raygbm.training.direction says which way each one is better).
DEFAULT_GATE_METRIC = {"binary": "roc_auc", "multiclass": "log_loss", "regression": "rmse"}


def gate_metric(task: str, metric: str | None) -> str:
    return metric or DEFAULT_GATE_METRIC[task]


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


def evaluate_model(booster: lgb.Booster, test: pa.Table, validation: pa.Table, label: str, task: str,
                   num_classes: int | None, gate: str, permutation_rows: int,
                   heldout: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[Evaluation, dict[str, np.ndarray]]:
    """Test metrics and importances; also returns arrays for the plots. The binary threshold is chosen on
    ``heldout`` (labels and out-of-sample scores: a refit trained on validation, so the selection's
    holdout or out-of-fold scores stand in), else on the model's validation scores."""
    y_test = np.asarray(test.column(label))
    p_test = predict_scores(booster, features_matrix(booster, test))
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
    return Evaluation(task, metrics, gate, importance), {"y": y_test, "p": p_test}


# ----------------------------------------------------------------------------------------------- plots


def save_plots(out: Path, ev: Evaluation, arrays: dict[str, np.ndarray], tuning: list[dict[str, Any]] | None) -> list[str]:
    """PNG plots; returns their file names (relative to ``out``)."""
    import matplotlib

    matplotlib.use("Agg")  # no display; never touches the user's backend at import time
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    y, p = arrays["y"], arrays["p"]

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        names.append(name)

    if ev.task == "binary":
        from sklearn.metrics import precision_recall_curve, roc_curve

        fpr, tpr, _ = roc_curve(y, p)
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.plot(fpr, tpr, label=f"AUC {ev.metrics['roc_auc']:.4f}")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
        ax.legend(loc="lower right")
        save(fig, "roc.png")
        prec, rec, _ = precision_recall_curve(y, p)
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.plot(rec, prec, label=f"PR-AUC {ev.metrics['pr_auc']:.4f}")
        ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (test)")
        ax.legend(loc="upper right")
        save(fig, "pr.png")
    elif ev.task == "multiclass":
        cm = np.asarray(ev.metrics["confusion_matrix"])
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.imshow(cm, cmap="Blues")
        ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (test)")
        save(fig, "confusion.png")
    else:
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.scatter(p, y - p, s=2, alpha=0.3)
        ax.axhline(0, color="k", lw=0.8)
        ax.set(xlabel="prediction", ylabel="residual", title="Residuals (test)")
        save(fig, "residuals.png")

    gain = sorted(ev.importance["gain"].items(), key=lambda kv: kv[1])[-20:]
    fig, ax = plt.subplots(figsize=(5, 0.25 * len(gain) + 1.2))
    ax.barh([k for k, _ in gain], [v for _, v in gain])
    ax.set(xlabel="total gain", title="Feature importance")
    save(fig, "importance.png")

    if tuning:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for t in tuning:
            h = np.asarray(t["history"] or [[0, np.nan]], dtype=float)
            ax.plot(h[:, 0], h[:, 1], lw=0.8, marker="." if len(h) < 3 else None)
        ax.set(xlabel="boosting round", ylabel="validation score", title=f"Tuning history ({len(tuning)} trials)")
        save(fig, "tuning.png")
    return names


# ------------------------------------------------------------------------------------------ model card


def _selection_lines(validation: dict[str, Any] | None, refit: dict[str, Any] | None,
                     comparison: dict[str, Any] | None) -> list[str]:
    """The card's "Selection and refit" section."""
    lines = ["", "## Selection and refit", ""]
    if validation:
        how = f"{validation['folds']}-fold CV on train + validation" if validation["scheme"] == "cv" else "holdout (validation split)"
        spread = f" ± {validation['score_std']:.4g} over the folds" if "score_std" in validation else ""
        lines.append(f"- Scored by {how} ({validation['reason']}): {validation['metric']} "
                     f"{validation['score']:.6g}{spread}" if validation.get("score") is not None else f"- Scored by {how}")
        folds = validation.get("fold_best_iterations")
        lines.append(f"- Best iteration: {validation['best_iteration']}"
                     + (f" (rounded mean of the folds' {', '.join(map(str, folds))})" if folds else ""))
    if comparison and comparison.get("tuned_score") is not None and comparison.get("defaults_score") is not None:
        lines.append(f"- Against LightGBM's defaults by the same scheme: tuned {comparison['tuned_score']:.6g}, "
                     f"defaults {comparison['defaults_score']:.6g}; kept **{comparison['kept']}**")
    if refit:
        lines.append(f"- Refit on {' + '.join(refit['splits'])} ({refit['rows']:,} rows): {refit['rounds']} rounds = "
                     f"best iteration {refit['selection_best_iteration']} × {refit['rounds_scale']:g}; the test split "
                     "was not used")
    else:
        lines.append("- No refit: the registered model is the one fitted on train and early-stopped on validation")
    return lines


def model_card(*, name: str, version: str | None, ev: Evaluation, params: dict[str, Any], best_iteration: int,
               data_report: dict[str, Any], tuning: dict[str, Any] | None, gate: dict[str, Any] | None,
               plots: list[str], selection: dict[str, Any] | None, comparison: dict[str, Any] | None = None,
               validation: dict[str, Any] | None = None, refit: dict[str, Any] | None = None) -> str:
    """Markdown model card tying the data report, the parameters and the metrics together."""
    lines = [f"# Model card: {name}" + (f" v{version}" if version else ""), ""]
    lines += [f"- Task: **{ev.task}**; gate metric: **{ev.gate_metric}**",
              f"- Boosting rounds: {best_iteration}" + (" (refit on train + validation)" if refit else "")]
    if gate:
        lines.append(f"- Champion decision: **{gate.get('decision')}**: {gate.get('reason')}")
    lines += ["", "## Test metrics", "", "| metric | value |", "|---|---|"]
    for k, v in ev.metrics.items():
        if k != "confusion_matrix":
            lines.append(f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |")
    if "confusion_matrix" in ev.metrics:
        lines += ["", "Confusion matrix (rows: true class):", "", "```",
                  *(" ".join(f"{c:>7d}" for c in row) for row in ev.metrics["confusion_matrix"]), "```"]
    lines += ["", "## Data", ""]
    rows = data_report.get("rows_out", {})
    lines.append(f"- Source: `{data_report.get('source')}`; rows read: {data_report.get('rows_read', '?'):,}" if isinstance(
        data_report.get("rows_read"), int) else f"- Source: `{data_report.get('source')}`")
    lines.append("- Splits: " + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
    lines += ["", "## Parameters", "", "```json", json.dumps(params, indent=1, sort_keys=True, default=str), "```"]
    if tuning:
        lines += ["", "## Tuning", "",
                  f"- {len(tuning['trials'])} trials ({tuning['trial_mode']}), best validation {tuning['metric']} "
                  f"{tuning['best_score']:.6g}; {sum(t['status'] == 'stopped early' for t in tuning['trials'])} stopped early by ASHA"]
    if validation or refit or comparison:
        lines += _selection_lines(validation, refit, comparison)
    if selection:
        lines += ["", "## Feature selection", "", f"- Dropped (gain share < {selection['min_gain_share']}): "
                  + (", ".join(selection["dropped"]) or "none")]
    lines += ["", "## Importance (top 15 by gain)", "", "| feature | gain | permutation |", "|---|---|---|"]
    gain, perm = ev.importance["gain"], ev.importance["permutation"]
    for k, v in sorted(gain.items(), key=lambda kv: -kv[1])[:15]:
        lines.append(f"| {k} | {v:.4g} | {perm.get(k, float('nan')):.4g} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}](plots/{p})" for p in plots]
    return "\n".join(lines) + "\n"


def card_html(markdown: str) -> str:
    """A self-contained HTML rendering of the card (escaped; images linked, tables kept as text)."""
    body = []
    for line in markdown.splitlines():
        if line.startswith("!["):
            src = line[line.index("(") + 1 : -1]
            body.append(f'<img src="{html.escape(src)}" alt="{html.escape(src)}">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        else:
            body.append(f"<pre>{html.escape(line)}</pre>" if line else "")
    return ("<!doctype html><meta charset='utf-8'><title>raygbm model card</title>"
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}pre{margin:0}</style>\n"
            + "\n".join(body) + "\n")

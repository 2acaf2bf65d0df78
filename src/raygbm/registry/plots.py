"""The model card's plots, as PNG files: ROC, precision-recall, calibration and the score per class
(binary), the confusion matrix (multiclass), residuals (regression), gain importance, a SHAP summary
from LightGBM's own ``pred_contrib`` and the tuning history with the chosen trial marked.

Matplotlib runs on its Agg backend (no display), selected when ``save_plots`` runs, never at import."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from raygbm.metrics import best
from raygbm.registry.evaluate import Evaluation

CHOSEN = "#d62728"  # the chosen trial, the decision threshold: one colour across the plots
TOP_FEATURES = 15  # features shown in the SHAP summary


def _binary(plt: Any, save: Any, ev: Evaluation, y: np.ndarray, p: np.ndarray) -> None:
    """ROC, precision-recall, calibration curve and the score's histogram per class."""
    from sklearn.calibration import calibration_curve
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

    frac_pos, mean_pred = calibration_curve(y, p, n_bins=10, strategy="quantile")
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfectly calibrated")
    ax.plot(mean_pred, frac_pos, marker="o", label=f"model (log loss {ev.metrics['log_loss']:.4f})")
    ax.set(xlabel="mean predicted probability (decile of scores)", ylabel="fraction of positives",
           title="Calibration (test)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    save(fig, "calibration.png")

    fig, ax = plt.subplots(figsize=(4.5, 4))
    edges = np.linspace(0, 1, 41)
    for cls, colour in ((0, "#1f77b4"), (1, "#ff7f0e")):
        ax.hist(p[y == cls], bins=edges, density=True, alpha=0.55, color=colour, label=f"class {cls} ({int((y == cls).sum()):,})")
    ax.axvline(ev.metrics["threshold"], color=CHOSEN, lw=1.2, ls="--", label=f"threshold {ev.metrics['threshold']:.3f}")
    ax.set(xlabel="score (positive-class probability)", ylabel="density", title="Score by true class (test)")
    ax.legend(loc="upper center")
    save(fig, "score_histogram.png")


def _shap(plt: Any, save: Any, contrib: np.ndarray, X: np.ndarray, names: list[str], categorical: np.ndarray) -> None:
    """SHAP summary: each test row's contribution per feature, coloured by the feature's value (its rank
    among the rows: blue low, red high, grey missing; purple: a categorical feature, whose codes have no
    order), features by mean |contribution|. A multiclass model's contributions per class are shown as
    stacked mean |contribution| bars instead."""
    if contrib.size == 0:
        return
    mean_abs = np.abs(contrib).mean(axis=0)
    total = mean_abs.sum(axis=0) if contrib.ndim == 3 else mean_abs
    order = np.argsort(total)[-TOP_FEATURES:]  # least important first: matplotlib draws bottom-up
    fig, ax = plt.subplots(figsize=(6, 0.32 * len(order) + 1.4))
    if contrib.ndim == 3:
        left = np.zeros(len(order))
        for k in range(contrib.shape[1]):
            ax.barh(range(len(order)), mean_abs[k, order], left=left, label=f"class {k}")
            left += mean_abs[k, order]
        ax.legend(loc="lower right", fontsize=8)
        ax.set(xlabel="mean |SHAP value| (log-odds)")
    else:
        rng = np.random.default_rng(0)
        for row, j in enumerate(order):
            x, v = contrib[:, j], X[:, j]
            known = ~np.isnan(v)
            colour = np.full(len(v), 0.5)
            if known.sum() > 1:
                colour[known] = np.argsort(np.argsort(v[known])) / (known.sum() - 1)
            jitter = rng.uniform(-0.3, 0.3, len(x))
            if categorical[j]:
                ax.scatter(x, row + jitter, s=4, c="#7b5ea7", alpha=0.5)
                continue
            ax.scatter(x[~known], row + jitter[~known], s=4, c="#aaa", alpha=0.6)
            ax.scatter(x[known], row + jitter[known], s=4, c=colour[known], cmap="coolwarm", vmin=0, vmax=1, alpha=0.6)
        ax.axvline(0, color="k", lw=0.6)
        scale = plt.cm.ScalarMappable(cmap="coolwarm", norm=plt.Normalize(0, 1))
        fig.colorbar(scale, ax=ax, ticks=[0, 1], fraction=0.04, pad=0.02).ax.set_yticklabels(["low", "high"])
        ax.set(xlabel=f"SHAP value (impact on the model's raw score), {len(contrib):,} test rows")
    ax.set_yticks(range(len(order)), [f"{names[j]}  ({total[j]:.3g})" for j in order], fontsize=8)
    ax.set_title("SHAP summary (mean |SHAP| in brackets)")
    save(fig, "shap.png")


def _tuning(plt: Any, save: Any, tuning: dict[str, Any]) -> None:
    """Each trial's best validation score in the order the trials were created, the best so far, and the
    chosen trial marked; beside it every trial's validation curve, the chosen one drawn on top."""
    trials = sorted(tuning["trials"], key=lambda t: str(t.get("trial_id")))
    scored = [t for t in trials if t["score"] is not None]
    chosen = next((t for t in scored if t["params"] == tuning.get("best_params")), None)
    if chosen is None and scored:
        chosen = best(tuning["metric"], scored, key=lambda t: t["score"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    xs = [i for i, t in enumerate(trials) if t["score"] is not None]
    ys = [t["score"] for t in scored]
    stopped = [t["status"] == "stopped early" for t in scored]
    left.scatter([x for x, s in zip(xs, stopped) if not s], [y for y, s in zip(ys, stopped) if not s], s=18, label="completed")
    left.scatter([x for x, s in zip(xs, stopped) if s], [y for y, s in zip(ys, stopped) if s], s=18, marker="x",
                 color="#888", label="stopped early (ASHA)")
    if ys:
        running = [best(tuning["metric"], ys[: i + 1]) for i in range(len(ys))]
        left.step(xs, running, where="post", color="k", lw=0.8, label="best so far")
    if chosen is not None:
        i = trials.index(chosen)
        left.scatter([i], [chosen["score"]], s=160, marker="*", color=CHOSEN, zorder=3, label=f"chosen (trial {i})")
    left.set(xlabel="trial (in order of creation)", ylabel=f"validation {tuning['metric']}",
             title=f"Tuning: {len(trials)} trials")
    left.legend(fontsize=7)
    for t in trials:
        h = np.asarray(t["history"] or [[0, np.nan]], dtype=float)
        is_chosen = t is chosen
        right.plot(h[:, 0], h[:, 1], lw=1.8 if is_chosen else 0.6, color=CHOSEN if is_chosen else "#9ab",
                   zorder=3 if is_chosen else 1, marker="." if len(h) < 3 else None)
    right.set(xlabel="boosting round", ylabel=f"validation {tuning['metric']}", title="Validation curve per trial")
    save(fig, "tuning.png")


def save_plots(out: Path, ev: Evaluation, arrays: dict[str, np.ndarray], tuning: dict[str, Any] | None) -> list[str]:
    """PNG plots (``arrays``: ``evaluate_model``'s; ``tuning``: ``TuneResult.to_dict()``). Returns their
    file names (relative to ``out``)."""
    import matplotlib

    matplotlib.use("Agg")  # no display; never touches the user's backend at import time
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out.mkdir(parents=True, exist_ok=True)
    saved: list[str] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        saved.append(name)

    y, p = arrays["y"], arrays["p"]
    if ev.task == "binary":
        _binary(plt, save, ev, y, p)
    elif ev.task == "multiclass":
        cm = np.asarray(ev.metrics["confusion_matrix"])
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, f"{v:,}", ha="center", va="center", fontsize=8, color="white" if v > cm.max() / 2 else "black")
        ax.set_xticks(range(len(cm)))
        ax.set_yticks(range(len(cm)))
        ax.set(xlabel="predicted class", ylabel="true class", title="Confusion matrix (test)")
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
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.set(xlabel="total gain", title="Feature importance (gain)")
    save(fig, "importance.png")
    if "shap" in arrays:  # its columns: the model's features, the order of importance["shap"]
        _shap(plt, save, arrays["shap"], arrays["X_shap"], list(ev.importance["shap"]),
              arrays.get("categorical", np.zeros(arrays["shap"].shape[-1], dtype=bool)))
    if tuning and tuning.get("trials"):
        _tuning(plt, save, tuning)
    return saved

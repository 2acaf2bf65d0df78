"""The reference profile a model's served traffic is compared against: computed at training time, stored
as JSON in the model bundle (``REFERENCE_FILE``), and how served values are counted over its bins.

Format 2 adds ``holdout`` (held-out rows' counts over the reference's bins) and ``calibration`` (the
thresholds calibrated from them, and how); a format-1 reference has neither and is scored with the
static thresholds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from raygbm.monitoring.calibration import ESTIMATOR, FLOORS, calibrate
from raygbm.monitoring.stats import code_hist, hist, quantile_cuts, shares, top_score

REFERENCE_FILE = "reference.json"
FORMAT = "raygbm.reference/2"


def _categorical(col: np.ndarray, max_categories: int) -> dict[str, Any]:
    """The ``max_categories`` most frequent codes' shares, then the share of all others."""
    codes, counts = np.unique(col.astype(np.int64), return_counts=True)
    order = np.argsort(-counts)[:max_categories]
    kept = {int(codes[i]): float(counts[i]) for i in order}
    other = float(counts.sum() - sum(kept.values()))
    total = float(counts.sum()) or 1.0
    return {"kind": "categorical", "codes": list(kept), "probs": [v / total for v in kept.values()] + [other / total]}


def _binned(values: np.ndarray, n: int) -> tuple[list[float], list[float]]:
    """Quantile cut points of ``values`` and each bin's share."""
    cuts = quantile_cuts(values, n)
    return cuts, shares(hist(values, cuts)).tolist()


@dataclass(frozen=True)
class Calibration:
    """How thresholds are calibrated at registration: held-out feature rows (not those the reference bins
    come from), the window size and false-alarm rate (``monitor.window_size``, ``monitor.false_alarm_rate``),
    the draws per feature, and which splits the held-out rows came from (reported by ``GET /drift``)."""

    holdout: np.ndarray  # held-out rows' features, the columns of ``names``
    window_size: int
    false_alarm_rate: float
    draws: int
    sources: dict[str, str]  # e.g. {"features": "validation", "prediction": "test"}
    seed: int = 0


def reference_profile(features: np.ndarray, names: list[str], categorical: list[str], scores: np.ndarray,
                      missing_rate: dict[str, float], bins: int = 10, max_categories: int = 50,
                      calibration: Calibration | None = None) -> dict[str, Any]:
    """What the monitor compares against: feature bins from ``features`` (the training split), the
    score's bins from ``scores`` (the model's scores on rows it did not train on). With ``calibration``,
    also the held-out counts and the thresholds calibrated from them (features: the held-out rows;
    the score: ``scores`` themselves). JSON-serialisable (stored in the model bundle)."""
    feats: dict[str, Any] = {}
    for j, name in enumerate(names):
        col = features[:, j]
        col = col[~np.isnan(col)]
        if name in categorical:
            feats[name] = _categorical(col, max_categories)
        else:
            cuts, probs = _binned(col, bins)
            feats[name] = {"kind": "numeric", "cuts": cuts, "probs": probs}
    top = top_score(scores)
    cuts, probs = _binned(top, bins)
    out = {"format": FORMAT, "features": feats, "prediction": {"cuts": cuts, "probs": probs},
           "missing_rate": missing_rate, "rows": int(features.shape[0])}
    if calibration is not None:
        out["holdout"] = _holdout(out, names, calibration, hist(top, cuts))
        c = calibration
        out["calibration"] = {"window_size": c.window_size, "false_alarm_rate": c.false_alarm_rate, "draws": c.draws,
                              "seed": c.seed, "estimator": ESTIMATOR, "floors": FLOORS,
                              "thresholds": calibrate(out, out["holdout"], c.window_size, c.false_alarm_rate, c.draws, c.seed)}
    return out


def _holdout(reference: dict[str, Any], names: list[str], c: Calibration, score_counts: np.ndarray) -> dict[str, Any]:
    """Held-out counts per feature over its reference bins (numeric: then the rows without a value) and
    the scores' counts over the prediction bins."""
    counts: dict[str, list[float]] = {}
    for j, name in enumerate(names):
        ref, col = reference["features"][name], c.holdout[:, j]
        if ref["kind"] == "numeric":
            counts[name] = bin_counts(ref, col).tolist() + [float(np.isnan(col).sum())]
        else:
            counts[name] = [float(x) for x in bin_counts(ref, col[~np.isnan(col)])]
    return {"features": counts, "prediction": score_counts.tolist(), "source": dict(c.sources),
            "rows": {"features": int(c.holdout.shape[0]), "prediction": int(score_counts.sum())}}


def bin_counts(feature: dict[str, Any], values: np.ndarray) -> np.ndarray:
    """Counts of one feature's served ``values`` over its reference bins (numeric: NaNs left out) or
    codes (categorical: the last count is every code the reference does not list)."""
    if feature["kind"] == "numeric":
        return hist(values[~np.isnan(values)], feature["cuts"])
    return code_hist(values, feature["codes"])


def with_labels(reference: dict[str, Any], categories: dict[str, list[Any]], decision_threshold: float | None) -> dict[str, Any]:
    """The reference with what reports show in place of internal values: each categorical feature's
    ``labels`` (its codes' category values, from the preprocessor's ``categories``: code k is the k-th
    category, code 0 missing or unseen) and the prediction's ``decision_threshold`` (a binary model's
    score cut-off; None for the others). A copy; the drift statistics never read either."""
    feats = {}
    for name, ref in reference["features"].items():
        if ref["kind"] == "categorical" and name in categories:
            values = categories[name]
            ref = {**ref, "labels": [str(values[c - 1]) if 0 < c <= len(values) else "(missing or unseen)"
                                     for c in ref["codes"]]}
        feats[name] = ref
    prediction = dict(reference["prediction"])
    if decision_threshold is not None:
        prediction["decision_threshold"] = float(decision_threshold)
    return {**reference, "features": feats, "prediction": prediction}

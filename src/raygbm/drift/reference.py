"""The reference profile a model's served traffic is compared against: computed at training time, stored
as JSON in the model bundle (``REFERENCE_FILE``), and how served values are counted over its bins."""

from __future__ import annotations

from typing import Any

import numpy as np

from raygbm.drift.stats import code_hist, hist, quantile_cuts, shares, top_score

REFERENCE_FILE = "reference.json"
FORMAT = "raygbm.reference/1"


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


def reference_profile(features: np.ndarray, names: list[str], categorical: list[str], scores: np.ndarray,
                      missing_rate: dict[str, float], bins: int = 10, max_categories: int = 50) -> dict[str, Any]:
    """What the monitor compares against: computed from the training split's features and the model's
    scores on the validation split. JSON-serialisable (stored in the model bundle)."""
    feats: dict[str, Any] = {}
    for j, name in enumerate(names):
        col = features[:, j]
        col = col[~np.isnan(col)]
        if name in categorical:
            feats[name] = _categorical(col, max_categories)
        else:
            cuts, probs = _binned(col, bins)
            feats[name] = {"kind": "numeric", "cuts": cuts, "probs": probs}
    cuts, probs = _binned(top_score(scores), bins)
    return {"format": FORMAT, "features": feats, "prediction": {"cuts": cuts, "probs": probs},
            "missing_rate": missing_rate, "rows": int(features.shape[0])}


def bin_counts(feature: dict[str, Any], values: np.ndarray) -> np.ndarray:
    """Counts of one feature's served ``values`` over its reference bins (numeric: NaNs left out) or
    codes (categorical: the last count is every code the reference does not list)."""
    if feature["kind"] == "numeric":
        return hist(values[~np.isnan(values)], feature["cuts"])
    return code_hist(values, feature["codes"])

"""Performance per drift window: realized metrics where labels arrived, metrics estimated from the scores
alone before they arrive (binary classifiers), and the bounds both are held to. Plain numpy: no Ray.

Estimation is confidence-based (CBPE): with calibrated probabilities ``q`` of the positive class, a row
predicted positive (score at or above the model's threshold) is right with probability ``q``, one
predicted negative with ``1 − q``, so the expected accuracy is their mean; the expected ROC AUC is the
AUC of the scores with each row counted as ``q`` of a positive and ``1 − q`` of a negative
(``weighted_auc``). The calibration map (Platt, score → probability) is fitted at registration on
held-out rows the model did not train on and stored as JSON in the drift reference (``performance``).
It assumes the label's relationship to the features holds (no concept drift): the realized metrics
are the ones that see a concept change.

Bounds: each metric's spread over windows of ``window_size`` held-out rows (bootstrap standard
deviation, scaled by ``sqrt(window_size / rows)`` for a window of another size) around its held-out
value; a metric where higher is better has a lower bound ``value − z·sd``, a loss an upper bound
``value + z·sd``, ``z`` the normal quantile of ``1 − feedback.bound_rate``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from raygbm.metrics import higher_is_better, realized_metrics, weighted_auc

ESTIMATED = ("roc_auc", "accuracy")  # binary only
FORMAT = "raygbm.performance/1"


def estimated_metrics(calibrated: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """CBPE: expected accuracy and ROC AUC of a binary classifier from its scores and their calibrated
    probabilities (see the module docstring)."""
    q = np.clip(np.asarray(calibrated, dtype=np.float64), 0.0, 1.0)
    if len(q) == 0:
        return {}
    scores = np.asarray(scores, dtype=np.float64)
    out = {"accuracy": float(np.mean(np.where(scores >= threshold, q, 1 - q)))}
    auc = weighted_auc(scores, q, 1 - q)
    return {"roc_auc": auc, **out} if auc is not None else out


class CalibrationMap:
    """Score → calibrated probability, kept as JSON. ``platt`` (the default): a logistic map of the score's
    log-odds, ``1 / (1 + exp(-(a·logit(s) + b)))``: two parameters, so fitted on a few thousand held-out
    rows it moves the estimate less than an ``isotonic`` step function (its knots, applied by linear
    interpolation as scikit-learn's ``IsotonicRegression.predict`` does), which is also read."""

    def __init__(self, kind: str, params: dict[str, Any]):
        if kind not in ("platt", "isotonic"):
            raise ValueError(f"unknown calibration map kind {kind!r}")
        self.kind, self.params = kind, params

    @classmethod
    def fit(cls, labels: np.ndarray, scores: np.ndarray, kind: str = "platt") -> CalibrationMap:
        if kind == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, labels)
            return cls(kind, {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()})
        from sklearn.linear_model import LogisticRegression

        if len(np.unique(labels)) < 2:
            return cls(kind, {"a": 1.0, "b": 0.0})
        lr = LogisticRegression(C=1e6, max_iter=1000).fit(_logit(scores)[:, None], labels)
        return cls(kind, {"a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])})

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        s = np.asarray(scores, dtype=np.float64)
        p = self.params
        if self.kind == "isotonic":
            return np.interp(s, np.asarray(p["x"], dtype=np.float64), np.asarray(p["y"], dtype=np.float64))
        return 1.0 / (1.0 + np.exp(-(p["a"] * _logit(s) + p["b"])))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.params}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> CalibrationMap:
        kind = doc.get("kind")
        keys = ("x", "y") if kind == "isotonic" else ("a", "b")
        return cls(str(kind), {k: doc[k] for k in keys if k in doc})


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-9, 1 - 1e-9)
    return np.log(p / (1 - p))


def performance_reference(task: str, y: np.ndarray, scores: np.ndarray, threshold: float, window_size: int,
                          draws: int = 200, seed: int = 0) -> dict[str, Any]:
    """What a window's performance is compared with, from held-out rows (labels ``y``, the model's
    ``scores``): each metric's value and its bootstrap spread at ``window_size`` rows, and for binary
    classifiers the calibration map of the scores. JSON-serialisable (stored in the drift reference)."""
    y, scores = np.asarray(y), np.asarray(scores)
    n = len(y)
    out: dict[str, Any] = {"format": FORMAT, "task": task, "threshold": float(threshold), "window_size": int(window_size),
                           "rows": int(n), "metrics": {}, "calibration": None}
    if n < 2:
        return out
    if task == "binary":
        out["calibration"] = CalibrationMap.fit(y.astype(np.float64), scores.astype(np.float64)).to_json()
    full = realized_metrics(task, y, scores, threshold)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {m: [] for m in full}
    for _ in range(draws):
        idx = rng.integers(0, n, size=window_size)
        for m, v in realized_metrics(task, y[idx], scores[idx], threshold).items():
            samples[m].append(v)
    out["metrics"] = {m: {"value": full[m], "sd": float(np.std(samples[m])) if len(samples[m]) > 1 else 0.0}
                      for m in full if math.isfinite(full[m])}
    return out


def normal_quantile(rate: float) -> float:
    """``z`` with P(Z > z) = ``rate`` for a standard normal Z."""
    from scipy.special import ndtri

    return float(ndtri(1.0 - rate))


def bound(reference: dict[str, Any], metric: str, rows: int, z: float) -> float | None:
    """The lower bound (higher-is-better metrics) or upper bound (losses) of ``metric`` in a window of
    ``rows`` rows; None when the reference does not have the metric."""
    ref = reference.get("metrics", {}).get(metric)
    if ref is None or rows <= 0:
        return None
    spread = z * ref["sd"] * math.sqrt(reference["window_size"] / rows)
    return ref["value"] - spread if higher_is_better(metric) else ref["value"] + spread


def beyond(metrics: dict[str, float], bounds: dict[str, float | None]) -> list[str]:
    """The metrics outside their bound (below a lower one, above a loss's upper one)."""
    out = []
    for m, v in metrics.items():
        b = bounds.get(m)
        if b is not None and (v < b if higher_is_better(m) else v > b):
            out.append(m)
    return out


class WindowPerformance:
    """Performance of one model version's drift windows: the scores of windows still open (binary, for
    the estimate made when a window closes) and the labelled rows of each kept window (by prediction id:
    a later label replaces an earlier one), from which the realized metrics are computed."""

    def __init__(self, task: str, threshold: float, reference: dict[str, Any] | None, bound_rate: float,
                 min_labelled_rows: int, keep_windows: int):
        self.task, self.threshold = task, float(threshold)
        self.reference = reference or {}
        cal = self.reference.get("calibration")
        self.calibration = CalibrationMap.from_json(cal) if cal and task == "binary" else None
        self.z = normal_quantile(bound_rate)
        self.min_labelled_rows, self.keep_windows = min_labelled_rows, keep_windows
        self._scores: dict[int, list[np.ndarray]] = {}
        self._labels: dict[int, dict[str, tuple[Any, Any]]] = {}
        self._realized: dict[int, tuple[int, dict[str, float]]] = {}  # window → (labelled rows, metrics), until new labels

    def add_scores(self, windows: np.ndarray, scores: np.ndarray) -> None:
        """Served rows' scores by the window they fell in (kept only where an estimate can be made)."""
        if self.calibration is None or len(windows) == 0:
            return
        for w in np.unique(windows):
            self._scores.setdefault(int(w), []).append(np.asarray(scores)[windows == w])

    def closed(self, index: int) -> dict[str, float]:
        """The estimated metrics of window ``index``, now closed (its scores are let go)."""
        parts = self._scores.pop(index, [])
        for w in [w for w in self._scores if w < index]:
            del self._scores[w]
        if self.calibration is None or not parts:
            return {}
        s = np.concatenate(parts)
        return estimated_metrics(self.calibration(s), s, self.threshold)

    def add_labels(self, windows: np.ndarray, ids: list[str], y: np.ndarray, scores: Any) -> None:
        """Labelled rows (``y`` encoded as ``realized_metrics`` takes it) by window."""
        for k, (w, pid) in enumerate(zip(np.asarray(windows).tolist(), ids)):
            if w is None or w < 0:
                continue
            self._labels.setdefault(int(w), {})[pid] = (y[k], scores[k])
            self._realized.pop(int(w), None)  # a later label may replace one: recompute
        if self._labels:
            oldest = max(self._labels) - self.keep_windows
            for w in [w for w in self._labels if w <= oldest]:
                self._labels.pop(w, None)
                self._realized.pop(w, None)

    def realized(self, index: int) -> tuple[int, dict[str, float]]:
        rows = self._labels.get(index, {})
        cached = self._realized.get(index)
        if cached is not None:
            return cached
        metrics: dict[str, float] = {}
        if len(rows) >= self.min_labelled_rows:
            y = np.array([v[0] for v in rows.values()])
            s = np.array([v[1] for v in rows.values()], dtype=np.float64)
            metrics = realized_metrics(self.task, y, s, self.threshold)
        self._realized[index] = (len(rows), metrics)
        return self._realized[index]

    def describe(self, index: int, rows: int, estimated: dict[str, float] | None) -> dict[str, Any]:
        """A window's ``performance`` entry of ``GET /drift`` (``rows``: its served rows)."""
        labelled, realized = self.realized(index)
        estimated = estimated or {}
        bounds = {"realized": self._bounds(realized, labelled), "estimated": self._bounds(estimated, rows)}
        flat = {k: {m: next(iter(b.values())) for m, b in v.items()} for k, v in bounds.items()}
        return {"labelled_rows": labelled, "realized": realized, "estimated": estimated, "bounds": bounds,
                "outside_bounds": {"realized": beyond(realized, flat["realized"]),
                                   "estimated": beyond(estimated, flat["estimated"])}}

    def _bounds(self, metrics: dict[str, float], rows: int) -> dict[str, dict[str, float]]:
        out = {}
        for m in metrics:
            b = bound(self.reference, m, rows, self.z)
            if b is not None:
                out[m] = {"lower" if higher_is_better(m) else "upper": b}
        return out

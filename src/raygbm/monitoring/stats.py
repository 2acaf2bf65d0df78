"""Histograms over reference bins and the distances between two histograms (PSI, Jensen–Shannon,
chi-square p-value). Plain numpy; scipy is imported only when a p-value is computed."""

from __future__ import annotations

import numpy as np

EPS = 1e-4  # floor of a bin's share in PSI and chi-square, so an empty bin does not divide by zero


def quantile_cuts(values: np.ndarray, n: int) -> list[float]:
    """Interior cut points at reference quantiles (unique, so a constant feature has one bin)."""
    qs = np.quantile(values, np.linspace(0, 1, n + 1)[1:-1]) if len(values) else np.array([])
    return sorted(set(float(q) for q in qs))


def hist(values: np.ndarray, cuts: list[float]) -> np.ndarray:
    """Counts of ``values`` in the ``len(cuts) + 1`` bins that ``cuts`` delimit."""
    idx = np.searchsorted(np.asarray(cuts), values, side="right")
    return np.bincount(idx, minlength=len(cuts) + 1).astype(np.float64)


def code_hist(values: np.ndarray, codes: list[int]) -> np.ndarray:
    """Counts of each of ``codes`` in ``values``, then of every other value."""
    lookup = {c: i for i, c in enumerate(codes)}
    idx = np.fromiter((lookup.get(int(v), len(codes)) for v in values), dtype=np.int64, count=len(values))
    return np.bincount(idx, minlength=len(codes) + 1)


def top_score(scores: np.ndarray) -> np.ndarray:
    """The score the prediction histogram bins: the score itself, or the top class probability."""
    s = scores.reshape(len(scores), -1)
    return s.max(axis=1) if s.shape[1] > 1 else s[:, 0]


def shares(counts: np.ndarray) -> np.ndarray:
    """Counts as shares of their total (all zeros when there are none)."""
    return counts / max(counts.sum(), 1)


def psi_rows(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Population stability index of each row of ``actual`` (shares) against ``expected`` (shares);
    ``psi`` is its one-row case, so calibration draws and served windows are scored by the same code."""
    e = np.clip(expected, EPS, None)
    a = np.clip(actual, EPS, None)
    return np.sum((a - e) * np.log(a / e), axis=-1)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index between two histograms of shares."""
    return float(psi_rows(expected, np.asarray(actual)[None, :])[0])


def js_distance_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen–Shannon distance (base 2, so in [0, 1]) of each row of ``q`` against ``p`` (histograms,
    normalised here); ``js_distance`` is its one-row case."""
    p = p / np.maximum(p.sum(axis=-1, keepdims=True), 1e-12)
    q = q / np.maximum(q.sum(axis=-1, keepdims=True), 1e-12)
    p, q = np.broadcast_arrays(p, q)
    m = (p + q) / 2

    def kl(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        safe_y = np.where(x > 0, y, 1.0)  # y >= x / 2 > 0 wherever x > 0: the mask only avoids 0 * log(0)
        return np.sum(np.where(x > 0, x * np.log2(np.where(x > 0, x, 1.0) / safe_y), 0.0), axis=-1)

    return np.sqrt(np.maximum(0.5 * kl(p, m) + 0.5 * kl(q, m), 0.0))


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon distance (base 2, so in [0, 1]) between two histograms."""
    return float(js_distance_rows(np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)[None, :])[0])


def chi_square_pvalue(expected_probs: np.ndarray, counts: np.ndarray) -> float:
    """p-value of a chi-square goodness-of-fit test of ``counts`` against ``expected_probs``."""
    from scipy.special import chdtrc  # the chi-square survival function; scipy.special imports lighter than scipy.stats

    n = counts.sum()
    if n == 0:
        return 1.0
    exp = np.clip(expected_probs, EPS, None)
    exp = exp / exp.sum() * n
    stat = float(np.sum((counts - exp) ** 2 / exp))
    return float(chdtrc(max(len(counts) - 1, 1), stat))

"""Drift thresholds calibrated under no drift: for each feature and the model's score, the value its
statistic exceeds in only ``false_alarm_rate`` of clean windows of a given size.

Clean windows are simulated on binned counts, not rows: a window of ``n`` rows drawn with replacement
from held-out rows is a multinomial draw of ``n`` over the held-out rows' counts per reference bin (or
code). Each draw is scored against the reference by the functions a served window is scored with
(``stats.psi_rows``, ``stats.js_distance_rows``), so the null covers both sampling noise at that window
size and whatever separates held-out rows from the rows the reference bins came from.

The threshold is not the raw empirical quantile of the draws: at a rate of 0.001 that is set by the few
largest draws and moves by ±60% (in realised false-alarm rate) between seeds at 2,000 draws. Instead a
scaled chi-square ``a·χ²_ν`` is fitted to the draws by their mean and variance (Satterthwaite), the
distribution a PSI (and a squared JS distance) of multinomial counts takes, and its ``1 − rate``
quantile is the threshold. Checked against 2M-draw empirical quantiles (10 equal bins, a 51-code Zipf
feature, a 5% binary bin, windows of 200–5,000 rows, held-out shares off the reference by ±10%), the
realised rate at a configured 0.001 was 0.0007–0.0013, varying ±6% between seeds at 20,000 draws
(±20% at 2,000; the default 10,000 is in between).

A missing rate is calibrated exactly: the served null count of a field missing at rate ``p`` is
binomial, so its threshold is the smallest ``|rate − p|`` exceeded with probability at most the rate.

Floors (``FLOORS``): a calibrated threshold is never below the smallest change worth an alarm, so a
(nearly) constant feature, whose null draws are all 0, and very large windows, whose noise vanishes, do
not alarm on negligible shifts. PSI 0.01 is about a 0.1-standard-deviation mean shift of a normal
feature over ten quantile bins; a JS distance of 0.04 is the same histogram change for a categorical
feature (JSD ≈ PSI / (8 ln 2) for small changes); one percentage point of missing rate.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from raygbm.monitoring.stats import js_distance_rows, psi_rows

FLOORS = {"psi": 0.01, "js_distance": 0.04, "missing_rate_delta": 0.01}
ESTIMATOR = "scaled_chi2"  # see the module docstring
CHUNK = 5000  # draws scored at a time (bounds memory for features with many codes)


def feature_statistic(kind: str) -> str:
    """The statistic calibrated for a feature of ``kind``: PSI for numeric bins, the JS distance for
    categorical codes (its chi-square p-value alone flags negligible shifts once windows are large)."""
    return "psi" if kind == "numeric" else "js_distance"


def _rng(seed: int, name: str) -> np.random.Generator:
    """A generator per feature, independent of the others' order (a model with a feature dropped
    calibrates the rest identically)."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def null_draws(probs: list[float], holdout: list[float], n: int, draws: int, statistic: str,
               rng: np.random.Generator, same_rows: bool = False) -> np.ndarray:
    """``statistic`` of ``draws`` simulated clean windows of ``n`` rows against the reference ``probs``.

    ``holdout``: the held-out rows' counts per reference bin; for numeric features one more count
    (rows without a value), drawn and then left out as ``bin_counts`` leaves NaNs out of a window.
    ``same_rows``: the reference's bins and shares were computed from these held-out rows themselves
    (the score's), so they match the held-out counts exactly, while a served clean window also differs
    from the reference by that sample's own noise: each draw first resamples the held-out rows (a
    parametric bootstrap of the population), then the window from that resample."""
    h = np.asarray(holdout, dtype=np.float64)
    expected = np.asarray(probs, dtype=np.float64)
    k = len(expected)
    rows = int(round(h.sum()))
    score: Callable[[np.ndarray, np.ndarray], np.ndarray] = psi_rows if statistic == "psi" else js_distance_rows
    out = []
    for start in range(0, draws, CHUNK):
        size = min(CHUNK, draws - start)
        if same_rows and rows > 0:
            population = rng.multinomial(rows, h / h.sum(), size=size) / rows
            counts = rng.multinomial(n, population)[:, :k].astype(np.float64)
        else:
            counts = rng.multinomial(n, h / h.sum(), size=size)[:, :k].astype(np.float64)
        out.append(score(expected, counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)))
    return np.concatenate(out)


def tail_threshold(null: np.ndarray, rate: float, statistic: str) -> float:
    """The ``1 − rate`` quantile of a scaled chi-square fitted to the draws by mean and variance (of the
    squared distance for ``js_distance``, which is the chi-square-like quantity)."""
    from scipy.special import chdtri  # inverse chi-square survival function

    x = null**2 if statistic == "js_distance" else null
    mean, var = float(x.mean()), float(x.var())
    if mean <= 0 or var <= 0:  # all draws equal (a constant feature): nothing to fit
        q = float(x.max())
    else:
        q = var / (2 * mean) * float(chdtri(2 * mean * mean / var, rate))
    return math.sqrt(q) if statistic == "js_distance" else q


def missing_threshold(p: float, n: int, rate: float) -> float:
    """The smallest ``t`` with P(|X/n − p| > t) ≤ ``rate`` for X ~ Binomial(n, p): exact, from the pmf."""
    from scipy.special import bdtr  # the binomial CDF

    if p <= 0 or p >= 1:
        return 0.0
    cdf = bdtr(np.arange(n + 1), n, p)
    pmf = np.diff(np.concatenate([[0.0], cdf]))
    # Deviations |k/n − p| (rounded: k on either side of np can tie), ascending, with their probability.
    raw = np.abs(np.arange(n + 1) / n - p)  # as a window's rate minus the reference's is computed
    dev, inverse = np.unique(np.round(raw, 12), return_inverse=True)
    mass = np.bincount(inverse, weights=pmf, minlength=len(dev))
    above = np.concatenate([np.cumsum(mass[::-1])[::-1][1:], [0.0]])  # P(deviation > dev[j])
    largest = np.zeros(len(dev))
    np.maximum.at(largest, inverse, raw)  # a tie's largest float, so none of its counts exceeds it
    return float(largest[int(np.argmax(above <= rate))])


def calibrate(reference: dict[str, Any], holdout: dict[str, Any], window_size: int, rate: float, draws: int,
              seed: int = 0) -> dict[str, Any]:
    """Thresholds for windows of ``window_size`` rows: per feature (its ``feature_statistic``), for the
    prediction's PSI and per raw field's missing rate, each at least its floor. ``holdout``: the held-out
    counts ``reference_profile`` stores (``features``: per feature, ``prediction``)."""
    def floored(statistic: str, value: float) -> float:
        return max(value, FLOORS[statistic])

    feats: dict[str, dict[str, float]] = {}
    for name, ref in reference["features"].items():
        if name not in holdout["features"]:
            continue
        stat = feature_statistic(ref["kind"])
        null = null_draws(ref["probs"], holdout["features"][name], window_size, draws, stat, _rng(seed, name))
        feats[name] = {stat: floored(stat, tail_threshold(null, rate, stat))}
    # The score's bins are quantiles of the held-out scores themselves (see drift.reference).
    pred = null_draws(reference["prediction"]["probs"], holdout["prediction"], window_size, draws, "psi",
                      _rng(seed, "__prediction__"), same_rows=True)
    missing = {name: {"missing_rate_delta": floored("missing_rate_delta", missing_threshold(float(p), window_size, rate))}
               for name, p in reference.get("missing_rate", {}).items()}
    return {"features": feats, "prediction": {"psi": floored("psi", tail_threshold(pred, rate, "psi"))}, "missing": missing}

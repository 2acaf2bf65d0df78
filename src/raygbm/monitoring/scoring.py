"""Scoring one window's counts against the reference, one feature at a time: PSI for numeric features
and the model's scores, a chi-square p-value together with the Jensen–Shannon distance for categorical
features (or, with a calibrated threshold, the Jensen–Shannon distance alone), the change in missing
rate for raw fields. Each function returns the entry a closed window's document holds for it (``GET
/drift`` and ``windows.jsonl``: its keys and their order are kept, new keys come last)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NotRequired, TypedDict

import numpy as np

from raygbm.monitoring.stats import chi_square_pvalue, js_distance, psi, shares


class FeatureScore(TypedDict):
    """A feature's (or the prediction's) entry in a closed window."""

    statistic: str  # "psi", "chi2_pvalue" or (a categorical feature's calibrated threshold) "js_distance"
    value: float
    threshold: float
    drift: bool
    js_distance: float
    current: list[float]  # the window's share per reference bin (or code), rounded
    threshold_source: NotRequired[str]  # "calibrated", "static" or "override" (absent in windows logged before)
    chi2_pvalue: NotRequired[float]  # when the statistic is "js_distance": the p-value, for information
    js_threshold: NotRequired[float]  # when the statistic is "chi2_pvalue": the JS distance drift also needs


class MissingScore(TypedDict):
    """A raw field's missing-rate entry in a closed window."""

    statistic: str  # "missing_rate_delta"
    value: float  # the window's missing rate minus the reference's
    rate: float
    threshold: float
    drift: bool
    threshold_source: NotRequired[str]


def _rounded(actual: np.ndarray) -> list[float]:
    return [round(float(x), 6) for x in actual]


def score_numeric(probs: Sequence[float], counts: np.ndarray, psi_threshold: float, source: str = "static") -> FeatureScore:
    """PSI of the window's counts against the reference's shares ``probs``; drift above ``psi_threshold``
    (set as ``source`` says)."""
    expected, actual = np.asarray(probs), shares(counts)
    value = psi(expected, actual)
    return {"statistic": "psi", "value": value, "threshold": psi_threshold, "drift": bool(value > psi_threshold),
            "js_distance": js_distance(expected, actual), "current": _rounded(actual), "threshold_source": source}


def score_categorical(probs: Sequence[float], counts: np.ndarray, pvalue_threshold: float,
                      js_threshold: float, source: str = "static") -> FeatureScore:
    """Chi-square p-value of the window's code counts against the reference's shares ``probs``; drift
    below ``pvalue_threshold`` with a JS distance above ``js_threshold``."""
    expected, actual = np.asarray(probs), shares(counts)
    value = chi_square_pvalue(expected, counts)
    js = js_distance(expected, actual)
    # A p-value alone flags negligible shifts once windows are large: require both.
    drift = value < pvalue_threshold and js > js_threshold
    return {"statistic": "chi2_pvalue", "value": value, "threshold": pvalue_threshold, "drift": bool(drift),
            "js_distance": js, "current": _rounded(actual), "threshold_source": source, "js_threshold": js_threshold}


def score_categorical_js(probs: Sequence[float], counts: np.ndarray, js_threshold: float,
                         source: str = "calibrated") -> FeatureScore:
    """JS distance of the window's code counts against the reference's shares ``probs``; drift above
    ``js_threshold``. Used with a calibrated threshold, which already holds false alarms to the configured
    rate; the chi-square p-value is reported alongside, not required (its approximation is poor for the
    sparse codes a long-tailed feature has)."""
    expected, actual = np.asarray(probs), shares(counts)
    js = js_distance(expected, actual)
    return {"statistic": "js_distance", "value": js, "threshold": js_threshold, "drift": bool(js > js_threshold),
            "js_distance": js, "current": _rounded(actual), "threshold_source": source,
            "chi2_pvalue": chi_square_pvalue(expected, counts)}


def score_missing(reference_rate: float, missing: int, rows: int, threshold: float, source: str = "static") -> MissingScore:
    """A field null in ``missing`` of the window's ``rows``; drift when its rate moved more than ``threshold``."""
    rate = missing / max(rows, 1)
    delta = rate - float(reference_rate)
    return {"statistic": "missing_rate_delta", "value": delta, "rate": rate, "threshold": threshold,
            "drift": bool(abs(delta) > threshold), "threshold_source": source}

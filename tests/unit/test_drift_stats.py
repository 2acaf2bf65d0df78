"""Drift statistics and histograms over a reference's bins (plain numpy)."""

import numpy as np
import pytest

from raygbm.monitoring.reference import bin_counts, reference_profile
from raygbm.monitoring.stats import (
    chi_square_pvalue,
    code_hist,
    hist,
    js_distance,
    psi,
    quantile_cuts,
    shares,
    top_score,
)


def test_statistics():
    p = np.array([0.25, 0.25, 0.5])
    assert psi(p, p) == pytest.approx(0) and js_distance(p, p) == pytest.approx(0)
    q = np.array([0.5, 0.25, 0.25])
    assert psi(p, q) > 0.1 and 0 < js_distance(p, q) < 1
    assert js_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    assert chi_square_pvalue(p, np.array([250.0, 250.0, 500.0])) > 0.9
    assert chi_square_pvalue(p, np.array([500.0, 250.0, 250.0])) < 1e-6
    assert chi_square_pvalue(p, np.zeros(3)) == 1.0  # an empty window is no evidence of drift


def test_histograms_over_cuts_and_codes():
    assert quantile_cuts(np.arange(100.0), 4) == pytest.approx([24.75, 49.5, 74.25])
    assert quantile_cuts(np.full(50, 3.0), 10) == [3.0]  # a constant feature: one cut, two bins
    assert quantile_cuts(np.array([]), 10) == []
    # A value on a cut falls in the bin above it; the last bin is open-ended.
    assert hist(np.array([-5.0, 0.0, 0.5, 1.0, 9.0]), [0.0, 1.0]).tolist() == [1.0, 2.0, 2.0]
    # Codes in the order given, then every code not listed.
    assert code_hist(np.array([2.0, 2.0, 1.0, 7.0, 3.0]), [2, 1]).tolist() == [2, 1, 2]
    assert shares(np.array([1.0, 3.0])).tolist() == [0.25, 0.75] and shares(np.zeros(2)).tolist() == [0.0, 0.0]


def test_top_score_is_the_score_or_the_top_class_probability():
    assert top_score(np.array([0.2, 0.9])).tolist() == [0.2, 0.9]
    assert top_score(np.array([[0.2], [0.9]])).tolist() == [0.2, 0.9]
    assert top_score(np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])).tolist() == [0.7, 0.5]


def test_reference_profile_and_served_counts_over_it():
    X = np.column_stack([[0.0, 1.0, 2.0, 3.0, np.nan], [1.0, 1.0, 1.0, 2.0, 5.0]])
    ref = reference_profile(X, ["x", "k"], ["k"], np.array([0.1, 0.2, 0.3, 0.4, 0.5]), {"x": 0.2},
                            bins=2, max_categories=2)
    assert list(ref) == ["format", "features", "prediction", "missing_rate", "rows"]
    assert ref["format"] == "raygbm.reference/2" and ref["rows"] == 5 and ref["missing_rate"] == {"x": 0.2}
    assert ref["features"]["x"] == {"kind": "numeric", "cuts": [1.5], "probs": [0.5, 0.5]}  # NaN left out
    assert ref["features"]["k"] == {"kind": "categorical", "codes": [1, 2], "probs": [0.6, 0.2, 0.2]}  # 5: "other"
    assert ref["prediction"] == {"cuts": [0.3], "probs": [0.4, 0.6]}
    assert bin_counts(ref["features"]["x"], np.array([0.0, 2.0, 3.0, np.nan])).tolist() == [1.0, 2.0]
    assert bin_counts(ref["features"]["k"], np.array([2.0, 2.0, 9.0])).tolist() == [0, 2, 1]

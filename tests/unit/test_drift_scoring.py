"""Scoring one window's counts for one feature: the entries of a closed window's document."""

import numpy as np
import pytest

from raygbm.monitoring.scoring import score_categorical, score_missing, score_numeric

REF = [0.25, 0.25, 0.5]


def test_a_numeric_feature_drifts_above_its_psi_threshold():
    same = score_numeric(REF, np.array([25.0, 25.0, 50.0]), 0.2)
    # The JSON's key order: the keys windows were logged with first, then the threshold's source.
    assert list(same) == ["statistic", "value", "threshold", "drift", "js_distance", "current", "threshold_source"]
    assert same["statistic"] == "psi" and same["value"] == pytest.approx(0) and same["drift"] is False
    assert same["threshold"] == 0.2 and same["current"] == [0.25, 0.25, 0.5]
    moved = score_numeric(REF, np.array([2.0, 0.0, 1.0]), 0.2)
    assert moved["drift"] is True and moved["value"] > 0.2 and 0 < moved["js_distance"] < 1
    assert moved["current"] == [0.666667, 0.0, 0.333333]  # rounded to 6 places
    assert score_numeric(REF, np.array([2.0, 0.0, 1.0]), 50.0)["drift"] is False


def test_a_categorical_feature_drifts_only_when_unlikely_and_far():
    counts = np.array([500.0, 250.0, 250.0])
    both = score_categorical(REF, counts, 0.01, 0.1)
    assert list(both) == ["statistic", "value", "threshold", "drift", "js_distance", "current", "threshold_source",
                          "js_threshold"]
    assert both["js_threshold"] == 0.1  # the second condition of the flag, for the report
    assert both["statistic"] == "chi2_pvalue" and both["threshold"] == 0.01
    assert both["value"] < 1e-6 and both["js_distance"] > 0.1 and both["drift"] is True
    # A tiny p-value alone (a large window, a small shift) is not drift: the JS distance must be large too.
    assert score_categorical(REF, counts, 0.01, 0.5)["drift"] is False
    assert score_categorical(REF, np.array([250.0, 250.0, 500.0]), 0.01, 0.0)["drift"] is False
    assert score_categorical(REF, np.zeros(3), 0.01, 0.1)["value"] == 1.0


def test_a_missing_rate_drifts_when_it_moves_either_way():
    up = score_missing(0.1, 30, 100, 0.1)
    assert list(up) == ["statistic", "value", "rate", "threshold", "drift", "threshold_source"]
    assert up["statistic"] == "missing_rate_delta" and up["rate"] == pytest.approx(0.3)
    assert up["value"] == pytest.approx(0.2) and up["drift"] is True
    down = score_missing(0.5, 0, 100, 0.1)
    assert down["value"] == pytest.approx(-0.5) and down["drift"] is True
    assert score_missing(0.1, 12, 100, 0.1)["drift"] is False
    assert score_missing(0.0, 0, 0, 0.1) == {"statistic": "missing_rate_delta", "value": 0.0, "rate": 0.0,
                                             "threshold": 0.1, "drift": False, "threshold_source": "static"}

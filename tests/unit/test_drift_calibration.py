"""Calibrated drift thresholds without Ray: the null draws, the fitted tail against a large simulation, the
exact missing-rate bound, floors, where each threshold comes from, recalibration for another window size
or for a window closed by time, and the reference's stored calibration."""

import json

import numpy as np
import pytest
from scipy.special import bdtr

from raygbm.config import MonitorConfig
from raygbm.monitoring.calibration import FLOORS, calibrate, missing_threshold, null_draws, tail_threshold
from raygbm.monitoring.reference import Calibration, reference_profile
from raygbm.monitoring.stats import js_distance, js_distance_rows, psi, psi_rows
from raygbm.monitoring.windows import DriftMonitorCore

NAMES = ["a", "flat", "c"]


def _data(n, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n) + shift
    a[rng.random(n) < 0.05] = np.nan  # rows without a value: left out of the window's counts
    c = rng.choice([1, 2, 3, 4, 5], size=n, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    return np.column_stack([a, np.ones(n), c.astype(float)]), 1 / (1 + np.exp(-np.nan_to_num(a)))


def _reference(window=500, rate=0.001, draws=2000):
    X, _ = _data(20_000, 0)
    held, _ = _data(5_000, 1)
    _, scores = _data(5_000, 2)
    cal = Calibration(held, window, rate, draws, {"features": "validation", "prediction": "test"})
    return reference_profile(X, NAMES, ["c"], scores, {"a": 0.05, "c": 0.0}, calibration=cal)


def test_row_statistics_are_the_window_statistics():
    rng = np.random.default_rng(0)
    e = rng.dirichlet(np.ones(6))
    rows = rng.multinomial(200, e, size=5) / 200.0
    rows[0, 2] = 0.0  # an empty bin
    assert psi_rows(e, rows) == pytest.approx([psi(e, r) for r in rows], rel=1e-12)
    assert js_distance_rows(e, rows) == pytest.approx([js_distance(e, r) for r in rows], rel=1e-12)


@pytest.mark.parametrize("probs,n,stat", [
    (np.full(10, 0.1), 1000, "psi"),
    (1 / np.arange(1, 31) ** 1.1, 500, "js_distance"),  # a long-tailed categorical feature
    (np.array([0.95, 0.05]), 2000, "psi"),  # a rare bin
])
def test_the_fitted_tail_gives_about_the_configured_rate(probs, n, stat):
    probs = probs / probs.sum()
    t = tail_threshold(null_draws(probs, probs * 1e6, n, 10_000, stat, np.random.default_rng(1)), 0.001, stat)
    truth = null_draws(probs, probs * 1e6, n, 1_000_000, stat, np.random.default_rng(2))
    assert 0.0005 < float((truth > t).mean()) < 0.0016  # the configured rate, ±50% (measured: ±30% at most)


def test_a_missing_rate_threshold_is_the_exact_binomial_bound():
    for p, n in [(0.1, 1000), (0.01, 1000), (0.5, 100), (0.03, 500)]:
        t = missing_threshold(p, n, 0.001)
        k = np.arange(n + 1)
        pmf = np.diff(np.concatenate([[0.0], bdtr(k, n, p)]))
        dev = np.abs(k / n - p)
        assert pmf[dev > t].sum() <= 0.001 < pmf[dev >= t].sum()  # no smaller threshold keeps the rate
    assert missing_threshold(0.0, 1000, 0.001) == 0.0


def test_reference_stores_held_out_counts_and_floored_thresholds():
    ref = _reference()
    assert ref["format"] == "raygbm.reference/2" and list(ref)[-2:] == ["holdout", "calibration"]
    json.dumps(ref, allow_nan=False)  # the bundle writes it this way
    held = ref["holdout"]
    assert held["rows"] == {"features": 5000, "prediction": 5000} and held["source"]["prediction"] == "test"
    assert len(held["features"]["a"]) == len(ref["features"]["a"]["probs"]) + 1  # then the rows without a value
    assert 200 < held["features"]["a"][-1] < 300
    assert sum(held["features"]["c"]) == 5000 and sum(held["prediction"]) == 5000
    cal = ref["calibration"]
    assert {k: cal[k] for k in ("window_size", "false_alarm_rate", "draws")} == {"window_size": 500, "false_alarm_rate": 0.001, "draws": 2000}
    th = cal["thresholds"]
    assert th["features"]["flat"] == {"psi": FLOORS["psi"]}  # a constant feature: its null is 0, the floor holds
    assert 9 / 500 < th["features"]["a"]["psi"] < 0.1  # above the null's mean (bins − 1) / n, far below 0.2
    assert FLOORS["js_distance"] < th["features"]["c"]["js_distance"] < 0.15
    assert th["missing"]["c"] == {"missing_rate_delta": FLOORS["missing_rate_delta"]}
    assert th["missing"]["a"]["missing_rate_delta"] == pytest.approx(missing_threshold(0.05, 500, 0.001))
    assert th == calibrate(ref, held, 500, 0.001, 2000)  # deterministic: deploy recomputes the same


def test_each_threshold_says_where_it_came_from():
    ref = _reference()
    cfg = MonitorConfig(window_size=500, calibration_draws=2000, thresholds={"a": {"psi": 0.5}, "c": {"chi2_pvalue": 0.05}})
    core = DriftMonitorCore(ref, NAMES, cfg, ["a", "c"])
    X, s = _data(500, 3)
    core.observe(X, s, np.zeros((500, 2), dtype=bool))
    report = core.report()
    w = report["windows"][0]
    assert (w["features"]["a"]["threshold"], w["features"]["a"]["threshold_source"]) == (0.5, "override")
    assert w["features"]["c"]["statistic"] == "chi2_pvalue" and w["features"]["c"]["threshold_source"] == "override"
    assert w["features"]["c"]["threshold"] == 0.05
    th = ref["calibration"]["thresholds"]
    assert (w["features"]["flat"]["threshold"], w["features"]["flat"]["threshold_source"]) == (th["features"]["flat"]["psi"], "calibrated")
    assert (w["prediction"]["threshold"], w["prediction"]["threshold_source"]) == (th["prediction"]["psi"], "calibrated")
    assert w["missing"]["a"]["threshold"] == th["missing"]["a"]["missing_rate_delta"]
    assert report["thresholds"] == {
        "mode": "calibrated", "false_alarm_rate": 0.001, "window_size": 500, "draws": 2000, "estimator": "scaled_chi2",
        "floors": FLOORS, "calibrated_at": "registration", "held_out": {"source": {"features": "validation", "prediction": "test"},
                                                                        "rows": {"features": 5000, "prediction": 5000}},
        "overrides": ["a", "c"]}
    js_only = DriftMonitorCore(ref, NAMES, MonitorConfig(window_size=500, calibration_draws=2000, thresholds={"c": {"js_distance": 0.3}}))
    js_only.observe(X, s)
    entry = js_only.report()["windows"][0]["features"]["c"]
    assert (entry["statistic"], entry["threshold"], entry["threshold_source"]) == ("js_distance", 0.3, "override")
    assert list(entry)[-2:] == ["threshold_source", "chi2_pvalue"] and 0 <= entry["chi2_pvalue"] <= 1


def test_another_window_size_or_rate_recalibrates_at_deploy():
    ref = _reference()
    stored = ref["calibration"]["thresholds"]
    bigger = DriftMonitorCore(ref, NAMES, MonitorConfig(window_size=2000, calibration_draws=2000))
    assert bigger.thresholds.calibrated(2000) == calibrate(ref, ref["holdout"], 2000, 0.001, 2000)
    assert bigger.thresholds.calibrated(2000)["prediction"]["psi"] < stored["prediction"]["psi"]  # less noise
    assert bigger.report()["thresholds"]["calibrated_at"] == "deploy"
    looser = DriftMonitorCore(ref, NAMES, MonitorConfig(window_size=500, calibration_draws=2000, false_alarm_rate=0.01))
    assert looser.thresholds.calibrated(500)["features"]["a"]["psi"] < stored["features"]["a"]["psi"]


def test_a_window_closed_by_time_is_held_to_thresholds_for_its_rows():
    ref = _reference()
    core = DriftMonitorCore(ref, NAMES, MonitorConfig(window_size=500, calibration_draws=2000, window_seconds=10,
                                                      min_window_rows=100))
    X, s = _data(150, 4)
    core.observe(X, s, ts=0.0)
    core.tick(20.0)
    w = core.report()["windows"][0]
    assert w["closed_by"] == "time" and w["rows"] == 150
    assert w["prediction"]["threshold"] == calibrate(ref, ref["holdout"], 150, 0.001, 2000)["prediction"]["psi"]
    assert w["prediction"]["threshold"] > ref["calibration"]["thresholds"]["prediction"]["psi"]


def test_a_reference_without_calibration_and_static_mode_use_the_static_thresholds():
    ref = _reference()
    old = {k: v for k, v in ref.items() if k not in ("holdout", "calibration")}
    for reference, mode, why in [(old, "calibrated", "registered before"), (ref, "static", "thresholds_mode is static")]:
        core = DriftMonitorCore(reference, NAMES, MonitorConfig(window_size=500, thresholds_mode=mode))
        X, s = _data(500, 5)
        core.observe(X, s)
        report = core.report()
        assert report["thresholds"]["mode"] == "static" and why in report["thresholds"]["reason"]
        w = report["windows"][0]
        assert w["features"]["a"]["threshold"] == 0.2 and w["features"]["a"]["threshold_source"] == "static"
        assert w["features"]["c"]["statistic"] == "chi2_pvalue" and w["prediction"]["threshold"] == 0.2


def test_calibrated_thresholds_flag_a_shift_the_static_ones_miss():
    ref = _reference()
    X, s = _data(500, 6, shift=0.3)
    calibrated = DriftMonitorCore(ref, NAMES, MonitorConfig(window_size=500, calibration_draws=2000))
    static = DriftMonitorCore(ref, NAMES, MonitorConfig(window_size=500, thresholds_mode="static"))
    for core in (calibrated, static):
        core.observe(X, s)
    assert calibrated.report()["windows"][0]["drifted_features"] == ["a"]
    assert static.report()["windows"][0]["verdict"] == "ok"


def test_the_html_report_says_how_thresholds_were_set():
    from raygbm.monitoring.report import drift_report_html

    core = DriftMonitorCore(_reference(), NAMES, MonitorConfig(window_size=500, calibration_draws=2000))
    X, s = _data(500, 7)
    core.observe(X, s)
    page = drift_report_html(core.report())
    assert "false-alarm rate of 0.001 per feature and window (2,000 simulated clean windows of 500 rows)" in page
    assert ", calibrated)" in page and "drift when JS &gt; its threshold; p for information" in page


def test_the_score_threshold_holds_its_rate_although_its_bins_come_from_the_held_out_scores():
    """The score's bins are quantiles of the test scores and its held-out counts are those same scores,
    so a served clean window differs from the reference by the test sample's noise as well as its own.
    Over 40 reference samples of 3,000 scores and windows of 1,500 rows, the realised false-alarm rate of
    the calibrated threshold stays near the configured 0.01 (it was 3× that when the draws ignored the
    reference's own noise)."""
    from scipy.stats import beta

    from raygbm.monitoring.stats import hist, quantile_cuts, shares

    rate, n, rows, rates = 0.01, 1500, 3000, []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        scores = rng.beta(2, 5, rows)
        cuts = quantile_cuts(scores, 10)
        probs = shares(hist(scores, cuts)).tolist()
        reference = {"features": {}, "prediction": {"cuts": cuts, "probs": probs}}
        holdout = {"features": {}, "prediction": hist(scores, cuts).tolist()}
        threshold = calibrate(reference, holdout, n, rate, 20_000, seed)["prediction"]["psi"]
        edges = np.concatenate([[0.0], cuts, [1.0]])
        truth = np.diff(beta.cdf(edges, 2, 5))  # a clean window's bin probabilities: the scores' own law
        windows = rng.multinomial(n, truth / truth.sum(), size=20_000) / n
        rates.append(float((psi_rows(np.asarray(probs), windows) > threshold).mean()))
    assert np.mean(rates) < 2 * rate, f"realised false-alarm rate {np.mean(rates):.4f} at a configured {rate}"

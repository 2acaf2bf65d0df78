"""Drift windows without Ray: the core's windows and verdicts, their JSON documents, the on-disk log and
the HTML report."""

import json

import numpy as np
import pytest

from raygbm.config import MonitorConfig
from raygbm.monitoring.reference import reference_profile
from raygbm.monitoring.report import drift_report_html
from raygbm.monitoring.window_log import WindowLog
from raygbm.monitoring.windows import DriftMonitorCore, window_from_json, window_to_json

NAMES = ["a", "b", "c"]


def _data(n, seed, shift=0.0, swap_cats=False):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n) + shift
    b = rng.normal(size=n)
    c = rng.choice([1, 2, 3, 4], size=n, p=[0.1, 0.2, 0.3, 0.4] if not swap_cats else [0.4, 0.3, 0.2, 0.1])
    scores = 1 / (1 + np.exp(-(a + 0.1 * b)))
    return np.column_stack([a, b, c.astype(float)]), scores


@pytest.fixture
def reference():
    X, s = _data(20_000, 0)
    return reference_profile(X, NAMES, ["c"], s, {"a": 0.0, "b": 0.0, "c": 0.0})


def test_clean_traffic_is_not_drift_and_shifted_features_are(reference):
    core = DriftMonitorCore(reference, NAMES, MonitorConfig(window_size=2000), fields=["a", "b", "c"])
    X, s = _data(6000, 1)
    core.observe(X, s)
    assert [w["verdict"] for w in core.report()["windows"]] == ["ok", "ok", "ok"]
    Xd, sd = _data(2500, 2, shift=1.5, swap_cats=True)
    mask = np.zeros((2500, 3), dtype=bool)
    mask[:1000, 1] = True  # b is missing in the first 1000 drifted rows (all in the window that closes)
    core.observe(Xd, sd, mask)
    report = core.report()
    w = report["windows"][-1]
    assert w["index"] == 3 and w["rows"] == 2000 and report["open_window_rows"] == 500
    assert w["verdict"] == "drift"
    assert w["features"]["a"]["drift"] and w["features"]["c"]["drift"] and not w["features"]["b"]["drift"]
    assert w["features"]["a"]["statistic"] == "psi" and w["features"]["c"]["statistic"] == "chi2_pvalue"
    assert w["missing"]["b"]["drift"] and w["missing"]["b"]["rate"] == pytest.approx(0.5)
    assert w["prediction"]["drift"]
    assert set(w["drifted_features"]) == {"a", "c", "b (missing)"}


def test_per_feature_thresholds(reference):
    X, s = _data(2000, 3, shift=0.3)
    loose = DriftMonitorCore(reference, NAMES, MonitorConfig(window_size=2000, psi=5.0, prediction_psi=5.0))
    loose.observe(X, s)
    strict = DriftMonitorCore(reference, NAMES, MonitorConfig(window_size=2000, psi=5.0, prediction_psi=5.0,
                                                              thresholds={"a": {"psi": 0.01}}))
    strict.observe(X, s)
    assert loose.report()["windows"][0]["verdict"] == "ok"
    assert strict.report()["windows"][0]["drifted_features"] == ["a"]
    assert strict.report()["windows"][0]["features"]["a"]["threshold"] == 0.01


def test_html_report_shows_windows_and_histograms(reference):
    core = DriftMonitorCore(reference, NAMES, MonitorConfig(window_size=1000))
    X, s = _data(1000, 4, shift=2.0)
    core.observe(X, s)
    page = drift_report_html({"model_version": "3", **core.report()})
    # Prediction and three features: one trend and one histogram each, two trends for the categorical one.
    assert page.count("<svg") == 9 and "class='drift'>drift<" in page and "model v3" in page
    assert ">code 1<" in page and "Never missing" not in page  # no labels in this reference; no missing checks
    empty = drift_report_html({"windows": []})
    assert empty.count("<svg") == 2 and "no scored window" in empty and "none closed yet" in empty


def test_time_windows_close_by_age_and_small_ones_are_not_scored(reference):
    cfg = MonitorConfig(window_size=10_000, window_seconds=60, min_window_rows=500)
    core = DriftMonitorCore(reference, NAMES, cfg)
    X, s = _data(1500, 5)
    core.observe(X[:1000], s[:1000], ts=1000.0)
    core.observe(X[1000:1100], s[1000:1100], ts=1030.0)
    assert list(core.closed) == []  # 30 s old: still open
    core.observe(X[1100:1200], s[1100:1200], ts=1061.0)  # the first window is 61 s old: closed first
    core.observe(X[1200:1300], s[1200:1300], ts=1130.0)  # and this one ends the 100-row second window
    first, second = core.closed
    assert first["rows"] == 1100 and first["closed_by"] == "time" and first["verdict"] == "ok"
    assert (first["first_ts"], first["last_ts"]) == (1000.0, 1030.0)
    assert second["rows"] == 100 and second["verdict"] == "insufficient_data" and second["prediction"] is None
    assert core.window.rows == 100 and core.window.first_ts == 1130.0
    core.tick(1150.0)
    assert core.index == 2
    core.tick(1190.0)  # no new rows: time alone closes the window (report() ticks with the wall clock)
    assert core.index == 3 and core.window.rows == 0


def test_windows_survive_a_restart_from_the_log(tmp_path, reference):
    cfg = MonitorConfig(window_size=1000, keep_windows=2)
    fields = ["a", "b", "c"]

    def started():
        core = DriftMonitorCore(reference, NAMES, cfg, fields)
        log = WindowLog(tmp_path / "v1", NAMES, fields, keep_windows=cfg.keep_windows)
        log.save_meta(reference)
        windows = log.load_windows()
        core.restore(windows, log.load_rows(windows[-1]["index"] + 1 if windows else 0))
        core.on_rows, core.on_close = log.add_rows, log.add_window
        return core, log

    core, log = started()
    X, s = _data(3700, 6, shift=1.0)
    mask = np.zeros((3700, 3), dtype=bool)
    mask[::7, 1] = True
    for i in range(0, 3700, 300):
        core.observe(X[i:i + 300], s[i:i + 300], mask[i:i + 300], ts=2000.0 + i)
    log.flush()
    before = core.report()
    assert [w["index"] for w in before["windows"]] == [1, 2] and before["open_window_rows"] == 700

    again, log2 = started()  # a new process: only what is on disk
    after = again.report()
    assert after["windows"] == before["windows"]
    assert after["open_window_rows"] == 700 and again.index == 3
    assert after["rows_seen"] == 3000 + 700 - 1000  # the first window fell out of the kept ones
    # Parts holding only windows no longer kept are gone: the log stays bounded.
    assert all(int(p.name.split("-")[2]) >= 1 for p in (tmp_path / "v1" / "rows").glob("part-*.parquet"))
    # Both continue identically: the restored open window closes with the same statistics.
    Y, t = _data(300, 7)
    core.observe(Y, t, np.zeros((300, 3), dtype=bool), ts=9000.0)
    again.observe(Y, t, np.zeros((300, 3), dtype=bool), ts=9000.0)
    assert core.report()["windows"][-1] == again.report()["windows"][-1]
    assert again.report()["windows"][-1]["rows"] == 1000 and again.report()["windows"][-1]["index"] == 3


def test_an_unwritable_log_never_stops_the_windows(tmp_path, reference):
    (tmp_path / "file").write_text("not a folder")
    log = WindowLog(tmp_path / "file" / "v1", NAMES, ["a", "b", "c"], flush_s=0.0)
    core = DriftMonitorCore(reference, NAMES, MonitorConfig(window_size=500), ["a", "b", "c"])
    core.on_rows, core.on_close = log.add_rows, log.add_window
    X, s = _data(1200, 8)
    core.observe(X, s, np.zeros((1200, 3), dtype=bool))
    log.flush()
    assert core.index == 2 and core.window.rows == 200 and len(core.report()["windows"]) == 2
    # The error names the log's role and the cause, never the server's path (GET /drift shows it).
    assert log.error == "the drift window log: Not a directory" and str(tmp_path) not in log.error


# A reference and two windows.jsonl lines as written before the monitor was split into raygbm.monitoring:
# a scored window, then one closed by time with too few rows. Such logs must still load.
OLD_REFERENCE = json.loads(
    '{"format": "raygbm.reference/1", "features": {"x": {"kind": "numeric", "cuts": [-0.5, 0.5], "probs": [0.3, 0.4, 0.3]},'
    ' "k": {"kind": "categorical", "codes": [2, 1], "probs": [0.5, 0.4, 0.1]}}, "prediction": {"cuts": [0.3, 0.7],'
    ' "probs": [0.3, 0.4, 0.3]}, "missing_rate": {"x": 0.0}, "rows": 400}')
OLD_LINES = [
    '{"index": 0, "rows": 10, "first_ts": 5.0, "last_ts": 5.0, "closed_by": "rows", "verdict": "drift", '
    '"drifted_features": ["x", "x (missing)"], "features": {"x": {"statistic": "psi", "value": 1.0128207810347198, '
    '"threshold": 0.2, "drift": true, "js_distance": 0.41729571218608374, "current": [0.111111, 0.111111, 0.777778]}, '
    '"k": {"statistic": "chi2_pvalue", "value": 0.13199384318783022, "threshold": 0.01, "drift": false, '
    '"js_distance": 0.3077566948228586, "current": [0.8, 0.1, 0.1]}}, "missing": {"x": {"statistic": '
    '"missing_rate_delta", "value": 0.3, "rate": 0.3, "threshold": 0.1, "drift": true}}, "prediction": {"statistic": '
    '"psi", "value": 0.1714798428091927, "threshold": 0.2, "drift": false, "js_distance": 0.17509683779086044, '
    '"current": [0.2, 0.3, 0.5]}, "model_version": "2"}',
    '{"index": 1, "rows": 2, "first_ts": 6.0, "last_ts": 6.0, "closed_by": "time", "verdict": "insufficient_data", '
    '"drifted_features": [], "features": {}, "missing": {}, "prediction": null, "model_version": "2"}',
]
OLD_CONFIG = MonitorConfig(window_size=10, window_seconds=60, min_window_rows=10)


def _old_inputs():
    """The rows the old code scored into OLD_LINES: 10 rows at ts 5 (x missing in 3), then 2 at ts 6."""
    x = [-1, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 0.0, np.nan]
    k = [2, 2, 2, 2, 2, 2, 2, 2, 1, 3]
    scores = np.array([0.1, 0.5, 0.5, 0.8, 0.9, 0.9, 0.9, 0.95, 0.2, 0.6])
    missing = np.zeros((10, 1), dtype=bool)
    missing[:3] = True
    return np.column_stack([x, k]), scores, missing


ADDED_KEYS = {"threshold_source", "thresholds", "js_threshold"}  # keys added after these logs were written: only ever appended


def _same_shape(new, old):
    """Equal up to float rounding, with the same keys in the same order at every level (added keys last)."""
    if isinstance(old, dict):
        assert list(new)[:len(old)] == list(old) and set(list(new)[len(old):]) <= ADDED_KEYS
        for key in old:
            _same_shape(new[key], old[key])
    elif isinstance(old, list):
        assert len(new) == len(old)
        for a, b in zip(new, old):
            _same_shape(a, b)
    elif isinstance(old, float):
        assert new == pytest.approx(old, rel=1e-9)
    else:
        assert new == old and type(new) is type(old)


def test_closed_windows_keep_the_json_the_old_code_wrote():
    core = DriftMonitorCore(OLD_REFERENCE, ["x", "k"], OLD_CONFIG, ["x"], {"model_version": "2"})
    lines = []
    core.on_close = lambda doc: lines.append(window_to_json(doc))
    X, s, missing = _old_inputs()
    core.observe(X, s, missing, ts=5.0)
    core.observe(X[:2], s[:2], None, ts=6.0)
    core.tick(100.0)
    assert len(lines) == 2
    for new, old in zip(lines, OLD_LINES):
        _same_shape(json.loads(new), json.loads(old))
    assert lines[1] == OLD_LINES[1]  # no floats computed: byte for byte


def test_a_closed_window_round_trips_through_json():
    for line in OLD_LINES:
        doc = window_from_json(line)
        assert window_to_json(doc) == line
    assert window_from_json(OLD_LINES[0])["features"]["k"]["drift"] is False
    with pytest.raises(ValueError):
        window_from_json(OLD_LINES[0][:40])


def test_a_log_written_by_the_old_code_loads_and_continues(tmp_path):
    root = tmp_path / "v2"
    root.mkdir()
    # The two lines, with one cut short by a crash between them (skipped).
    (root / "windows.jsonl").write_text(f"{OLD_LINES[0]}\n{OLD_LINES[0][:50]}\n{OLD_LINES[1]}\n")
    log = WindowLog(root, ["x", "k"], ["x"])
    windows = log.load_windows()
    assert [window_to_json(w) for w in windows] == OLD_LINES
    core = DriftMonitorCore(OLD_REFERENCE, ["x", "k"], OLD_CONFIG, ["x"], {"model_version": "2"})
    core.restore(windows, log.load_rows(windows[-1]["index"] + 1))
    assert core.index == 2 and core.rows_seen == 12 and core.window.rows == 0
    assert core.report()["windows"] == windows
    core.on_close = log.add_window
    X, s, missing = _old_inputs()
    core.observe(X, s, missing, ts=200.0)
    new = log.load_windows()[-1]
    assert new["index"] == 2 and new["first_ts"] == 200.0
    _same_shape({**new, "index": 0, "first_ts": 5.0, "last_ts": 5.0}, json.loads(OLD_LINES[0]))


def test_alert_after_m_of_n_windows_drifted(reference, tmp_path):
    cfg = MonitorConfig(window_size=500, alert_after={"m": 2, "n": 3}, window_seconds=60, min_window_rows=100)
    core = DriftMonitorCore(reference, NAMES, cfg)
    for i, shift in enumerate([0.0, 2.0, 2.0, 0.0, 0.0, 0.0]):
        X, s = _data(500, 20 + i, shift=shift)
        core.observe(X, s, ts=100.0 * i)
        if i == 2:  # a window closed by time with too few rows: not scored, the alert state carries over
            core.observe(X[:10], s[:10], ts=100.0 * i + 1)
            core.tick(100.0 * i + 70)
    windows = core.report()["windows"]
    assert [w["verdict"] for w in windows] == ["ok", "drift", "drift", "insufficient_data", "ok", "ok", "ok"]
    # Drift in 2 of the last 3 scored windows: from the second drifted window until one falls out.
    assert [w["alert"] for w in windows] == [False, False, True, True, True, False, False]
    assert list(windows[0])[-1] == "alert" and core.report()["alert_after"] == {"m": 2, "n": 3}
    # A restarted monitor continues the count from the windows it reloads.
    again = DriftMonitorCore(reference, NAMES, cfg)
    again.restore(windows[:3], [])
    X, s = _data(500, 40)
    again.observe(X, s, ts=1000.0)
    assert again.report()["windows"][-1]["alert"] is True
    plain = DriftMonitorCore(reference, NAMES, MonitorConfig(window_size=500))
    plain.observe(X, s)
    assert "alert" not in plain.report()["windows"][0] and plain.report()["alert_after"] is None


def test_labels_name_category_codes_and_the_decision_threshold(reference):
    from raygbm.monitoring.reference import with_labels
    from raygbm.monitoring.report import category_labels

    labelled = with_labels(reference, {"c": ["red", "green", "blue", "grey"]}, 0.3)
    c = labelled["features"]["c"]
    assert c["labels"] == [["red", "green", "blue", "grey"][k - 1] for k in c["codes"]]
    odd = {"features": {"k": {"kind": "categorical", "codes": [2, 0, 7], "probs": [0.5, 0.3, 0.1, 0.1]}}, "prediction": {}}
    assert with_labels(odd, {"k": [True, 3]}, None)["features"]["k"]["labels"] == ["3", "(missing or unseen)", "(missing or unseen)"]
    assert category_labels(c)[-1] == "other" and labelled["prediction"]["decision_threshold"] == 0.3
    assert "labels" not in labelled["features"]["a"] and "labels" not in reference["features"]["c"]  # a copy
    assert "decision_threshold" not in with_labels(reference, {}, None)["prediction"]
    # The statistics ignore the labels: the same windows either way.
    X, s = _data(2000, 9, swap_cats=True)
    docs = []
    for ref in (reference, labelled):
        core = DriftMonitorCore(ref, NAMES, MonitorConfig(window_size=1000))
        core.observe(X, s, ts=100.0)
        docs.append(core.report()["windows"])
    assert docs[0] == docs[1]
    page = drift_report_html(core.report())
    assert all(f">{v}<" in page for v in ("red", "green", "blue", "grey", "other")) and "threshold 0.3" in page

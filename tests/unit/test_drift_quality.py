"""Drift quality on generated data, without Ray: thresholds calibrated at registration flag every window
with a small known shift (a numeric feature, a categorical feature, the score) and false-alarm on clean
windows at no more than the configured rate; static thresholds miss the same shifts.

Rows come from ``raygbm generate`` (the same generator as ``make demo``): the reference bins from one
block, the held-out rows the thresholds are calibrated on from the next, the score's reference from a
third, and served windows from fresh rows after them, so the clean windows test the calibration on real
rows rather than on the multinomial draws it was computed from.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from scipy.special import bdtr

from raygbm.config import MonitorConfig
from raygbm.data.generate import CATEGORICAL, NUMERIC, GeneratorSpec, generate_dataset
from raygbm.monitoring.reference import Calibration, reference_profile
from raygbm.monitoring.windows import DriftMonitorCore

NAMES = NUMERIC + CATEGORICAL
WINDOW = 1000
RATE = 0.001
CLEAN_WINDOWS = 300
SHIFTED_WINDOWS = 30
# The shifts (each well below the static thresholds: PSI 0.08-0.15 against 0.2).
NUM_SHIFT = ("num_5", 0.35)  # mean shift, in standard deviations
CAT_SHIFT = ("cat_0", 0.2)  # share of rows whose category is swapped for its mirror in frequency rank
SCORE_SHIFT = 0.4  # on the logit of the score
BLOCKS = {"train": 100_000, "validation": 40_000, "test": 40_000}


def _codes(train: pa.Table) -> dict[str, dict[str, int]]:
    """Categories to codes as the preprocessor makes them: 1..K by training frequency, 0 missing/unseen."""
    out = {}
    for c in CATEGORICAL:
        vc = pc.value_counts(train[c].drop_null())
        order = np.argsort(-np.asarray(vc.field("counts")), kind="stable")
        out[c] = {v: i + 1 for i, v in enumerate(np.asarray(vc.field("values"))[order])}
    return out


def _matrix(t: pa.Table, codes: dict[str, dict[str, int]]) -> np.ndarray:
    cols = [t[c].to_numpy(zero_copy_only=False).astype(np.float64) for c in NUMERIC]  # nulls: NaN
    cols += [np.array([codes[c].get(v, 0) for v in t[c].to_pylist()], dtype=np.float64) for c in CATEGORICAL]
    return np.column_stack(cols)


def _score(X: np.ndarray, shift: float = 0.0) -> np.ndarray:
    """A fixed model: a probability from a few features (nulls count as 0)."""
    j = NAMES.index
    z = 0.9 * np.nan_to_num(X[:, j("num_0")]) - 0.6 * X[:, j("num_4")] + 0.5 * X[:, j("num_5")]
    return 1 / (1 + np.exp(-(z + 0.4 * (X[:, j("cat_2")] == 1) + shift)))


@lru_cache(maxsize=2)
def scenario(seed: int = 5, clean_windows: int = CLEAN_WINDOWS) -> tuple[dict, np.ndarray, np.ndarray]:
    """A calibrated reference, and served rows (features, missing mask) for the clean and shifted windows."""
    import tempfile
    from pathlib import Path

    served = (clean_windows + 3 * SHIFTED_WINDOWS) * WINDOW
    with tempfile.TemporaryDirectory() as d:
        generate_dataset(Path(d), GeneratorSpec(rows=sum(BLOCKS.values()) + served, seed=seed))
        table = pq.read_table(d)
    blocks, start = {}, 0
    for name, rows in BLOCKS.items():
        blocks[name], start = table.slice(start, rows), start + rows
    codes = _codes(blocks["train"])
    missing_rate = {c: blocks["train"][c].null_count / blocks["train"].num_rows for c in NAMES}
    calibration = Calibration(_matrix(blocks["validation"], codes), WINDOW, RATE, 10_000,
                              {"features": "validation", "prediction": "test"})
    reference = reference_profile(_matrix(blocks["train"], codes), NAMES, CATEGORICAL,
                                  _score(_matrix(blocks["test"], codes)), missing_rate, calibration=calibration)
    rest = table.slice(start)
    mask = np.column_stack([rest[c].is_null().to_numpy(zero_copy_only=False) for c in NAMES])
    return reference, _matrix(rest, codes), mask


def _windows(reference: dict, X: np.ndarray, scores: np.ndarray, mask: np.ndarray, **cfg) -> list[dict]:
    core = DriftMonitorCore(reference, NAMES, MonitorConfig(window_size=WINDOW, keep_windows=10_000, **cfg), NAMES)
    core.observe(X, scores, mask, ts=0.0)
    return core.report()["windows"]


def _shifted(X: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows with one known shift, and the model's scores on them."""
    X = X.copy()
    if kind == "numeric":
        X[:, NAMES.index(NUM_SHIFT[0])] += NUM_SHIFT[1]
        return X, _score(X)
    if kind == "categorical":
        col = X[:, NAMES.index(CAT_SHIFT[0])]  # a view: changed in place
        k = int(col.max())
        swap = (np.random.default_rng(0).random(len(col)) < CAT_SHIFT[1]) & (col > 0)
        col[swap] = k + 1 - col[swap]
        return X, _score(X)
    return X, _score(X, SCORE_SHIFT)


def false_alarms(windows: list[dict]) -> tuple[int, int]:
    """Flags raised in clean windows, and the checks made (features, score, missing rates per window)."""
    flags = sum(len(w["drifted_features"]) + int(w["prediction"]["drift"]) for w in windows)
    checks = sum(len(w["features"]) + 1 + len(w["missing"]) for w in windows)
    return flags, checks


def _binomial_upper(checks: int, rate: float, level: float = 0.999) -> int:
    """The largest number of flags that ``checks`` independent checks at ``rate`` exceed with probability
    below 1 − ``level`` (a one-sided binomial bound)."""
    return next(k for k in range(checks + 1) if bdtr(k, checks, rate) >= level)


@pytest.fixture(scope="module")
def data():
    return scenario()


def test_calibrated_thresholds_false_alarm_within_the_configured_rate(data):
    reference, X, mask = data
    n = CLEAN_WINDOWS * WINDOW
    windows = _windows(reference, X[:n], _score(X[:n]), mask[:n])
    assert len(windows) == CLEAN_WINDOWS and all(w["rows"] == WINDOW for w in windows)
    flags, checks = false_alarms(windows)
    # Tolerance: the count a true rate of RATE exceeds with probability 0.001 (10,500 checks: 21 flags,
    # a rate of 0.002). Measured here: 7 flags (0.00067); over seeds 5-9, see docs/monitoring.md.
    assert flags <= _binomial_upper(checks, RATE), (flags, checks)
    entry = windows[0]
    assert entry["prediction"]["threshold_source"] == "calibrated"
    assert entry["prediction"]["threshold"] == reference["calibration"]["thresholds"]["prediction"]["psi"]
    assert entry["features"]["cat_1"]["statistic"] == "js_distance"
    assert entry["missing"]["num_6"]["threshold_source"] == "calibrated"


@pytest.mark.parametrize("kind", ["numeric", "categorical", "score"])
def test_every_window_with_a_small_shift_is_flagged(data, kind):
    reference, X, mask = data
    i = ["numeric", "categorical", "score"].index(kind)
    rows = slice((CLEAN_WINDOWS + i * SHIFTED_WINDOWS) * WINDOW, (CLEAN_WINDOWS + (i + 1) * SHIFTED_WINDOWS) * WINDOW)
    Xs, scores = _shifted(X[rows], kind)
    calibrated = _windows(reference, Xs, scores, mask[rows])
    static = _windows(reference, Xs, scores, mask[rows], thresholds_mode="static")
    assert len(calibrated) == SHIFTED_WINDOWS
    if kind == "score":
        assert all(w["prediction"]["drift"] for w in calibrated)
        # The case: a clear score shift (PSI 0.08-0.15) that the static 0.2 never flags.
        assert not any(w["prediction"]["drift"] for w in static)
        assert all(0.05 < w["prediction"]["value"] < 0.2 for w in calibrated)
    else:
        name = NUM_SHIFT[0] if kind == "numeric" else CAT_SHIFT[0]
        assert all(name in w["drifted_features"] for w in calibrated), [w["drifted_features"] for w in calibrated]
        if kind == "numeric":
            assert not any(name in w["drifted_features"] for w in static)


def test_static_mode_scores_a_calibrated_reference_as_before(data):
    """thresholds_mode: static gives the documents an old (uncalibrated) reference gives, entry by entry."""
    reference, X, mask = data
    old = {k: v for k, v in reference.items() if k not in ("holdout", "calibration")} | {"format": "raygbm.reference/1"}
    n = 5 * WINDOW
    scores = _score(X[:n])
    static = _windows(reference, X[:n], scores, mask[:n], thresholds_mode="static")
    before = _windows(old, X[:n], scores, mask[:n])
    assert static == before
    w = static[0]
    assert w["features"]["num_1"]["threshold"] == 0.2 and w["features"]["num_1"]["threshold_source"] == "static"
    assert w["features"]["cat_1"]["statistic"] == "chi2_pvalue" and w["features"]["cat_1"]["threshold"] == 0.01
    assert w["prediction"]["threshold"] == 0.2 and w["missing"]["num_6"]["threshold"] == 0.1


def measured_false_alarm_rate(seeds: range = range(5, 10), clean_windows: int = 1000) -> str:
    """docs/monitoring.md's figure (Calibrated thresholds), per kind of check (a missing rate of a field
    never missing cannot alarm):
    ``PYTHONPATH=. python -c 'from tests.unit.test_drift_quality import measured_false_alarm_rate as m; print(m())'``."""
    flags: dict[str, int] = {}
    checks: dict[str, int] = {}

    def count(kind: str, drift: bool) -> None:
        flags[kind], checks[kind] = flags.get(kind, 0) + int(drift), checks.get(kind, 0) + 1

    windows = flagged = 0
    for seed in seeds:
        reference, X, mask = scenario(seed, clean_windows)
        n = clean_windows * WINDOW
        for w in _windows(reference, X[:n], _score(X[:n]), mask[:n]):
            windows, flagged = windows + 1, flagged + (w["verdict"] != "ok")
            for e in w["features"].values():
                count("numeric" if e["statistic"] == "psi" else "categorical", e["drift"])
            count("score", w["prediction"]["drift"])
            for name, e in w["missing"].items():
                count("missing" if reference["missing_rate"][name] > 0 else "missing_never", e["drift"])
    per = " ".join(f"{k}={flags[k] / checks[k]:.5f}({flags[k]}/{checks[k]})" for k in checks)
    return (f"RESULT false_alarm_rate={sum(flags.values()) / sum(checks.values()):.5f} {per} windows={windows} "
            f"windows_flagged={flagged / windows:.4f} configured={RATE}")

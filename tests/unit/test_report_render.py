"""The model card and the drift report rendered from real parts (generated data, our preprocessor, a real
LightGBM model, its TreeSHAP contributions, real drift windows scored by ``DriftMonitorCore``), checked as
HTML and as a screenshot taken by headless Chromium (Debian's ``chromium``; .ci/run installs it).

``RAYGBM_REPORT_SCREENSHOTS=<dir>`` also keeps the screenshots there (bench/results/ holds the committed
ones); ``RAYGBM_SCREENSHOTS=required`` (set by .ci/run) fails instead of skipping without Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from raygbm.config import DataConfig, MonitorConfig, SplitConfig
from raygbm.data.features import Preprocessor
from raygbm.data.generate import DRIFT_SHIFTED_CATEGORICAL, DriftSpec, GeneratorSpec, generate_dataset
from raygbm.data.schema import infer_schema
from raygbm.monitoring.reference import Calibration, reference_profile, with_labels
from raygbm.monitoring.report import drift_report_html
from raygbm.monitoring.windows import DriftMonitorCore
from raygbm.registry.card import card_html, model_card
from raygbm.registry.evaluate import evaluate_model, features_matrix
from raygbm.registry.plots import save_plots

ROWS, TRAIN, VALID, TEST = 70_000, 30_000, 7_500, 7_500  # time-ordered: train, validation, test, then served
DRIFT_ROW = 57_500  # served rows from here on drift (numeric shift, reversed cat_0, more num_7 missing)
WINDOW = 2_500


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("RAYGBM_SCREENSHOTS") == "required":
        pytest.fail("chromium is not installed (apt-get install -y chromium)")
    return found


def screenshot(page: Path, png: Path, width: int, height: int, keep: bool = True) -> np.ndarray:
    """``page`` rendered by headless Chromium into ``png`` (a fresh profile, nothing fetched from the network);
    returns its pixels (rows × columns × RGB, 0..1)."""
    import matplotlib.image

    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed")
    with tempfile.TemporaryDirectory(prefix="raygbm-chromium-") as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={png}",
                        f"--window-size={width},{height}", page.as_uri()],
                       check=True, capture_output=True, timeout=120)
    folder = os.environ.get("RAYGBM_REPORT_SCREENSHOTS")
    if folder and keep:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(folder) / png.name)
    return matplotlib.image.imread(png)[:, :, :3]


def assert_not_blank(pixels: np.ndarray, min_ink: float) -> None:
    """Rendered content: enough non-white pixels, in more than one colour."""
    ink = (pixels < 0.94).any(axis=2).mean()
    assert ink > min_ink, f"only {ink:.1%} of the screenshot is not white"
    assert pixels.std() > 0.05
    assert len(np.unique((pixels * 8).astype(int).reshape(-1, 3), axis=0)) > 20  # not one or two flat colours


# ------------------------------------------------------------------------------------------- real parts


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Raw rows, the fitted preprocessor, its features and a LightGBM model trained on the train rows."""
    out = tmp_path_factory.mktemp("data")
    generate_dataset(out, GeneratorSpec(rows=ROWS, seed=3, drift=DriftSpec(start_row=DRIFT_ROW)))
    raw = pq.read_table(out).sort_by("id")
    schema = infer_schema(raw.schema, DataConfig(label="label", drop=["id"]), SplitConfig(time="event_time"))
    pre = Preprocessor(schema).fit(raw.slice(0, TRAIN))
    feats = pre.transform_table(raw)
    train, valid = feats.slice(0, TRAIN), feats.slice(TRAIN, VALID)
    params = {"objective": "binary", "num_leaves": 15, "learning_rate": 0.1, "verbosity": -1, "num_threads": 2, "seed": 1}
    cat = list(schema.categorical)
    dtrain = lgb.Dataset(train.drop_columns(["label"]), label=train.column("label"), categorical_feature=cat)
    dvalid = lgb.Dataset(valid.drop_columns(["label"]), label=valid.column("label"), reference=dtrain)
    booster = lgb.train(params, dtrain, 120, valid_sets=[dvalid], valid_names=["validation"],
                        callbacks=[lgb.early_stopping(15, verbose=False)])
    return {"params": params, "raw": raw, "pre": pre, "feats": feats, "booster": booster, "schema": schema, "dtrain": dtrain, "dvalid": dvalid}


def tuning_trials(dtrain: lgb.Dataset, dvalid: lgb.Dataset) -> dict:
    """A tuning result's dict (``TuneResult.to_dict()``'s keys the card reads) from real LightGBM runs: six
    parameter sets, each scored by validation AUC every 10 rounds, the weak ones stopped early."""
    trials = []
    for i, (leaves, lr) in enumerate([(7, 0.05), (31, 0.1), (3, 0.02), (15, 0.2), (63, 0.05), (15, 0.1)]):
        history: dict = {}
        rounds = 30 if i in (2, 4) else 80  # "stopped early"
        lgb.train({"objective": "binary", "metric": "auc", "num_leaves": leaves, "learning_rate": lr, "verbosity": -1,
                   "num_threads": 2, "seed": 1}, dtrain, rounds, valid_sets=[dvalid], valid_names=["validation"],
                  callbacks=[lgb.record_evaluation(history)])
        auc = history["validation"]["auc"]
        hist = [[r, float(auc[r - 1])] for r in range(10, rounds + 1, 10)]
        trials.append({"trial_id": f"a1b2c_{i:05d}", "params": {"num_leaves": leaves, "learning_rate": lr},
                       "score": max(s for _, s in hist), "iterations": rounds, "history": hist,
                       "status": "complete" if rounds == 80 else "stopped early"})
    top = max(trials, key=lambda t: t["score"])
    return {"trials": trials, "best_params": top["params"], "best_score": top["score"], "metric": "auc",
            "trial_mode": "in_process"}


def drift_document(parts: dict, monitor: MonitorConfig) -> dict:
    """``GET /drift``'s document as the actor builds it: the served rows (those after the test split, the
    later ones drifted) scored in windows by ``DriftMonitorCore`` against the registration's reference
    (category values and the decision threshold added as the endpoint adds them)."""
    raw, feats, booster, pre = parts["raw"], parts["feats"], parts["booster"], parts["pre"]
    fields = list(pre.input_columns)
    missing_rate = {c: raw.slice(0, TRAIN).column(c).null_count / TRAIN for c in fields}
    cal = Calibration(features_matrix(booster, feats.slice(TRAIN, VALID)), monitor.window_size, monitor.false_alarm_rate,
                      monitor.calibration_draws, {"features": "validation", "prediction": "test"})
    test = features_matrix(booster, feats.slice(TRAIN + VALID, TEST))
    reference = reference_profile(features_matrix(booster, feats.slice(0, TRAIN)), booster.feature_name(),
                                  pre.categorical_features_, booster.predict(test), missing_rate, calibration=cal)
    reference = with_labels(reference, pre.categories_, 0.42)
    core = DriftMonitorCore(reference, booster.feature_name(), monitor, fields, {"model_version": "4"})
    start = TRAIN + VALID + TEST
    served = raw.slice(start)
    # More of num_7 missing in the drifted rows (the generator shifts values, not missingness).
    rng = np.random.default_rng(0)
    drop = pa.array((np.arange(start, ROWS) >= DRIFT_ROW) & (rng.random(served.num_rows) < 0.3))
    served = served.set_column(served.schema.get_field_index("num_7"), "num_7",
                               pc.if_else(drop, pa.scalar(None, pa.float64()), served.column("num_7")))
    X = features_matrix(booster, pre.transform_table(served))
    scores = booster.predict(X)
    missing = np.column_stack([np.asarray(served.column(c).is_null()) for c in fields])
    ts = served.column("event_time").cast(pa.int64()).to_numpy() / 1e6
    y = served.column("label").to_numpy()
    for lo in range(0, served.num_rows, 500):  # batches as replicas send them, each at its rows' time
        core.observe(X[lo:lo + 500], scores[lo:lo + 500], missing[lo:lo + 500], ts=float(ts[lo]))
    doc = {"model_version": "4", **core.report()}
    _performance(doc["windows"], y, scores)
    return doc


def _performance(windows: list, y: np.ndarray, scores: np.ndarray) -> None:
    """A ``performance`` entry per window (the shape the label-feedback work adds to ``GET /drift``), from
    the served rows' true labels and, as an estimate, the scores' own expected log loss."""
    from sklearn.metrics import log_loss, roc_auc_score

    for w in windows:
        lo = w["index"] * WINDOW
        yy, pp = y[lo:lo + w["rows"]], np.clip(scores[lo:lo + w["rows"]], 1e-6, 1 - 1e-6)
        w["performance"] = {"labelled_rows": int(len(yy)),
                            "realized": {"roc_auc": float(roc_auc_score(yy, pp)), "log_loss": float(log_loss(yy, pp))},
                            "estimated": {"log_loss": float(-np.mean(pp * np.log(pp) + (1 - pp) * np.log(1 - pp)))}}


# ------------------------------------------------------------------------------------------------ tests


def test_the_model_card_renders_as_html_with_its_plots_inline(parts, tmp_path):
    booster, feats = parts["booster"], parts["feats"]
    ev, arrays = evaluate_model(booster, feats.slice(TRAIN + VALID, TEST), feats.slice(TRAIN, VALID), "label", "binary",
                                2, "roc_auc", 2000)
    tuning = tuning_trials(parts["dtrain"], parts["dvalid"])
    plots = save_plots(tmp_path / "plots", ev, arrays, tuning)
    assert {"calibration.png", "score_histogram.png", "shap.png", "tuning.png"} <= set(plots)
    card = model_card(name="raygbm-demo", version="4", ev=ev, params=parts["params"], best_iteration=booster.best_iteration,
                      data_report={"source": "generated", "rows_read": ROWS, "rows_out": {"train": TRAIN, "validation": VALID,
                                                                                         "test": TEST}},
                      tuning=tuning, gate={"decision": "champion", "reason": "first model"}, plots=plots, selection=None)
    page = card_html(card, tmp_path)
    (tmp_path / "model_card.html").write_text(page)

    assert "<pre>" not in page.split("<h2>Parameters</h2>")[0] and page.count("<table>") == 2  # metrics, importance
    assert "<h1>Model card: raygbm-demo v4</h1>" in page and "<strong>champion</strong>" in page
    assert f"<td>roc_auc</td><td class='num'>{ev.metrics['roc_auc']:.6g}</td>" in page
    assert page.count("data:image/png;base64,") == len(plots) and "plots/" not in page.replace("alt=", "")
    for caption in ("Calibration curve", "Score histogram per class", "SHAP summary", "Tuning history (chosen trial marked)"):
        assert caption in page
    shap = ev.importance["shap"]
    assert max(shap, key=shap.get) in ("num_0", "num_1", "num_2", "num_3", "cat_0", "cat_1")  # a signal column leads
    pixels = screenshot(tmp_path / "model_card.html", tmp_path / "model_card.png", 1100, 4300)
    assert_not_blank(pixels, 0.04)


def test_the_drift_report_shows_every_window_and_both_categorical_statistics(parts, tmp_path):
    doc = drift_document(parts, MonitorConfig(window_size=WINDOW, calibration_draws=2000, alert_after={"m": 2, "n": 3}))
    windows = doc["windows"]
    assert len(windows) == (ROWS - TRAIN - VALID - TEST) // WINDOW
    shifted = {"num_1", "num_2", "cat_0", "num_7 (missing)"}  # DRIFT_SHIFTED_* and the nulls added to num_7
    first = (DRIFT_ROW - TRAIN - VALID - TEST) // WINDOW
    assert all(not shifted & set(w["drifted_features"]) for w in windows[:first])
    assert all(shifted <= set(w["drifted_features"]) for w in windows[first:])
    page = drift_report_html(doc)
    (tmp_path / "drift_report.html").write_text(page)

    categories = parts["pre"].categories_[DRIFT_SHIFTED_CATEGORICAL[0]]
    assert all(f">{c}<" in page for c in categories)  # category values, not codes, under the bars
    assert not re.search(r">code \d+<", page)
    for w in windows:  # every kept window, with its time span
        assert f"<td class='num'>{w['index']}</td>" in page
    for w in (windows[0], windows[-1]):
        for ts in (w["first_ts"], w["last_ts"]):
            assert f"<td class='t'>{datetime.fromtimestamp(ts, tz=timezone.utc):%Y-%m-%d %H:%M:%S}</td>" in page
    assert "JS distance" in page and "chi-square p-value" in page  # both, for each categorical feature
    cat0 = page.split("<b>cat_0</b>")[1].split("</div>")[0]
    # JS distance and its threshold, the p-value (calibrated: the JS distance alone decides, no p threshold)
    assert "JS distance" in cat0 and "chi-square p-value" in cat0 and cat0.count("<polyline") == 3
    assert "<b>num_7</b>" in page.split("<h2>Missing values</h2>")[1] and "allowed band" in page
    assert "decision threshold 0.42" in page and "threshold 0.42" in page.split("<b>prediction")[1]
    perf = windows[-1]["performance"]
    assert f"<td class='num'>{perf['labelled_rows']}</td><td class='t'>roc_auc {perf['realized']['roc_auc']:.4g}<br>" in page
    assert "<h2>Performance</h2>" in page and "ALERT" in page
    pixels = screenshot(tmp_path / "drift_report.html", tmp_path / "drift_report.png", 1400, 2600)
    assert_not_blank(pixels, 0.04)


def test_the_drift_report_reads_a_static_threshold_document_without_labels_or_performance(parts):
    doc = drift_document(parts, MonitorConfig(window_size=WINDOW, thresholds_mode="static"))
    for w in doc["windows"]:
        del w["performance"]
    for ref in doc["reference"]["features"].values():
        ref.pop("labels", None)
    page = drift_report_html(doc)
    cat0 = page.split("<b>cat_0</b>")[1].split("</div>")[0]
    assert "drift when p &lt; its threshold and JS &gt; its threshold" in cat0  # the chi-square rule, both thresholds
    assert re.search(r"JS distance [\d.]+ \(threshold 0\.1\); chi-square p-value [\d.e-]+ \(threshold 0\.01\)", cat0)
    assert cat0.count("<polyline") == 4  # both statistics, each against its threshold
    assert ">code 1<" in page and "<title>(missing or unseen): reference" in page and "<th>labelled rows</th>" not in page
    assert "<h2>Performance</h2>" not in page


def test_the_blank_check_refuses_a_page_with_little_on_it(tmp_path):
    (tmp_path / "almost_blank.html").write_text("<!doctype html><h1>Drift report</h1><p>nothing else</p>")
    pixels = screenshot(tmp_path / "almost_blank.html", tmp_path / "almost_blank.png", 1400, 2600, keep=False)
    assert (pixels < 0.94).any(axis=2).mean() > 0  # Chromium drew the heading
    with pytest.raises(AssertionError, match="not white"):
        assert_not_blank(pixels, 0.04)

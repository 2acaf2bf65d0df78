"""Metrics, threshold choice, importance, selection, plots and the model card."""

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pytest
from sklearn import metrics as skm

from raygbm.metrics import best, better, higher_is_better, task_metrics, tune_mode
from raygbm.registry.card import card_html, model_card
from raygbm.registry.evaluate import choose_threshold, evaluate_model
from raygbm.registry.plots import save_plots
from raygbm.training.fit import selected_features


def _data(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    x0, x1, noise = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)
    y = (x0 + 0.3 * x1 + 0.5 * rng.normal(size=n) > 0).astype(np.int32)
    return pa.table({"x0": x0, "x1": x1, "noise": noise, "y": y})


@pytest.fixture(scope="module")
def model():
    t = _data()
    X = np.column_stack([t[c].to_numpy() for c in ("x0", "x1", "noise")])
    ds = lgb.Dataset(X, t["y"].to_numpy(), feature_name=["x0", "x1", "noise"])
    return lgb.train({"objective": "binary", "verbosity": -1, "num_threads": 1, "seed": 1}, ds, 60)


def test_binary_metrics_agree_with_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    p = np.clip(y * 0.3 + rng.random(500) * 0.7, 0, 1)
    m = task_metrics("binary", y, p, threshold=0.4)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["f1"] == pytest.approx(skm.f1_score(y, p >= 0.4))
    assert m["threshold"] == 0.4


def test_multiclass_and_regression_metrics():
    y = np.array([0, 1, 2, 2])
    p = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.2, 0.2]])
    m = task_metrics("multiclass", y, p, num_classes=3)
    assert m["accuracy"] == 0.75 and m["confusion_matrix"][2] == [1, 0, 1]
    r = task_metrics("regression", np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert r["rmse"] == pytest.approx(np.sqrt(1 / 3)) and r["mae"] == pytest.approx(1 / 3)


def test_threshold_maximises_f1():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.6, 0.55, 0.7, 0.9])
    t = choose_threshold(y, p)
    best = max(skm.f1_score(y, p >= c) for c in p)
    assert skm.f1_score(y, p >= t) == pytest.approx(best)


def test_better_respects_direction_and_margin():
    assert better("roc_auc", 0.81, 0.80) and not better("roc_auc", 0.81, 0.80, margin=0.02)
    assert better("rmse", 1.0, 1.1) and not better("rmse", 1.1, 1.0)
    assert not better("roc_auc", 0.8, 0.8)  # a tie does not beat the champion


def test_one_direction_rule_for_lightgbm_and_test_metric_names():
    for higher in ("auc", "average_precision", "ndcg@5", "map@3", "roc_auc", "pr_auc", "f1_macro", "r2"):
        assert higher_is_better(higher) and tune_mode(higher) == "max", higher
    for lower in ("binary_logloss", "multi_logloss", "rmse", "l2", "mae", "log_loss", "multi_error"):
        assert not higher_is_better(lower) and tune_mode(lower) == "min", lower
    assert better("binary_logloss", 0.2, 0.3) and better("auc", 0.9, 0.8)


def test_best_picks_the_first_of_equals_in_the_metric_direction():
    trials = [{"id": 1, "score": 0.7}, {"id": 2, "score": 0.9}, {"id": 3, "score": 0.9}, {"id": 4, "score": 0.1}]
    assert best("auc", trials, key=lambda t: t["score"])["id"] == 2
    assert best("rmse", trials, key=lambda t: t["score"])["id"] == 4
    assert best("rmse", [3.0, 1.0, 1.0, 2.0]) == 1.0
    with pytest.raises(ValueError):
        best("auc", [])


def test_importance_finds_the_signal_and_selection_drops_noise(model, tmp_path):
    t = _data(seed=5)
    ev, arrays = evaluate_model(model, t, _data(seed=6), "y", "binary", 2, "roc_auc", 2000)
    perm, gain = ev.importance["permutation"], ev.importance["gain"]
    assert perm["x0"] > perm["x1"] > abs(perm["noise"])
    assert max(gain, key=gain.get) == "x0"
    assert "noise" not in selected_features(gain, 0.1) and "x0" in selected_features(gain, 0.1)
    assert selected_features({"a": 0.0, "b": 0.0}, 0.5) == ["a"]  # never empty
    assert ev.metrics["roc_auc"] > 0.8 and 0 < ev.metrics["threshold"] < 1

    assert max(ev.importance["shap"], key=ev.importance["shap"].get) == "x0" and arrays["shap"].shape == (1000, 3)
    # TreeSHAP's contributions plus the bias add up to the raw score.
    raw = model.predict(arrays["X_shap"], raw_score=True)
    bias = model.predict(arrays["X_shap"][:1], pred_contrib=True)[0, -1]
    assert np.allclose(arrays["shap"].sum(axis=1) + bias, raw)

    tuning = {"metric": "auc", "best_params": {"num_leaves": 7}, "trials": [
        {"trial_id": "t_00000", "params": {"num_leaves": 3}, "score": 0.8, "status": "complete", "history": [[10, 0.7], [20, 0.8]]},
        {"trial_id": "t_00001", "params": {"num_leaves": 7}, "score": 0.85, "status": "stopped early", "history": [[10, 0.85]]}]}
    plots = save_plots(tmp_path / "plots", ev, arrays, tuning)
    assert set(plots) == {"roc.png", "pr.png", "calibration.png", "score_histogram.png", "importance.png", "shap.png", "tuning.png"}
    assert all((tmp_path / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in plots)
    card = model_card(name="m", version="3", ev=ev, params={"num_leaves": 7}, best_iteration=60,
                      data_report={"source": "s", "rows_read": 10, "rows_out": {"train": 7}}, tuning=None,
                      gate={"decision": "champion", "reason": "first"}, plots=plots, selection=None)
    assert f"| roc_auc | {ev.metrics['roc_auc']:.6g} |" in card and "v3" in card and "![ROC curve](plots/roc.png)" in card
    assert "| feature | gain | permutation | mean abs SHAP |" in card
    page = card_html(card + "<script>", tmp_path)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert page.count("<img src=\"data:image/png;base64,") == len(plots)


def test_card_html_renders_the_markdown_the_card_writes(tmp_path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "a.png").write_bytes(b"\x89PNG fake")
    (tmp_path.parent / "secret.png").write_bytes(b"\x89PNG secret")
    md = "\n".join([
        "# Model card: m v1", "", "- Task: **binary**; source `s3://b/x`", "- two", "",
        "| metric | value |", "|---|---|", "| auc | 0.9 |", "| name | <b> |", "",
        "```json", "{\"a\": \"**not bold**\"}", "```", "text line", "",
        "![A plot](plots/a.png)", "![Escape](../secret.png)", "![Missing](plots/none.png)"])
    page = card_html(md, tmp_path)
    assert "<h1>Model card: m v1</h1>" in page and "<title>raygbm Model card: m v1</title>" in page
    assert "<ul><li>Task: <strong>binary</strong>; source <code>s3://b/x</code></li><li>two</li></ul>" in page
    assert "<tr><td>auc</td><td class='num'>0.9</td></tr><tr><td>name</td><td>&lt;b&gt;</td></tr>" in page
    assert "---" not in page  # the header rule is not a row
    assert '<pre><code>{&quot;a&quot;: &quot;**not bold**&quot;}</code></pre>' in page and "<p>text line</p>" in page
    assert 'src="data:image/png;base64,iVBORyBmYWtl"' in page  # base64 of the file's bytes
    assert 'src="../secret.png"' in page and 'src="plots/none.png"' in page  # outside the folder, absent: links
    assert card_html(md).count("data:image") == 0


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_shap_and_plots_for_the_other_tasks(task, tmp_path):
    rng = np.random.default_rng(2)
    n = 3000
    x0, x1, cat = rng.normal(size=n), rng.normal(size=n), rng.integers(0, 4, n).astype(float)
    y = np.digitize(x0 + 0.5 * cat, [0.0, 1.5]) if task == "multiclass" else 2 * x0 + cat + 0.1 * rng.normal(size=n)
    t = pa.table({"x0": x0, "x1": x1, "cat": cat, "y": y})
    params = {"objective": task, "verbosity": -1, "num_threads": 1, "seed": 1} | ({"num_class": 3} if task == "multiclass" else {})
    booster = lgb.train(params, lgb.Dataset(np.column_stack([x0, x1, cat]), y, feature_name=["x0", "x1", "cat"],
                                            categorical_feature=["cat"]), 30)
    metric = "log_loss" if task == "multiclass" else "rmse"
    ev, arrays = evaluate_model(booster, t, t, "y", task, 3 if task == "multiclass" else None, metric, 500, shap_rows=400)
    assert arrays["shap"].shape == ((400, 3, 3) if task == "multiclass" else (400, 3))
    assert list(arrays["categorical"]) == [False, False, True]
    shap = ev.importance["shap"]
    assert shap["x1"] < min(shap["x0"], shap["cat"])  # x1 carries no signal
    plots = save_plots(tmp_path, ev, arrays, None)
    assert "shap.png" in plots and ("confusion.png" if task == "multiclass" else "residuals.png") in plots

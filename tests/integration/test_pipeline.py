"""The whole pipeline on the shared local Ray: tune (Tune + ASHA) → train → evaluate → MLflow registry,
the champion gate, and a tuned model at least as good as plain LightGBM defaults (the same comparison on
the demo's 1M rows is ``bench/demo_quality.py``)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lightgbm import LGBMClassifier
from sklearn.metrics import roc_auc_score

from raygbm.config import load_config
from raygbm.pipeline import run_pipeline
from raygbm.registry.store import Registry
from raygbm.training.train import RunMeta
from tests.conftest import make_shards


def _default_lgbm_auc(meta: RunMeta, seed: int = 0, splits: tuple[str, ...] = ("train",)) -> float:
    """Plain ``LGBMClassifier()`` defaults fitted on the preprocessed ``splits`` (categoricals declared)."""
    tr, te = meta.splits(splits), meta.split("test")
    cols = [c for c in tr.column_names if c != meta.label]
    X = lambda t: np.column_stack([np.asarray(t[c], dtype=np.float64) for c in cols])  # noqa: E731
    cat = [cols.index(c) for c in meta.categorical]
    clf = LGBMClassifier(random_state=seed, verbose=-1).fit(X(tr), np.asarray(tr[meta.label]), categorical_feature=cat)
    return roc_auc_score(np.asarray(te[meta.label]), clf.predict_proba(X(te))[:, 1])


@pytest.mark.slow
def test_run_registers_a_champion_that_beats_defaults_then_gates_a_worse_model(tmp_path, home):
    data = make_shards(tmp_path / "data", rows=100_000, shards=4, seed=3)
    # The holdout (85k train+validation rows would cross-validate by default: 5× the cost of this test).
    base = ["data.drop=[id]", "tune.trials=8", "train.num_boost_round=300", "train.report_every=10",
            "tune.cv_folds=null"]
    cfg = load_config(None, base, {"data.source": str(data), "data.label": "label"})
    outcome, tuning = run_pipeline(cfg)

    meta = RunMeta.load(next((home / "runs").glob("preprocess-*")))
    assert outcome.decision == "champion" and outcome.version == "1"
    assert outcome.metrics["roc_auc"] >= _default_lgbm_auc(meta)
    assert len(tuning.trials) == 8 and tuning.trial_mode == "in_process"
    assert any(t["status"] == "stopped early" for t in tuning.trials)  # ASHA cut some trials short
    assert all(t["score"] is not None for t in tuning.trials)
    # LightGBM's defaults were fitted too and the better of the two on validation kept.
    cmp = json.loads((outcome.report_dir / "defaults_comparison.json").read_text())
    keep_defaults = cmp["defaults_score"] < cmp["tuned_score"]  # log loss: lower is better
    assert cmp["kept"] == ("lightgbm defaults" if keep_defaults else "tuned")
    assert "LightGBM's defaults by the same scheme" in (outcome.report_dir / "model_card.md").read_text()

    reg = Registry()
    client = reg.client
    parent = client.get_run(outcome.run_id)
    assert parent.data.params["kept"] == cmp["kept"]
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{outcome.run_id}'")
    assert len(children) == 8
    history = client.get_metric_history(children[0].info.run_id, "validation_score")
    assert len(history) >= 2 and all(h.step > 0 for h in history)
    assert parent.data.params["num_leaves"] == str(tuning.best_params["num_leaves"])

    # A much weaker model (3 rounds, no tuning) stays a candidate; the champion does not move.
    weak = load_config(None, [*base, "train.num_boost_round=3"], {"data.source": str(data), "data.label": "label"})
    out2, none = run_pipeline(weak, tune=False)
    assert none is None and out2.decision == "candidate" and out2.version == "2"
    assert out2.champion_score == pytest.approx(outcome.metrics["roc_auc"], abs=1e-9)
    assert reg.get().version == "1"


def test_every_trial_is_logged_without_the_defaults_comparison(tmp_path, home):
    data = make_shards(tmp_path / "data", rows=20_000, shards=2, seed=5)
    cfg = load_config(None, ["data.drop=[id]", "tune.trials=2", "tune.compare_defaults=false",
                             "train.num_boost_round=40"], {"data.source": str(data), "data.label": "label"})
    outcome, tuning = run_pipeline(cfg)
    client = Registry().client
    parent = client.get_run(outcome.run_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{outcome.run_id}'")
    assert len(tuning.trials) == 2 and len(children) == 2
    assert "kept" not in parent.data.params and not (outcome.report_dir / "defaults_comparison.json").exists()
    # The HTML card carries every plot inline, the tuning history with the chosen trial among them.
    page = (outcome.report_dir / "model_card.html").read_text()
    plots = sorted(p.name for p in (outcome.report_dir / "plots").iterdir())
    assert {"tuning.png", "shap.png", "calibration.png", "score_histogram.png"} <= set(plots)
    assert page.count("data:image/png;base64,") == len(plots) and "Tuning history (chosen trial marked)" in page


def _registered_booster(version: str):
    from raygbm.registry.bundle import Bundle
    from raygbm.registry.store import local_bundle

    ref, path = local_bundle(Registry(), version)
    return Bundle.load(path, ref.tags.get("manifest_sha256")).booster


def _root_count(booster) -> int:
    return booster.dump_model()["tree_info"][0]["tree_structure"]["internal_count"]


def test_the_registered_model_is_refit_on_train_and_validation_for_the_selected_rounds(tmp_path, home):
    data = make_shards(tmp_path / "data", rows=8_000, shards=2, seed=4)
    base = ["data.drop=[id]", "train.num_boost_round=200", "train.early_stopping_rounds=10",
            "train.params={learning_rate: 0.3}", "train.refit_rounds_scale=1.5"]
    outcome, _ = run_pipeline(load_config(None, base, {"data.source": str(data), "data.label": "label"}), tune=False)
    meta = RunMeta.load(next((home / "runs").glob("preprocess-*")))
    sel = json.loads((outcome.report_dir / "model_selection.json").read_text())
    v, refit = sel["validation"], sel["refit"]
    # 6,800 train+validation rows: 5-fold CV; the refit's rounds are the folds' mean best round × 1.5.
    assert v["scheme"] == "cv" and len(v["fold_best_iterations"]) == 5 and max(v["fold_best_iterations"]) < 200
    assert v["best_iteration"] == round(np.mean(v["fold_best_iterations"]))
    rounds = round(v["best_iteration"] * 1.5)
    booster = _registered_booster(outcome.version)
    assert booster.num_trees() == refit["rounds"] == rounds == outcome.params["num_boost_round"]
    assert _root_count(booster) == refit["rows"] == meta.rows("train") + meta.rows("validation")
    parent = Registry().client.get_run(outcome.run_id).data
    assert parent.params["refit"] == "True" and parent.params["refit_rounds"] == str(rounds)
    assert parent.params["refit_rounds_scale"] == "1.5" and parent.params["selection_scheme"] == "cv"
    assert parent.params["selection_best_iteration"] == str(v["best_iteration"])
    assert parent.metrics["selection_score"] == pytest.approx(v["score"]) == parent.metrics["selection_binary_logloss"]
    assert f"{rounds} rounds = best iteration {v['best_iteration']} × 1.5" in outcome.card_path.read_text()

    # train.refit false: the model fitted on train alone, early-stopped on validation (the old behaviour).
    old, _ = run_pipeline(load_config(None, [*base, "train.refit=false"],
                                      {"data.source": str(data), "data.label": "label"}), tune=False)
    booster = _registered_booster(old.version)
    assert _root_count(booster) == meta.rows("train")
    assert booster.num_trees() == old.params["num_boost_round"] < 200
    parent = Registry().client.get_run(old.run_id).data
    assert parent.params["refit"] == "False" and "refit_rounds" not in parent.params
    assert "No refit" in old.card_path.read_text()


def test_breast_cancer_with_cross_validation(tmp_path, home):
    from sklearn.datasets import load_breast_cancer

    bc = load_breast_cancer()
    cols = {f"f{i}": bc.data[:, i] for i in range(bc.data.shape[1])}
    table = pa.table({**cols, "target": bc.target.astype(np.int64)})
    (tmp_path / "bc").mkdir()
    pq.write_table(table, tmp_path / "bc" / "part-0.parquet")
    cfg = load_config(None, ["tune.trials=12", "train.num_boost_round=300",
                             "train.early_stopping_rounds=30", "train.report_every=10", "tune.grace_period=20",
                             "split.seed=1"],
                      {"data.source": str(tmp_path / "bc"), "data.label": "target"})
    outcome, tuning = run_pipeline(cfg)
    meta = RunMeta.load(next((home / "runs").glob("preprocess-*")))
    assert meta.task == "binary"
    # 483 train+validation rows: by default every trial was scored by 5-fold CV (its last report carries
    # the fold mean, not a validation metric), and so was the selection.
    assert tuning.cv_folds == 5
    assert all("cv-binary_logloss" in t["last_metrics"] and t["score"] is not None for t in tuning.trials)
    assert json.loads((outcome.report_dir / "model_selection.json").read_text())["validation"]["scheme"] == "cv"
    # Against plain LightGBM on the same non-test rows. On 86 test rows one misordered pair moves the AUC
    # by 1 / (positives × negatives) (about 0.0006): allow that one pair; bench/quality.py measures the
    # mean over many splits.
    y = np.asarray(meta.split("test")["target"])
    one_pair = 1.0 / (y.sum() * (len(y) - y.sum()))
    assert outcome.metrics["roc_auc"] >= _default_lgbm_auc(meta, splits=("train", "validation")) - one_pair - 1e-12


@pytest.mark.slow
def test_a_time_budget_ends_a_search_without_a_trial_count(tmp_path, home):
    from raygbm.data.preprocess import preprocess
    from raygbm.training.tune import tune_search

    data = make_shards(tmp_path / "data", rows=3_000, shards=1, seed=2)
    overrides = ["data.drop=[id]", "tune.trials=null", "tune.asha=false", "train.num_boost_round=30"]

    def config(budget_s: float):
        return load_config(None, overrides + [f"tune.time_budget_s={budget_s}"],
                           {"data.source": str(data), "data.label": "label"})

    meta = RunMeta.load(preprocess(config(0.001)).run_dir)  # the data stage does not depend on the budget

    def search(budget_s: float):
        cfg = config(budget_s)
        return tune_search(meta, cfg.train, cfg.tune, cfg.resources)

    # A budget that passes before any trial can report (as on a busy machine, where starting the first
    # trial's worker took longer than 6 s): the search runs on to the first score instead of ending empty.
    quick = search(0.001)
    print(f"0.001 s budget: {len(quick.trials)} trials in {quick.fit_s:.1f} s, best {quick.best_score}")
    assert quick.best_score is not None
    assert any(t["score"] is not None for t in quick.trials)

    # A budget of three times what that search took on this machine (at least 6 s): trials kept being sampled
    # after the first concurrent batch until the budget ran out, then the search ended by itself with a scored
    # best. The budget scales with the machine: a busy one can take longer than any fixed figure for one batch.
    budget = max(6.0, 3 * quick.fit_s)
    result = search(budget)
    print(f"{budget:.1f} s budget: {len(result.trials)} trials in {result.fit_s:.1f} s, {result.concurrency} at a time")
    assert len(result.trials) > result.concurrency and result.fit_s < budget + 60
    assert result.best_score is not None and quick.name != result.name
    assert result.cv_folds == 5  # 2,550 train+validation rows: the trials cross-validated
    assert all(t["score"] is not None for t in result.trials if t["status"] == "complete")

"""The k-fold ensemble as one LightGBM text model: its raw score is the mean of the fold models' raw
scores, for every task, with categorical splits; models that differ in features or classes are refused."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from raygbm.training.ensemble import average_models


def _models(objective: str, k: int = 4, features: int = 4) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    X = rng.random((600, features))
    X[:, 3] = rng.integers(0, 6, 600)
    y = {"binary": (X[:, 0] + (X[:, 3] == 2) > 0.8).astype(int), "multiclass": (X[:, 0] * 3).astype(int),
         "regression": X[:, 0] * 10 + X[:, 3]}[objective]
    params = {"objective": objective, "verbose": -1, "num_leaves": 7, "bagging_fraction": 0.7, "bagging_freq": 1}
    if objective == "multiclass":
        params["num_class"] = 3
    models = []
    for s in range(k):
        b = lgb.train({**params, "seed": s}, lgb.Dataset(X, y, categorical_feature=[3]), 12 + 2 * s)
        models.append(b.model_to_string(num_iteration=9 + s))  # each cut at its own "best" round
    return X, models


@pytest.mark.parametrize("objective", ["binary", "multiclass", "regression"])
def test_the_average_model_scores_the_mean_of_the_fold_models(objective, tmp_path):
    X, models = _models(objective)
    merged = lgb.Booster(model_str=average_models(models))
    raw = np.mean([lgb.Booster(model_str=m).predict(X, raw_score=True) for m in models], axis=0)
    np.testing.assert_allclose(merged.predict(X, raw_score=True), raw, rtol=0, atol=1e-12)
    assert merged.num_trees() == sum(lgb.Booster(model_str=m).num_trees() for m in models)
    # Saved and loaded as a bundle stores it: every tree is kept.
    merged.save_model(str(tmp_path / "model.txt"))
    again = lgb.Booster(model_file=str(tmp_path / "model.txt"))
    np.testing.assert_array_equal(again.predict(X), merged.predict(X))


def test_models_of_different_shapes_are_refused():
    _, binary = _models("binary", k=2)
    _, multi = _models("multiclass", k=1)
    with pytest.raises(ValueError, match="cannot be averaged"):
        average_models(binary + multi)
    with pytest.raises(ValueError, match="no models"):
        average_models([])
    with pytest.raises(ValueError, match="not a LightGBM text model"):
        average_models(["tree\nversion=v4\n"])


def test_final_model_under_cv_is_the_fold_ensemble_or_a_refit_with_scaled_rounds(tmp_path, monkeypatch):
    """``train.ensemble``: the registered model is the average of the selection's fold models, with a record
    that says so; ``refit_rounds_scale: auto`` under 5-fold CV refits for the folds' rounds × 5/4."""
    from raygbm.config import ResourcesConfig, TrainConfig, load_config
    from raygbm.data.preprocess import LocalRunner, preprocess
    from raygbm.training.fit import REFIT_SPLITS, Candidate, final_model, rounds_scale
    from raygbm.training.select import Scheme, cross_validate
    from raygbm.training.train import RunMeta
    from tests.conftest import make_shards

    monkeypatch.setenv("RAYGBM_HOME", str(tmp_path / "home"))
    data = make_shards(tmp_path / "data", rows=3000, shards=1)
    cfg = load_config(None, ["data.drop=[id]"], {"data.source": str(data), "data.label": "label"})
    meta = RunMeta.load(preprocess(cfg, runner=LocalRunner()).run_dir)
    train = TrainConfig(num_boost_round=60, ensemble=True, refit_rounds_scale="auto")
    cv = cross_validate(meta.splits(REFIT_SPLITS), meta, train, 5, seed=1)
    cand = Candidate(train, meta, Scheme(5, 0, "test", 1), cv.score, cv.rounds, cv=cv, heldout=(cv.y, cv.oof))
    trained = final_model(cand, ResourcesConfig())
    assert trained.refit["ensemble"] == 5 and trained.refit["fold_rounds"] == cv.fold_best_iterations
    X = meta.split("test").drop_columns([meta.label])
    raw = np.mean([lgb.Booster(model_str=m).predict(X, raw_score=True) for m in cv.models], axis=0)
    np.testing.assert_allclose(trained.result.booster.predict(X, raw_score=True), raw, rtol=0, atol=1e-12)
    assert rounds_scale(cand) == 1.25

"""The validation scheme's rule, k-fold CV with per-fold early stopping, and the refit's fit on
train + validation (no Ray: ``fit_rows`` is the body of the Ray task)."""

import numpy as np
import pytest

from raygbm.config import ResourcesConfig, TrainConfig, TuneConfig, load_config
from raygbm.data.preprocess import LocalRunner, preprocess
from raygbm.errors import ConfigError
from raygbm.training.fit import REFIT_SPLITS, fit_rows
from raygbm.training.select import (
    AUTO_CV_FOLDS,
    choose_scheme,
    cross_validate,
    fold_indices,
    refit_rounds,
    validation_scheme,
)
from raygbm.training.train import RunMeta
from tests.conftest import make_shards


@pytest.fixture
def meta(tmp_path, home):
    data = make_shards(tmp_path / "data", rows=6_000, shards=2)
    cfg = load_config(None, ["data.drop=[id]"], {"data.source": str(data), "data.label": "label"})
    return RunMeta.load(preprocess(cfg, runner=LocalRunner()).run_dir)


@pytest.mark.parametrize("cv_folds, rows, mode, folds", [
    ("auto", 99_999, "in_process", AUTO_CV_FOLDS),
    ("auto", 100_000, "in_process", None),
    ("auto", 5_000, "ray_train", None),  # data-parallel trials cannot cross-validate
    (3, 10**7, "in_process", 3),  # an int forces CV whatever the size
    (None, 500, "in_process", None),  # null forces the holdout
    (0, 500, "in_process", None),
])
def test_scheme_rule(cv_folds, rows, mode, folds):
    s = choose_scheme(cv_folds, 100_000, rows, mode)
    assert s.folds == folds and s.kind == ("cv" if folds else "holdout") and s.rows == rows


def test_scheme_counts_train_and_validation_rows(meta):
    rows = meta.rows("train") + meta.rows("validation")
    assert validation_scheme(meta, TuneConfig(cv_below_rows=rows + 1), ResourcesConfig()).folds == AUTO_CV_FOLDS
    assert validation_scheme(meta, TuneConfig(cv_below_rows=rows), ResourcesConfig()).folds is None


@pytest.mark.parametrize("override, message", [
    ("tune.cv_folds=1", "tune.cv_folds: must be auto, null or 0"),
    ("tune.cv_folds=-3", "tune.cv_folds: must be auto"),
    ("tune.trials=null", "trials: null needs time_budget_s"),
    ("train.refit_rounds_scale=0", "train.refit_rounds_scale"),
])
def test_bad_selection_config(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_selection_config_defaults_and_overrides():
    cfg = load_config(None)
    assert cfg.tune.cv_folds == "auto" and cfg.tune.cv_below_rows == 100_000
    assert cfg.train.refit is True and cfg.train.refit_rounds_scale == 1.0
    assert load_config(None, ["tune.cv_folds=null"]).tune.cv_folds is None
    timed = load_config(None, ["tune.trials=null", "tune.time_budget_s=60"]).tune
    assert timed.trials is None and timed.time_budget_s == 60


def test_refit_rounds_scale_and_floor():
    assert refit_rounds(99.5) == 100 and refit_rounds(40, 1.25) == 50 and refit_rounds(0.2) == 1


def test_folds_partition_the_rows_and_keep_class_balance():
    y = np.r_[np.zeros(80, int), np.ones(20, int)]
    folds = fold_indices(y, 5, seed=0, stratified=True)
    assert sorted(np.concatenate(folds).tolist()) == list(range(100))
    assert all(y[f].sum() == 4 for f in folds)  # 20 positives spread 4 per fold
    assert [f.tolist() for f in folds] == [f.tolist() for f in fold_indices(y, 5, seed=0, stratified=True)]


def test_cross_validation_stops_each_fold_on_its_own_rows(meta):
    table = meta.splits(REFIT_SPLITS)
    train = TrainConfig(num_boost_round=300, early_stopping_rounds=10, params={"learning_rate": 0.3}, metric="auc")
    cv = cross_validate(table, meta, train, folds=4, seed=1)
    assert len(cv.fold_scores) == len(cv.fold_best_iterations) == 4
    assert all(1 <= b < 300 for b in cv.fold_best_iterations)  # early stopping ended every fold
    assert cv.rounds == round(np.mean(cv.fold_best_iterations))
    assert cv.score == pytest.approx(np.mean(cv.fold_scores)) and 0.7 < cv.score < 1.0
    # Every row has an out-of-fold prediction; scoring them gives about the folds' mean AUC.
    from sklearn.metrics import roc_auc_score

    assert cv.oof.shape == (table.num_rows,) and np.all((cv.oof > 0) & (cv.oof < 1))
    assert roc_auc_score(cv.y, cv.oof) == pytest.approx(cv.score, abs=0.02)
    assert set(cv.gain) == set(meta.features) and sum(cv.gain.values()) > 0


def _root_count(booster) -> int:
    return booster.dump_model()["tree_info"][0]["tree_structure"]["internal_count"]


def test_refit_trains_exactly_the_rounds_on_train_and_validation(meta):
    import lightgbm as lgb

    fixed = TrainConfig(num_boost_round=37, early_stopping_rounds=None).model_dump(mode="json")
    text, metrics, best, _ = fit_rows(meta, fixed, 1, REFIT_SPLITS, None)
    booster = lgb.Booster(model_str=text)
    assert booster.num_trees() == 37 and best == 37 and metrics == {}  # no holdout, no early stopping
    assert _root_count(booster) == meta.rows("train") + meta.rows("validation")
    # The holdout fit sees train only and stops early on validation.
    holdout = TrainConfig(num_boost_round=400, early_stopping_rounds=5, params={"learning_rate": 0.5})
    text, metrics, best, _ = fit_rows(meta, holdout.model_dump(mode="json"), 1, ("train",), "validation")
    booster = lgb.Booster(model_str=text)
    assert _root_count(booster) == meta.rows("train") and best < 400 and "validation-binary_logloss" in metrics


def test_cv_folds_keep_identical_rows_together_as_the_data_split_does():
    """Where rows repeat (features and label), every copy of a row is held out by the same fold; with
    distinct rows the folds are the plain (stratified) ones."""
    import pyarrow as pa

    from raygbm.training.select import duplicate_groups, fold_indices, grouped_folds

    rng = np.random.default_rng(0)
    base = rng.integers(0, 50, 300)
    table = pa.table({"x": pa.array(base % 17, pa.float64()), "label": pa.array((base % 2).astype(np.int64))})
    y = np.asarray(table.column("label"))
    held = grouped_folds(table, y, 5, seed=1, stratified=True)
    fold_of = np.empty(len(y), int)
    for i, h in enumerate(held):
        fold_of[h] = i
    groups = duplicate_groups(table)
    assert sorted(np.concatenate(held).tolist()) == list(range(len(y)))
    assert all(len(set(fold_of[groups == g])) == 1 for g in np.unique(groups))
    distinct = pa.table({"x": pa.array(np.arange(300, dtype=np.float64)), "label": table.column("label")})
    assert duplicate_groups(distinct) is None and grouped_folds(distinct, y, 5, 1, True) is None
    assert len(fold_indices(y, 5, 1, True)) == 5

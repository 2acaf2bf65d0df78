"""The search space and trial-mode rules (no Ray cluster started)."""

import pytest

from raygbm.config import ResourcesConfig, TrainConfig, TuneConfig, load_config
from raygbm.errors import ConfigError
from raygbm.training.tune import (
    has_grid,
    plan_trials,
    search_space,
    trial_mode,
    trial_record,
    trial_train_config,
    typed_params,
)


def test_default_space_becomes_tune_domains():
    from ray.tune.search.sample import Categorical, Float, Integer

    cfg = load_config(None)
    space = search_space(cfg.tune.space)
    assert isinstance(space["learning_rate"], Float) and isinstance(space["num_leaves"], Integer)
    assert isinstance(space["max_bin"], Categorical)
    lr = space["learning_rate"].sample()
    assert 0.01 <= lr <= 0.3
    assert not has_grid(cfg.tune.space)


def test_grid_is_accepted_and_detected():
    cfg = load_config(None, ["tune.space={num_leaves: {grid: [7, 15]}, learning_rate: {uniform: [0.05, 0.1]}}"])
    assert has_grid(cfg.tune.space)
    assert search_space(cfg.tune.space)["num_leaves"] == {"grid_search": [7, 15]}


@pytest.mark.parametrize(
    "space, message",
    [
        ("{num_leaves: {between: [1, 2]}}", "expected one of"),
        ("{learning_rate: {loguniform: [0, 1]}}", "low > 0"),
        ("{learning_rate: {uniform: [0.3, 0.1]}}", "low < high"),
        ("{num_threads: {choice: [1, 2]}}", "set by raygbm"),
        ("{max_bin: {choice: []}}", "non-empty list"),
    ],
)
def test_bad_space_is_a_config_error(space, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"tune.space={space}"])


def test_trial_mode_by_data_size_and_workers():
    r = ResourcesConfig(in_process_max_rows=1000)
    assert trial_mode(999, r) == "in_process"
    assert trial_mode(1001, r) == "ray_train"
    assert trial_mode(10, ResourcesConfig(num_workers=2)) == "ray_train"
    assert trial_mode(10**9, ResourcesConfig(trial_mode="in_process")) == "in_process"


def test_trial_params_typed_and_merged_over_fixed_params():
    base = TrainConfig(params={"num_leaves": 7, "lambda_l2": 1.0}).model_dump(mode="json")
    t = trial_train_config(base, {"num_leaves": 31.0, "learning_rate": 0.2})
    assert t.params["num_leaves"] == 31 and isinstance(t.params["num_leaves"], int)
    assert t.params["lambda_l2"] == 1.0 and t.params["learning_rate"] == 0.2



def test_typed_params_makes_integer_params_ints():
    typed = typed_params({"num_leaves": 31.0, "max_bin": 255.0, "learning_rate": 0.1})
    assert typed == {"num_leaves": 31, "max_bin": 255, "learning_rate": 0.1}
    assert isinstance(typed["num_leaves"], int) and isinstance(typed["learning_rate"], float)


def test_plan_in_process_trials_fill_the_cluster_up_to_the_cap():
    plan = plan_trials(10_000, TuneConfig(), ResourcesConfig(cpus_per_trial=2), cluster_cpus=8)
    assert (plan.trial_mode, plan.resources, plan.concurrency) == ("in_process", {"CPU": 2}, 4)
    capped = plan_trials(10_000, TuneConfig(), ResourcesConfig(max_concurrent_trials=3), cluster_cpus=8)
    assert capped.concurrency == 3


def test_plan_ray_train_trials_leave_the_cpus_to_their_workers():
    plan = plan_trials(10, TuneConfig(), ResourcesConfig(num_workers=2, cpus_per_worker=2), cluster_cpus=8)
    assert plan.trial_mode == "ray_train" and plan.resources["CPU"] == 0 and plan.concurrency == 2
    with pytest.raises(ConfigError, match="needs 4 CPUs but the cluster has 2"):
        plan_trials(10, TuneConfig(), ResourcesConfig(num_workers=2, cpus_per_worker=2), cluster_cpus=2)
    with pytest.raises(ConfigError, match="cv_folds needs in-process trials"):
        plan_trials(10, TuneConfig(cv_folds=3), ResourcesConfig(num_workers=2), cluster_cpus=8)


class _Result:
    """The parts of a Ray Tune Result that trial_record reads."""

    def __init__(self, metrics, history, error=None):
        import pandas as pd

        self.metrics, self.error, self.config = metrics, error, {"num_leaves": 15}
        self.metrics_dataframe = pd.DataFrame(history, columns=["iteration", "score"]) if history else None


def test_trial_record_keeps_the_best_score_and_the_last_reported_metrics():
    train = TrainConfig(num_boost_round=100)
    r = _Result({"trial_id": "a", "iteration": 30, "time_total_s": 1.5, "score": 0.8, "cv-auc": 0.8,
                 "cv-auc-stdv": 0.01, "time_this_iter_s": 0.1}, [[10, 0.7], [20, 0.85], [30, 0.8]])
    t = trial_record(r, train, "auc")
    assert t["score"] == 0.85 and t["status"] == "stopped early" and t["iterations"] == 30
    assert t["last_metrics"] == {"cv-auc": 0.8, "cv-auc-stdv": 0.01}
    low = trial_record(_Result({"iteration": 100, "validation-rmse": 2.0}, [[50, 3.0], [100, 2.0]]), train, "rmse")
    assert low["score"] == 2.0 and low["status"] == "complete" and low["last_metrics"] == {"validation-rmse": 2.0}
    failed = trial_record(_Result({}, None, error=RuntimeError("x")), train, "auc")
    assert failed["score"] is None and failed["status"] == "error" and failed["last_metrics"] == {}


def test_cross_validation_reports_are_named_cv_and_holdout_reports_by_dataset():
    import lightgbm as lgb
    import numpy as np

    from raygbm.training.train import ReportEveryK

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    y = (X[:, 0] + 0.5 * rng.normal(size=400) > 0).astype(int)
    params = {"objective": "binary", "metric": "auc", "verbosity": -1, "num_threads": 1}
    reports = []
    lgb.cv(params, lgb.Dataset(X, y), num_boost_round=4, nfold=3,
           callbacks=[ReportEveryK(2, 10**9, lambda m, _model: reports.append(m))])
    assert [r["iteration"] for r in reports] == [2, 4]
    assert all(set(r) == {"cv-auc", "score", "iteration"} for r in reports)
    reports.clear()
    lgb.train(params, lgb.Dataset(X, y), num_boost_round=2, valid_sets=[lgb.Dataset(X, y)], valid_names=["validation"],
              callbacks=[ReportEveryK(2, 10**9, lambda m, _model: reports.append(m))])
    assert set(reports[0]) == {"validation-auc", "score", "iteration"}


def test_refit_settings_do_not_rename_the_search(tmp_path):
    from pathlib import Path

    from raygbm.training.train import RunMeta
    from raygbm.training.tune import experiment_name

    meta = RunMeta(Path(tmp_path), "y", "binary", 2, [], ["a"])
    name = experiment_name(meta, TrainConfig(), TuneConfig(), ResourcesConfig())
    assert experiment_name(meta, TrainConfig(refit=False, refit_rounds_scale=1.2), TuneConfig(), ResourcesConfig()) == name
    assert experiment_name(meta, TrainConfig(num_boost_round=7), TuneConfig(), ResourcesConfig()) != name


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_time_budget_waits_for_a_first_score_and_counts_only_running_time(monkeypatch):
    import pickle

    from raygbm.training import budget

    clock = _Clock()
    monkeypatch.setattr(budget.time, "monotonic", clock)
    stopper = budget.ScoredTimeBudget(6)
    assert stopper.stop_all() is False  # the first check starts the clock: Tune's set-up is not counted
    clock.now += 10
    assert stopper.stop_all() is False  # budget spent, but no trial has reported a score yet
    assert stopper("t1", {"score": float("nan"), "iteration": 5}) is False
    assert stopper.stop_all() is False  # a NaN score is no score
    assert stopper("t1", {"score": 0.41, "iteration": 10}) is False  # never stops a single trial
    assert stopper.stop_all() is True

    # A restored search keeps what the interrupted one left and does not count the time it was down.
    early = budget.ScoredTimeBudget(6)
    early.stop_all()
    clock.now += 4
    early("t1", {"score": 0.5})
    assert early.stop_all() is False
    restored = pickle.loads(pickle.dumps(early))
    clock.now += 1000
    assert restored.stop_all() is False and restored.left_s == pytest.approx(2)
    clock.now += 2
    assert restored.stop_all() is True

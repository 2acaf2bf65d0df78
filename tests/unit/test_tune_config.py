"""The search space and trial-mode rules (no Ray cluster started)."""

import pytest

from raygbm.config import ResourcesConfig, TrainConfig, load_config
from raygbm.errors import ConfigError
from raygbm.tune import has_grid, search_space, trial_mode, trial_train_config


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


"""Ray Train's LightGBMTrainer on the shared local Ray: same model quality as in-process, and a killed
worker resumes from a checkpoint instead of round 0."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from raygbm.config import ResourcesConfig, TrainConfig, load_config
from raygbm.data.preprocess import preprocess
from raygbm.training.faults import Faults
from raygbm.training.train import RunMeta, train_in_process, train_with_ray
from tests.conftest import make_shards
from tests.helpers import raygbm_home


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    with raygbm_home(tmp_path_factory.mktemp("home")):
        data = make_shards(tmp_path_factory.mktemp("data"), rows=30_000, shards=3)
        cfg = load_config(None, ["data.drop=[id]"], {"data.source": str(data), "data.label": "label"})
        run = preprocess(cfg).run_dir
        yield RunMeta.load(run)


def _test_auc(meta: RunMeta, booster) -> float:
    test = meta.split("test")
    return roc_auc_score(np.asarray(test["label"]), booster.predict(test.drop_columns(["label"])))


TC = TrainConfig(num_boost_round=40, early_stopping_rounds=None, report_every=10, checkpoint_every=10)


@pytest.mark.slow
def test_ray_train_matches_in_process_and_survives_a_killed_worker(meta, tmp_path):
    plain = train_in_process(meta, TC)
    ray_run = train_with_ray(meta, TC, ResourcesConfig(), tmp_path / "train", "clean")
    assert ray_run.best_iteration == 40 and ray_run.metrics["resumed_from"] == 0
    clean_auc = _test_auc(meta, ray_run.booster)
    assert abs(clean_auc - _test_auc(meta, plain.booster)) < 0.005
    # Kill the worker process at round 35: Ray Train restarts it, and it resumes from a checkpoint.
    failed = train_with_ray(meta, TC, ResourcesConfig(max_failures=1), tmp_path / "train", "killed",
                            faults=Faults(fail_at_iteration=35))
    assert failed.metrics["resumed_from"] in (10, 20, 30)  # the last checkpoint the controller had registered, not 0
    assert failed.booster.current_iteration() == 40
    assert abs(_test_auc(meta, failed.booster) - clean_auc) <= 0.002


def test_two_workers_train_one_data_parallel_model_on_all_rows(meta, tmp_path):
    run = train_with_ray(meta, TC, ResourcesConfig(num_workers=2), tmp_path / "train", "two")
    assert run.booster.current_iteration() == 40
    # Each worker holds half of train; the first tree's root still counts every training row, so the
    # workers grew one model from shared histograms (not two models on two halves).
    root_count = run.booster.dump_model()["tree_info"][0]["tree_structure"]["internal_count"]
    rows = meta.rows("train")
    assert root_count == rows
    plain = train_in_process(meta, TC)
    assert abs(_test_auc(meta, run.booster) - _test_auc(meta, plain.booster)) < 0.005


def test_a_refit_on_ray_train_trains_on_train_and_validation_for_fixed_rounds(meta):
    from raygbm.training.fit import Candidate, final_model
    from raygbm.training.select import Scheme

    # A selection whose best iteration was 20, refit with scale 1.2 by two data-parallel workers.
    train = TrainConfig(num_boost_round=500, early_stopping_rounds=5, report_every=10, checkpoint_every=10,
                        refit_rounds_scale=1.2)
    selected = Candidate(train, meta, Scheme(None, 0, "holdout", 0), score=0.8, best_iteration=20)
    trained = final_model(selected, ResourcesConfig(num_workers=2))
    assert trained.refit["rounds"] == 24 and trained.refit["selection_best_iteration"] == 20
    booster = trained.result.booster
    assert booster.num_trees() == 24  # no early stopping: there is no holdout left to stop on
    root_count = booster.dump_model()["tree_info"][0]["tree_structure"]["internal_count"]
    assert root_count == trained.refit["rows"] == meta.rows("train") + meta.rows("validation")

"""One endpoint for every test of this package (v1 champion and v2 registered, v1 pinned and served), deployed
once and torn down after the package's last test: each test states the model it needs (`endpoint.serving`)."""

from __future__ import annotations

import pytest

from raygbm.config import EvaluateConfig, RegistryConfig, TrainConfig, load_config
from raygbm.data.preprocess import preprocess
from raygbm.monitoring.actor import MONITOR_ACTOR
from raygbm.registry.register import evaluate_and_register
from raygbm.registry.store import Registry
from raygbm.serving.deploy import deploy
from raygbm.training.fit import Trained
from raygbm.training.train import RunMeta, train_in_process
from tests.conftest import make_shards
from tests.helpers import raygbm_home
from tests.integration.serve.endpoint import MONITOR, SERVE


@pytest.fixture(scope="package")
def served(tmp_path_factory):
    from ray import serve

    with raygbm_home(tmp_path_factory.mktemp("home")):
        data = make_shards(tmp_path_factory.mktemp("data"), rows=80_000, shards=3, seed=4)
        cfg = load_config(None, ["data.drop=[id]", "features.derived=[{name: h, op: hour, inputs: [event_time]}]"],
                          {"data.source": str(data), "data.label": "label"})
        meta = RunMeta.load(preprocess(cfg).run_dir)
        for rounds in (40, 80):  # v1 (champion), v2 (its own, registered as candidate or champion)
            train = TrainConfig(num_boost_round=rounds, early_stopping_rounds=None)
            evaluate_and_register(meta, Trained(train_in_process(meta, train), meta, None), train,
                                  EvaluateConfig(permutation_rows=500), RegistryConfig(), None)
        Registry().promote(Registry().get("1"))
        url = deploy(RegistryConfig(), SERVE, MONITOR, "1")
        try:
            yield meta, url, tmp_path_factory.mktemp("drifted")
        finally:
            serve.shutdown()
            import ray

            ray.kill(ray.get_actor(MONITOR_ACTOR, namespace="raygbm"))

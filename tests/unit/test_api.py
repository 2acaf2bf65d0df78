"""The Python API (``raygbm.api``): ``raygbm.load_model`` scores raw rows as the bundle and the endpoint do,
importing raygbm loads none of it, and bad input is a typed error. No Ray (``raygbm.run`` is tested on the
shared local Ray in tests/integration/test_api_run.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

import raygbm
from raygbm.config import EvaluateConfig, RegistryConfig, TrainConfig, load_config
from raygbm.data.preprocess import LocalRunner, preprocess
from raygbm.data.split import RAW_TEST
from raygbm.errors import DataError, RaygbmError
from raygbm.registry.register import evaluate_and_register
from raygbm.registry.store import Registry
from raygbm.training.fit import Trained
from raygbm.training.train import RunMeta, train_in_process
from tests.conftest import make_shards


@pytest.fixture
def registered(tmp_path, home):
    data = make_shards(tmp_path / "data", rows=6000, shards=2, seed=4)
    cfg = load_config(None, [], {"data.source": str(data), "data.label": "label"})
    meta = RunMeta.load(preprocess(cfg, runner=LocalRunner()).run_dir)
    train = TrainConfig(num_boost_round=30, early_stopping_rounds=None)
    for rounds in (30, 5):  # v1 the champion, v2 a weaker candidate
        train = TrainConfig(num_boost_round=rounds, early_stopping_rounds=None)
        evaluate_and_register(meta, Trained(train_in_process(meta, train), meta, None), train,
                              EvaluateConfig(permutation_rows=200), RegistryConfig(), None)
    return meta


def test_importing_raygbm_loads_no_api_and_the_names_resolve_on_use():
    code = ("import sys, raygbm; assert 'raygbm.api' not in sys.modules and 'ray' not in sys.modules; "
            "f = raygbm.load_model; assert 'raygbm.api' in sys.modules and 'ray' not in sys.modules; "
            "assert {'run', 'load_model', 'Model'} <= set(dir(raygbm))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    with pytest.raises(AttributeError):
        raygbm.no_such_name  # noqa: B018


def test_load_model_scores_the_raw_rows_of_the_training_data_as_the_bundle_does(registered):
    meta = registered
    raw = pq.read_table(meta.run_dir / RAW_TEST)
    champion = raygbm.load_model()
    assert (champion.version, champion.name, champion.task) == (Registry().get().version, "raygbm", "binary")
    frame = raw.to_pandas()  # every column the data had (the label, the id the lint left out) included
    out = champion.predict(frame)
    expected = champion.bundle.scores(champion.bundle.features(raw))
    assert list(out.columns) == ["prediction", "score"] and len(out) == raw.num_rows
    assert np.array_equal(out["score"].to_numpy(), expected)
    assert set(out["prediction"]) <= {0, 1} and "id" not in champion.features
    assert np.array_equal(champion.predict(raw)["score"].to_numpy(), expected)  # a pyarrow Table too
    v2 = raygbm.load_model(2)
    assert v2.version == "2" and not np.array_equal(v2.predict(frame)["score"].to_numpy(), expected)


def test_bad_input_and_unknown_versions_are_typed_errors(registered):
    model = raygbm.load_model("champion")
    raw = pq.read_table(registered.run_dir / RAW_TEST).to_pandas()
    with pytest.raises(DataError, match="lacks column"):
        model.predict(raw.drop(columns=[model.features[0]]))
    with pytest.raises(RaygbmError):
        raygbm.load_model(99)
    with pytest.raises(RaygbmError, match="no champion|no such"):
        raygbm.load_model(overrides={"registry.model_name": "nothing-here"})

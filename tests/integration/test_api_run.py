"""``raygbm.run`` (the Python API) on the shared local Ray: the whole pipeline from a notebook's call, its
outcome, then ``raygbm.load_model`` scoring the raw test rows as the registered bundle does; bad input is
a typed error before any Ray work."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

import raygbm
from raygbm.data.split import RAW_TEST
from raygbm.errors import DataError
from tests.conftest import make_shards
from tests.helpers import raygbm_home


def test_run_then_load_model_from_python(tmp_path):
    data = make_shards(tmp_path / "data", rows=6000, shards=2, seed=21)
    with raygbm_home(tmp_path / "home"):
        with pytest.raises(DataError, match="no label"):
            raygbm.run(data)
        outcome = raygbm.run(data, label="label", trials=0, overrides={"train.num_boost_round": 40})
        assert (outcome.version, outcome.decision) == ("1", "champion"), outcome.reason
        assert 0.5 < outcome.metrics["roc_auc"] <= 1 and outcome.card_path.exists()
        model = raygbm.load_model()
        run_dir = next((tmp_path / "home" / "runs").glob("preprocess-*"))
        raw = pq.read_table(run_dir / RAW_TEST)
        scores = model.predict(raw.to_pandas())["score"].to_numpy()
        assert model.version == "1" and np.array_equal(scores, model.bundle.scores(model.bundle.features(raw)))
        print(f"raygbm.run: v{outcome.version} {outcome.decision}, test roc_auc {outcome.metrics['roc_auc']:.4f}; "
              f"load_model().predict scored {len(scores)} raw rows")

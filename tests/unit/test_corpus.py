"""Each real dataset of the corpus (``bench/corpus.py``: statsmodels, palmerpenguins, scikit-learn's bundled
sets and OpenML fixtures) end to end on a small budget, without Ray: the data stage, a 30-round model,
evaluation and registration, then the endpoint's JSON parsing and ``mlflow.pyfunc`` score the raw test
rows as the batch path does. ``bench/quality.py`` scores them all against plain LightGBM."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from bench.corpus import datasets
from raygbm.config import EvaluateConfig, RegistryConfig, TrainConfig, load_config
from raygbm.data.preprocess import LocalRunner, preprocess
from raygbm.data.split import RAW_TEST
from raygbm.registry.register import evaluate_and_register
from raygbm.registry.store import tracking_uri
from raygbm.serving.deploy import model_spec
from raygbm.serving.model_slot import load_served_model
from raygbm.training.fit import Trained
from raygbm.training.train import RunMeta, train_in_process
from tests.type_matrix import json_records

REAL = [s for s in datasets() if not s.generated]


def test_the_corpus_covers_every_kind_of_column_and_task():
    tables = {s.name: s.load(0) for s in REAL}
    types = {str(f.type) for t in tables.values() for f in t.schema}
    assert len(REAL) >= 10
    assert any(t.startswith("dictionary<values=string") for t in types) and {"bool", "string", "date32[day]"} <= types
    assert any(t.column(c).null_count for t in tables.values() for c in t.column_names)  # missing values
    assert {"double", "int64"} <= types


@pytest.mark.parametrize("spec", REAL, ids=[s.name for s in REAL])
def test_each_dataset_registers_and_scores_alike_everywhere(spec, tmp_path, monkeypatch):
    import mlflow.pyfunc

    monkeypatch.setenv("RAYGBM_HOME", str(tmp_path / "home"))
    pq.write_table(spec.load(0), tmp_path / "part-0.parquet")
    cfg = load_config(None, spec.sets, {"data.source": str(tmp_path / "part-0.parquet"), "data.label": spec.label})
    meta = RunMeta.load(preprocess(cfg, runner=LocalRunner()).run_dir)
    train = TrainConfig(num_boost_round=30, early_stopping_rounds=None)
    outcome = evaluate_and_register(meta, Trained(train_in_process(meta, train), meta, None), train,
                                    EvaluateConfig(permutation_rows=100), RegistryConfig(), None)
    assert outcome.decision == "champion" and all(np.isfinite(v) for v in outcome.metrics.values()
                                                  if isinstance(v, float))
    model = load_served_model(model_spec(RegistryConfig(), "1"), 100_000)
    raw = pq.read_table(meta.run_dir / RAW_TEST)
    expected = model.bundle.scores(model.bundle.features(raw))
    parsed = model.schema.parse(json.dumps(json_records(raw, model.schema.fields)).encode())
    np.testing.assert_array_equal(model.booster.predict(parsed.features), expected)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri())
    out = mlflow.pyfunc.load_model("models:/raygbm/1").predict(raw.select(list(model.schema.fields)).to_pandas())
    score = expected if expected.ndim == 1 else expected.max(axis=1)
    np.testing.assert_allclose(out["score"].to_numpy(), score, rtol=0, atol=1e-12)
    assert out["prediction"].tolist() == model.bundle.labelled(expected)[0]

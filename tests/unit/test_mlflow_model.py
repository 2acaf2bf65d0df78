"""The registered bundle is an MLflow Model: ``mlflow.pyfunc.load_model("models:/raygbm@champion")`` scores
raw rows as the bundle does, its signature and input example are the raw input columns, and a tampered
bundle file fails the load (the manifest's sha256 checks). Embedded sqlite store, no Ray."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from raygbm.config import EvaluateConfig, RegistryConfig, TrainConfig, load_config
from raygbm.data.preprocess import LocalRunner, preprocess
from raygbm.data.split import RAW_TEST
from raygbm.registry.bundle import Bundle
from raygbm.registry.register import evaluate_and_register
from raygbm.registry.store import Registry, local_bundle, tracking_uri
from raygbm.training.fit import Trained
from raygbm.training.train import RunMeta, train_in_process
from tests.conftest import make_shards


@pytest.fixture
def registered(tmp_path, home, monkeypatch):
    data = make_shards(tmp_path / "data", rows=8000, shards=2, seed=3)
    cfg = load_config(None, ["data.drop=[id]", "features.derived=[{name: h, op: hour, inputs: [event_time]}]"],
                      {"data.source": str(data), "data.label": "label"})
    meta = RunMeta.load(preprocess(cfg, runner=LocalRunner()).run_dir)
    train = TrainConfig(num_boost_round=30, early_stopping_rounds=None)
    evaluate_and_register(meta, Trained(train_in_process(meta, train), meta, None), train,
                          EvaluateConfig(permutation_rows=500), RegistryConfig(), None)
    # mlflow.pyfunc reads the store from the environment, like any MLflow client.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri())
    return meta


def test_champion_loads_as_pyfunc_and_scores_like_the_bundle(registered):
    import mlflow.pyfunc

    raw = pq.read_table(registered.run_dir / RAW_TEST)
    model = mlflow.pyfunc.load_model("models:/raygbm@champion")
    ref, path = local_bundle(Registry(), "champion")
    bundle = Bundle.load(path, ref.tags["manifest_sha256"])
    inputs = model.metadata.get_input_schema().input_names()
    assert inputs == bundle.preprocessor.input_columns and "event_time" in inputs and "label" not in inputs
    assert [c.name for c in model.metadata.get_output_schema().inputs] == ["prediction", "score"]
    # event_time is a zoned time (UTC): MLflow's datetime is naive, so the column is Any and taken as it is.
    assert model.metadata.metadata["raygbm_input_types"]["event_time"] == "timestamp[us, tz=UTC]"
    frame = raw.select(inputs).to_pandas()
    out = model.predict(frame)
    expected = bundle.scores(bundle.features(raw))
    np.testing.assert_array_equal(out["score"].to_numpy(), expected)
    # Naive times are UTC (MLflow's datetimes are naive).
    naive = frame.assign(event_time=frame["event_time"].dt.tz_localize(None))
    np.testing.assert_array_equal(model.predict(naive)["score"].to_numpy(), expected)
    # Rows as users have them: a column the model leaves out (data.drop=[id]) is ignored.
    np.testing.assert_array_equal(model.predict(frame.assign(id=range(len(frame))))["score"].to_numpy(), expected)
    labels, _ = bundle.labelled(expected)
    assert out["prediction"].tolist() == labels
    # The input example is made from the schema and scores.
    example = json.loads((path / "input_example.json").read_text())
    assert example["columns"] == inputs
    assert model.predict(model.input_example)["score"].between(0, 1).all()


def test_generated_shards_read_back_score_through_pyfunc_with_the_default_config(tmp_path, home, monkeypatch):
    """The issue's repro: ``raygbm generate`` + a run with the default config, then the raw rows read back
    from the shards (id, event_time and the label included) score through ``models:/raygbm@champion``, as
    the bundle scores them; id (int64) is left out of the features and ignored."""
    import mlflow.pyfunc
    import pandas as pd

    data = make_shards(tmp_path / "data", rows=4000, shards=2, seed=5)
    cfg = load_config(None, [], {"data.source": str(data), "data.label": "label"})
    meta = RunMeta.load(preprocess(cfg, runner=LocalRunner()).run_dir)
    train = TrainConfig(num_boost_round=15, early_stopping_rounds=None)
    evaluate_and_register(meta, Trained(train_in_process(meta, train), meta, None), train,
                          EvaluateConfig(permutation_rows=100), RegistryConfig(), None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri())
    model = mlflow.pyfunc.load_model("models:/raygbm@champion")
    ref, path = local_bundle(Registry(), "champion")
    bundle = Bundle.load(path, ref.tags["manifest_sha256"])
    raw = pq.read_table(data)
    expected = bundle.scores(bundle.features(raw))
    labels, _ = bundle.labelled(expected)
    for what, frame in (("pyarrow", raw.to_pandas()), ("pandas", pd.read_parquet(data))):
        assert str(frame["id"].dtype) == "int64" and {"label", "event_time"} <= set(frame.columns), what
        out = model.predict(frame)
        np.testing.assert_array_equal(out["score"].to_numpy(), expected, err_msg=what)
        assert out["prediction"].tolist() == labels, what


def test_a_tampered_booster_fails_the_pyfunc_load(registered, tmp_path):
    import mlflow.pyfunc

    ref, path = local_bundle(Registry(), "champion")
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(path, copy)
    assert mlflow.pyfunc.load_model(str(copy)) is not None
    model_txt = copy / "model.txt"
    model_txt.write_text(model_txt.read_text().replace("learning_rate", "learning_rate ", 1))
    with pytest.raises(Exception, match="does not match its sha256"):
        mlflow.pyfunc.load_model(str(copy))

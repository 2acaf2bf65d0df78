"""Every column type the data stage accepts, with missing values, and every label kind, through every
surface that runs without Ray: preprocess → train → register, then the same scores from the batch path,
/predict's JSON records, CSV and Arrow table bodies, Open Inference Protocol tensors and ``mlflow.pyfunc``.
(The real CLI, the endpoint over HTTP, a Parquet job and the drift report: tests/integration/test_type_matrix.py.)"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from raygbm.config import EvaluateConfig, RegistryConfig, TrainConfig, load_config
from raygbm.data.preprocess import LocalRunner, preprocess
from raygbm.data.split import RAW_TEST
from raygbm.registry.register import evaluate_and_register
from raygbm.registry.store import tracking_uri
from raygbm.serving import oip, tables
from raygbm.serving.deploy import model_spec
from raygbm.serving.model_slot import load_served_model
from raygbm.training.fit import Trained
from raygbm.training.train import RunMeta, train_in_process
from tests.helpers import raygbm_home
from tests.type_matrix import DERIVED, LABELS, json_records, write_pandas_categoricals, write_type_matrix

TASKS = {"y_int": "binary", "y_bool": "binary", "y_str": "binary", "y_class": "multiclass", "y_float": "regression"}


@pytest.fixture(scope="module", params=LABELS)
def registered(request, tmp_path_factory):
    """The type matrix with one label kind, registered as v1 and loaded as a replica loads it."""
    label = request.param
    with raygbm_home(tmp_path_factory.mktemp("home")):
        data = write_type_matrix(tmp_path_factory.mktemp("data"), label, rows=2000)
        cfg = load_config(None, [f"features.derived={DERIVED}"], {"data.source": str(data), "data.label": label})
        meta = RunMeta.load(preprocess(cfg, runner=LocalRunner()).run_dir)
        train = TrainConfig(num_boost_round=20, early_stopping_rounds=None)
        evaluate_and_register(meta, Trained(train_in_process(meta, train), meta, None), train,
                              EvaluateConfig(permutation_rows=200), RegistryConfig(), None)
        model = load_served_model(model_spec(RegistryConfig(), "1"), 5000)
        raw = pq.read_table(meta.run_dir / RAW_TEST)
        yield label, model, raw, model.bundle.scores(model.bundle.features(raw)), tracking_uri()


def test_the_task_and_the_predictions_are_the_labels_own(registered):
    label, model, raw, expected, _ = registered
    assert model.bundle.task == TASKS[label]
    prediction, _ = model.bundle.labelled(expected)
    values = set(raw.column(label).to_pylist())
    assert set(prediction) <= values if TASKS[label] != "regression" else len(prediction) == raw.num_rows
    # Every input type is read: numbers and categoricals as features, times through derived features.
    s = model.bundle.preprocessor.schema
    assert {"x_int8", "x_uint64", "x_float32", "x_bool", "x_int_cat"} <= set(s.numeric)
    assert {"x_str", "x_large_str", "x_cat"} <= set(s.categorical)
    assert {"x_ts", "x_ts_tz", "x_date"} <= set(model.schema.fields)


def test_json_records_score_as_the_batch_path(registered):
    _, model, raw, expected, _ = registered
    parsed = model.schema.parse(json.dumps(json_records(raw, model.schema.fields)).encode())
    np.testing.assert_array_equal(model.booster.predict(parsed.features), expected)
    assert parsed.missing.any(axis=0).sum() >= len(model.schema.fields) - 1  # the nulls reach the monitor


def test_arrow_and_csv_bodies_score_as_the_batch_path(registered):
    label, model, raw, expected, _ = registered
    types = model.bundle.preprocessor.schema.types
    arrow = tables.read_table(tables.write_table(raw, tables.ARROW_STREAM), tables.ARROW_STREAM, types, 100)
    np.testing.assert_array_equal(model.booster.predict(model.table_matrix(arrow)), expected)
    sink = pa.BufferOutputStream()
    pacsv.write_csv(raw.drop_columns([label]), sink)
    csv = tables.read_table(sink.getvalue().to_pybytes(), "text/csv", types, 100)
    np.testing.assert_allclose(model.booster.predict(model.table_matrix(csv)), expected, rtol=1e-12)


def test_open_inference_protocol_tensors_score_as_the_batch_path(registered):
    _, model, raw, expected, _ = registered
    meta = oip.model_metadata(model)
    records = json_records(raw, model.schema.fields)
    inputs = [{"name": i["name"], "shape": [len(records)], "datatype": i["datatype"],
               "data": [r[i["name"]] for r in records]} for i in meta["inputs"]]
    parsed = oip.parse_infer(json.dumps({"inputs": inputs}).encode(), {}, model).parsed
    np.testing.assert_array_equal(model.booster.predict(parsed.features), expected)


def test_mlflow_pyfunc_scores_as_the_batch_path(registered, monkeypatch):
    import mlflow.pyfunc

    label, model, raw, expected, uri = registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    pyfunc = mlflow.pyfunc.load_model("models:/raygbm/1")
    names = pyfunc.metadata.get_input_schema().input_names()
    assert names == list(model.schema.fields)
    frame = raw.select(names).to_pandas()
    for c in ("x_ts_tz",):  # MLflow's datetime columns are naive (read as UTC)
        frame[c] = frame[c].dt.tz_convert("UTC").dt.tz_localize(None)
    out = pyfunc.predict(frame)
    score = expected if expected.ndim == 1 else expected.max(axis=1)
    np.testing.assert_allclose(out["score"].to_numpy(), score, rtol=0, atol=1e-12)
    assert out["prediction"].tolist() == model.bundle.labelled(expected)[0]


def test_pandas_categoricals_register_and_score(tmp_path, monkeypatch):
    """The issue's repro: a DataFrame with ``category`` columns (stored as dictionary<string, int8>),
    nullable integers and booleans, written by pandas, registers and scores through pyfunc."""
    import mlflow.pyfunc

    monkeypatch.setenv("RAYGBM_HOME", str(tmp_path / "home"))
    data = write_pandas_categoricals(tmp_path / "data")
    cfg = load_config(None, [], {"data.source": str(data), "data.label": "y"})
    meta = RunMeta.load(preprocess(cfg, runner=LocalRunner()).run_dir)
    schema = json.loads((meta.run_dir / "schema.json").read_text())
    assert schema["types"]["edu"].startswith("dictionary<values=string, indices=int8")
    train = TrainConfig(num_boost_round=10, early_stopping_rounds=None)
    outcome = evaluate_and_register(meta, Trained(train_in_process(meta, train), meta, None), train,
                                    EvaluateConfig(permutation_rows=100), RegistryConfig(), None)
    assert outcome.version == "1" and outcome.decision == "champion"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri())
    pyfunc = mlflow.pyfunc.load_model("models:/raygbm/1")
    frame = pq.read_table(data).to_pandas()
    assert str(frame["edu"].dtype) == "category" and str(frame["kids"].dtype) == "Int64"
    out = pyfunc.predict(frame.drop(columns=["y"]))
    assert out["prediction"].isin([0, 1]).all() and len(out) == len(frame)

"""MLflow tracking + registry on an embedded sqlite store, the champion gate, bundles and batch
prediction through the local (no-Ray) runner."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from raygbm.bundle import Bundle
from raygbm.config import EvaluateConfig, RegistryConfig, TrainConfig, load_config
from raygbm.data import LocalRunner, preprocess
from raygbm.errors import DataError
from raygbm.pipeline import Trained, evaluate_and_register, evaluate_registered
from raygbm.predict import predict_dataset
from raygbm.registry import Registry, RegistryError, local_bundle, verify_bundle, write_manifest
from raygbm.split import RAW_TEST
from raygbm.train import RunMeta, train_in_process
from tests.conftest import make_shards


@pytest.fixture
def meta(tmp_path, home):
    data = make_shards(tmp_path / "data", rows=12_000, shards=2)
    cfg = load_config(None, ["data.drop=[id]"], {"data.source": str(data), "data.label": "label"})
    return RunMeta.load(preprocess(cfg, runner=LocalRunner()).run_dir)


def _register(meta, rounds, registry=RegistryConfig()):
    train = TrainConfig(num_boost_round=rounds, early_stopping_rounds=None)
    trained = Trained(train_in_process(meta, train), meta, None)
    return evaluate_and_register(meta, trained, train, EvaluateConfig(permutation_rows=1000), registry, None)


def test_gate_registry_bundle_and_batch_prediction(meta, home, tmp_path):
    first = _register(meta, 60)
    assert first.decision == "champion" and first.version == "1"
    worse = _register(meta, 2)
    assert worse.decision == "candidate" and worse.champion_score == pytest.approx(first.metrics["roc_auc"])
    assert "does not beat champion v1" in worse.reason
    reg = Registry()
    assert reg.get().version == "1"
    assert [(v.version, "champion" in v.aliases) for v in reg.versions()] == [("2", False), ("1", True)]
    assert (home / "mlflow.db").exists()

    # What MLflow holds: params, test metrics, the bundle with its manifest, plots and the card.
    client = reg.client
    run = client.get_run(reg.get("1").run_id)
    assert run.data.metrics["test_roc_auc"] == pytest.approx(first.metrics["roc_auc"])
    assert run.data.params["objective"] == "binary"
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/model.txt", "model/preprocessor.json", "model/manifest.json", "model/metrics.json"} <= arts
    report = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/model_card.md", "report/model_card.html", "report/plots", "report/data_report.json"} <= report

    # The champion scored on the raw test rows through its own preprocessor gives its registered metric.
    ref, metrics = evaluate_registered(meta, RegistryConfig(), "champion")
    assert ref.version == "1" and metrics["roc_auc"] == pytest.approx(first.metrics["roc_auc"], abs=1e-12)

    # Batch prediction on the raw test rows equals the model on the preprocessed test split.
    ref, bundle = local_bundle(reg)
    out = predict_dataset(str(meta.run_dir / RAW_TEST), tmp_path / "scored.parquet", bundle, runner=LocalRunner())
    scored = pq.read_table(tmp_path / "scored.parquet")
    model = Bundle.load(bundle)
    expected = model.booster.predict(meta.split("test").drop_columns(["label"]))
    assert out["rows"] == scored.num_rows == len(expected)
    np.testing.assert_array_equal(np.asarray(scored["score"]), expected)
    assert set(pq.read_table(meta.run_dir / RAW_TEST).column_names) < set(scored.column_names)
    assert set(np.asarray(scored["prediction"])) <= {0, 1}
    with pytest.raises(DataError, match="already exists"):
        predict_dataset(str(meta.run_dir / RAW_TEST), tmp_path / "scored.parquet", bundle, runner=LocalRunner())
    with pytest.raises(DataError, match="already has column"):
        predict_dataset(str(tmp_path / "scored.parquet"), tmp_path / "again", bundle, runner=LocalRunner())


def test_a_tampered_bundle_is_refused(meta, tmp_path):
    _register(meta, 5)
    reg = Registry()
    ref, bundle = local_bundle(reg)
    (bundle / "model.txt").write_text((bundle / "model.txt").read_text().replace("num_leaves", "num_leaveZ", 1))
    with pytest.raises(RegistryError, match="model.txt does not match"):
        verify_bundle(bundle, ref.tags["manifest_sha256"])
    # A re-written manifest does not help: its own hash is pinned in the registry.
    write_manifest(bundle)
    with pytest.raises(RegistryError, match="pinned in the registry"):
        Bundle.load(bundle, ref.tags["manifest_sha256"])
    # local_bundle notices and fetches a clean copy from the store.
    _, again = local_bundle(reg)
    assert Bundle.load(again, ref.tags["manifest_sha256"]).booster.num_trees() == 5


def test_missing_model_and_wrong_columns(meta, tmp_path):
    with pytest.raises(RegistryError, match="no champion model yet"):
        local_bundle(Registry())
    _register(meta, 5)
    with pytest.raises(RegistryError, match="version 7: not found"):
        Registry().get("7")
    ref, bundle = local_bundle(Registry())
    raw = pq.read_table(meta.run_dir / RAW_TEST)
    pq.write_table(raw.drop_columns(["num_3"]), tmp_path / "short.parquet")
    with pytest.raises(DataError, match="lacks column.*num_3"):
        predict_dataset(str(tmp_path / "short.parquet"), tmp_path / "o", bundle, runner=LocalRunner())
    import pyarrow as pa

    pq.write_table(raw.set_column(raw.schema.get_field_index("cat_0"), "cat_0", pa.array(np.arange(raw.num_rows))),
                   tmp_path / "typed.parquet")
    with pytest.raises(DataError, match="column 'cat_0' is int64"):
        predict_dataset(str(tmp_path / "typed.parquet"), tmp_path / "o", bundle, runner=LocalRunner())
    assert not (tmp_path / "o").exists()

"""MLflow tracking + registry on an embedded sqlite store, the champion gate, bundles and batch
prediction through the local (no-Ray) runner."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from raygbm.config import EvaluateConfig, RegistryConfig, TrainConfig, load_config
from raygbm.data.preprocess import LocalRunner, preprocess
from raygbm.data.split import RAW_TEST
from raygbm.errors import DataError
from raygbm.paths import sha256_file
from raygbm.predict import predict_dataset
from raygbm.registry.bundle import MANIFEST_FILE, Bundle, verify_bundle, write_manifest
from raygbm.registry.gate import Gate, gate_decision
from raygbm.registry.register import evaluate_and_register, evaluate_registered, write_bundle
from raygbm.registry.store import Registry, RegistryError, local_bundle
from raygbm.training.fit import Trained
from raygbm.training.train import RunMeta, train_in_process
from tests.conftest import make_shards
from tests.helpers import flip_one_byte, store_file


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


def test_one_flipped_byte_in_the_store_is_refused_and_never_promoted(meta, home, tmp_path):
    """FAULT tamper: one byte of a registered model file flipped in the artifact store. Loading it names
    the file and both hashes; promoting it (by hand or by the gate) is refused and the alias stays."""
    _register(meta, 5)
    second = _register(meta, 60)  # beats v1: promoted by the gate
    reg = Registry()
    assert second.decision == "champion" and reg.get().version == "2"
    reg.promote(reg.get("1"))  # back to v1; v2 is then tampered with in the store
    shutil.rmtree(home / "models" / "raygbm" / "2", ignore_errors=True)  # no clean local copy to fall back on
    target = store_file(reg, "2")
    expected = json.loads((target.parent / MANIFEST_FILE).read_text())["sha256"]["model.txt"]
    flip_one_byte(target)
    found = sha256_file(target)
    with pytest.raises(RegistryError) as refused:
        local_bundle(reg, "2")
    message = str(refused.value)
    assert "model.txt does not match its sha256" in message and found in message and expected in message
    with pytest.raises(RegistryError, match="model v2 not promoted: .*model.txt does not match"):
        reg.promote(reg.get("2"))
    assert reg.get().version == "1"
    r = subprocess.run([str(Path(sys.executable).with_name("raygbm")), "promote", "2"], capture_output=True, text=True,
                       env={**os.environ, "RAYGBM_HOME": str(home)})
    (line,) = r.stderr.strip().splitlines()
    assert r.returncode == 4 and line.startswith("error: model v2 not promoted") and found in line
    assert reg.get().version == "1"
    print("FAULT tamper-store file=model.txt load_refused=yes named_hash=yes promoted=no")


@pytest.mark.parametrize("dies_at", ["register", "promote"])
def test_a_registration_killed_midway_is_finished_by_the_rerun(meta, monkeypatch, dies_at):
    """A crash after the run and bundle are logged (before the version exists), or after the version
    exists (before the alias moves): running the same registration again finishes it, with one version,
    its whole bundle, the alias, and the earlier attempt's MLflow run closed."""
    train = TrainConfig(num_boost_round=5, early_stopping_rounds=None)
    trained = Trained(train_in_process(meta, train), meta, None)

    def killed(*_a, **_k):
        raise KeyboardInterrupt  # like a SIGKILL here: nothing after this line runs

    with monkeypatch.context() as m:
        m.setattr(Registry, dies_at, killed)
        with pytest.raises(KeyboardInterrupt):
            evaluate_and_register(meta, trained, train, EvaluateConfig(permutation_rows=200), RegistryConfig(), None)
    reg = Registry()
    assert reg.get() is None and len(reg.versions()) == (1 if dies_at == "promote" else 0)
    again = evaluate_and_register(meta, trained, train, EvaluateConfig(permutation_rows=200), RegistryConfig(), None)
    [ref] = reg.versions()
    assert again.version == ref.version == "1" and again.decision == "champion" and reg.get().version == "1"
    assert ref.tags["published"] == "true" and reg.download(ref).exists()
    runs = reg.client.search_runs([reg.experiment_id()], "tags.`raygbm.manifest_sha256` != ''")
    assert sorted(r.info.status for r in runs) == (["FINISHED", "KILLED"] if dies_at == "register" else ["FINISHED"])


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


# ---- the gate decision alone: no Ray, no MLflow


def test_the_first_model_is_champion():
    assert gate_decision("roc_auc", 0.7, None, None, "no champion yet", 0.0) == Gate("champion", "first model: no champion yet")


def test_a_champion_that_cannot_be_scored_keeps_the_new_model_a_candidate():
    why = "champion v3 cannot be scored on this data (input lacks column(s) the model needs: x)"
    assert gate_decision("roc_auc", 0.99, "3", None, why, 0.0) == Gate("candidate", why)


def test_a_better_model_beats_the_champion():
    gate = gate_decision("roc_auc", 0.81, "2", 0.80, "", 0.0)
    assert gate == Gate("champion", "test roc_auc 0.81 beats champion v2's 0.8")


def test_a_tie_or_a_gain_within_the_margin_does_not_beat_the_champion():
    tie = gate_decision("roc_auc", 0.8, "2", 0.8, "", 0.0)
    assert tie.decision == "candidate" and tie.reason == "test roc_auc 0.8 does not beat champion v2's 0.8 by more than 0"
    within = gate_decision("roc_auc", 0.805, "2", 0.8, "", 0.01)
    assert within.decision == "candidate" and "by more than 0.01" in within.reason
    assert gate_decision("roc_auc", 0.811, "2", 0.8, "", 0.01).decision == "champion"


def test_lower_is_better_metrics_gate_the_other_way():
    assert gate_decision("rmse", 0.9, "1", 1.0, "", 0.0).decision == "champion"
    assert gate_decision("rmse", 1.1, "1", 1.0, "", 0.0).decision == "candidate"
    assert gate_decision("log_loss", 0.45, "1", 0.5, "", 0.1).decision == "candidate"  # better, not by the margin


def test_write_bundle_writes_a_verified_loadable_bundle(meta, tmp_path):
    train = TrainConfig(num_boost_round=5, early_stopping_rounds=None)
    booster = train_in_process(meta, train).booster
    sha = write_bundle(tmp_path / "b", booster, meta.run_dir, {"threshold": 0.4}, {"features": {}}, {"num_leaves": 31})
    manifest = verify_bundle(tmp_path / "b", sha)
    assert {"model.txt", "preprocessor.json", "schema.json", "metrics.json", "reference.json", "params.json",
            "MLmodel", "pyfunc_code.py", "input_example.json"} <= set(manifest["sha256"])
    assert MANIFEST_FILE not in manifest["sha256"]
    loaded = Bundle.load(tmp_path / "b", sha)
    assert loaded.threshold == 0.4 and loaded.booster.num_trees() == 5 and loaded.task == "binary"


def test_a_fresh_registry_promotes_without_having_connected_first(meta):
    """``promote`` downloads and verifies the version's bundle before moving the alias: a Registry that
    has not touched its client yet still knows its store."""
    _register(meta, 5)
    Registry().promote(Registry().get("1"))
    assert Registry().get().version == "1"


def test_a_version_is_gated_on_its_own_metric_or_its_task_default():
    from raygbm.registry.store import ModelRef

    def ref(**tags):
        return ModelRef("m", "3", "run", tags, [])

    assert ref(gate_metric="pr_auc", task="binary").gate_metric == "pr_auc"
    # Without the tag (a version registered before it existed): the task's default, never roc_auc for all.
    assert ref(task="regression").gate_metric == "rmse"
    assert ref(task="multiclass").gate_metric == "log_loss"
    with pytest.raises(RegistryError, match="neither a gate_metric nor a task tag"):
        _ = ref().gate_metric

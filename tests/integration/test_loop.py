"""The loop end to end on the shared local Ray, a real MLflow store and real Parquet: concept drift in
labelled traffic → realized performance drop → one retraining Ray Job → a promotion that recovers; a bad
challenger rejected with its reason; a bad promotion rolled back within K labelled windows."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from raygbm.config import PipelineConfig, load_config
from raygbm.data.generate import DriftSpec
from raygbm.loop.decisions import Decision
from raygbm.loop.retrain import apply_decision, holdout_metric, labelled_root, retrain
from raygbm.loop.rollback import check_rollback
from raygbm.loop.runner import realized_trigger
from raygbm.monitoring.labelled import META, read_labelled, training_rows, write_labelled
from raygbm.monitoring.loop_state import LoopState
from raygbm.pipeline import run_pipeline
from raygbm.registry.bundle import Bundle
from raygbm.registry.store import Registry, local_bundle
from tests.conftest import make_shards
from tests.helpers import wait_until

BASE = ["data.drop=[id]", "train.num_boost_round=150", "train.early_stopping_rounds=15", "tune.cv_folds=null",
        "retrain.trials=0", "retrain.holdout_share=0.3"]


def _cfg(data: Path, *more: str) -> PipelineConfig:
    return load_config(None, [*BASE, *more], {"data.source": str(data), "data.label": "label"})


def _rows(tmp: Path, name: str, rows: int, seed: int, drift: DriftSpec | None = None) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.read_table(make_shards(tmp / name, rows=rows, shards=1, seed=seed, drift=drift))


def _serve_and_label(cfg: PipelineConfig, version: str, rows: pa.Table, t0: float, invert: bool | str = False) -> int:
    """Rows as the endpoint would have served them with ``version`` (its input fields, its score), then
    labelled: written to the labelled store the way feedback does. ``invert``: each label the opposite of
    what the score says (the probe's poisoning: a client labelling against the model); ``"rank"``: the
    lowest-scored rows labelled positive, as many as there truly are (inverted, the class shares kept)."""
    ref, path = local_bundle(Registry(cfg.registry), version)
    bundle = Bundle.load(path, ref.tags.get("manifest_sha256"))
    raw = rows.select([*bundle.preprocessor.input_columns, "label"])
    scores = bundle.scores(bundle.features(raw))
    if invert:
        label = raw.column("label")
        inverted = (scores < bundle.threshold).astype("int64")
        if invert == "rank":
            inverted = np.zeros(len(scores), dtype="int64")
            inverted[np.argsort(scores)[:int(np.asarray(label).sum())]] = 1
        raw = raw.set_column(raw.column_names.index("label"), "label", pa.array(inverted).cast(label.type))
    n = raw.num_rows
    served = t0 + np.arange(n, dtype=np.float64)
    meta = {META[0]: [uuid.uuid4().hex for _ in range(n)], META[1]: [version] * n, META[2]: served,
            META[3]: served + 0.5, META[4]: scores}
    for col, values in meta.items():
        raw = raw.append_column(col, pa.array(values))
    write_labelled(labelled_root(cfg.monitor), cfg.registry.model_name, raw)
    return n


def _wait_job(client, job_id: str, timeout_s: float = 420) -> str:
    """The Ray Job's final status (the test fails if it has none within ``timeout_s``)."""
    def final() -> str | None:
        status = str(client.get_job_status(job_id).value)
        return status if status in ("SUCCEEDED", "FAILED", "STOPPED") else None

    return wait_until(final, timeout_s, interval=1.0, message=f"Ray Job {job_id} to end")


@pytest.mark.slow
def test_concept_drift_triggers_one_retraining_job_whose_promotion_recovers(tmp_path, home):
    from raygbm.loop.jobs import JobSubmitter
    from raygbm.loop.triggers import Controller

    cfg = _cfg(make_shards(tmp_path / "old", rows=8000, shards=2, seed=1),
               "retrain.include_source=false", "retrain.performance_rows=500", "retrain.cooldown_s=0")
    v1, _ = run_pipeline(cfg, tune=False)
    # The label's relation changes (generate's concept drift: num_0's effect flips) with shifted features.
    drifted = _rows(tmp_path, "new", 6000, seed=2, drift=DriftSpec(0, concept=True))
    _serve_and_label(cfg, v1.version, drifted, time.time() - 10_000)

    realized = realized_trigger(cfg)
    assert realized is not None and realized.kind == "performance" and f"champion v{v1.version}" in realized.reason
    jobs = JobSubmitter(cfg)
    state = LoopState(home, cfg.registry.model_name)
    controller = Controller(cfg.retrain, state, jobs.submit, jobs.status)
    entry = controller.tick(None, realized)
    assert entry["outcome"] == "submitted", entry
    assert controller.tick(None, realized) is None  # the same trigger never submits twice
    status = _wait_job(jobs.client, entry["job"])
    assert status == "SUCCEEDED", jobs.client.get_job_logs(entry["job"])[-3000:]
    controller.tick()
    doc = state.read()
    assert [j["status"] for j in doc["jobs"]] == ["SUCCEEDED"] and len(doc["triggers"]) == 1
    [decision] = doc["decisions"]
    assert decision["action"] == "promoted" and decision["trigger"] == realized.id
    reg = Registry(cfg.registry)
    assert reg.get().version == decision["version"] != v1.version
    assert reg.get(decision["version"]).tags["loop_action"] == "promoted"
    assert decision["value"] > decision["other_value"] + 0.05  # the champion had dropped; the challenger recovers

    # Within 0.01 AUC of a model trained directly on new data (as many rows as the challenger had) on the
    # same holdout: the most recent labelled rows, which neither trained on.
    labelled = read_labelled(labelled_root(cfg.monitor), cfg.registry.model_name)
    holdout = training_rows(labelled.slice(labelled.num_rows - decision["rows"]))
    fresh = make_shards(tmp_path / "fresh", rows=labelled.num_rows - decision["rows"], shards=1, seed=3,
                        drift=DriftSpec(0, concept=True))
    direct_cfg = _cfg(fresh, "registry.model_name=direct")
    direct, _ = run_pipeline(direct_cfg, tune=False)
    direct_auc = holdout_metric(Registry(direct_cfg.registry), direct.version, holdout, "roc_auc")
    assert decision["value"] >= direct_auc - 0.01, (decision, direct_auc)


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """A champion trained on the source, and two crippled retrainings on undrifted labelled traffic, each
    rejected: one for the test of the rejection, one for the test of a rollback (which promotes it), so
    neither test depends on what the other did or on their order."""
    tmp = tmp_path_factory.mktemp("gated")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAYGBM_HOME", str(tmp / "home"))
        cfg = _cfg(make_shards(tmp / "old", rows=8000, shards=2, seed=1), "retrain.rollback_window_rows=200",
                   "retrain.rollback_windows=3", "retrain.rollback_margin=0.02")
        v1, _ = run_pipeline(cfg, tune=False)
        _serve_and_label(cfg, v1.version, _rows(tmp, "same", 2000, seed=4), time.time() - 10_000)
        bad = cfg.model_copy(update={"train": cfg.train.model_copy(update={
            "num_boost_round": 2, "early_stopping_rounds": None, "params": {**cfg.train.params, "learning_rate": 0.01,
                                                                            "num_leaves": 2}})})
        rejected = retrain(bad, trigger="manual-test")
        worse = bad.model_copy(update={"train": bad.train.model_copy(update={"num_boost_round": 3})})
        to_roll_back = retrain(worse, trigger="manual-rollback")
        champion = Registry(cfg.registry).get().version  # after both rejections
        yield cfg, v1, {"rejected": rejected, "rollback": to_roll_back, "champion": champion}, tmp


def test_a_bad_challenger_is_not_promoted_and_the_reason_is_recorded(gated, monkeypatch):
    cfg, v1, results, tmp = gated
    result = results["rejected"]
    monkeypatch.setenv("RAYGBM_HOME", str(tmp / "home"))
    d = result.decision
    assert d.action == "rejected" and d.version != v1.version and d.other_version == v1.version
    assert f"does not beat champion v{v1.version}" in d.reason and d.value < d.other_value
    assert result.holdout_rows == 600 and result.train_rows == 1400
    reg = Registry(cfg.registry)
    assert results["champion"] == v1.version and d.version != results["rollback"].version
    tags = reg.get(d.version).tags
    assert tags["loop_action"] == "rejected" and tags["gate_reason"] == d.reason and tags["decision"] == "candidate"
    run = reg.client.get_run(reg.get(d.version).run_id).data
    assert run.tags["raygbm.loop_action"] == "rejected" and run.tags["raygbm.loop_reason"] == d.reason
    assert run.metrics["loop_rejected_other_value"] == pytest.approx(d.other_value)
    [recorded] = [r for r in LoopState(tmp / "home", cfg.registry.model_name).read()["decisions"]
                  if r["version"] == d.version]
    assert recorded["action"] == "rejected" and recorded["reason"] == d.reason and recorded["trigger"] == "manual-test"
    from raygbm.cli import app

    listed = CliRunner().invoke(app, ["models"])
    assert listed.exit_code == 0 and f"rejected: {d.reason}" in listed.output


def test_a_bad_promotion_is_rolled_back_within_k_windows(gated, monkeypatch):
    cfg, v1, results, tmp = gated
    monkeypatch.setenv("RAYGBM_HOME", str(tmp / "home"))
    bad = results["rollback"].version
    assert results["rollback"].decision.action == "rejected" and bad != results["rejected"].version
    forced = Decision("promoted", bad, "forced by the test", "roc_auc", None, v1.version, None, 0)
    apply_decision(cfg.registry, forced)
    reg, state = Registry(cfg.registry), LoopState(tmp / "home", cfg.registry.model_name)
    assert reg.get().version == bad and state.read()["watch"]["status"] == "watching"
    traffic = _rows(tmp, "after", 600, seed=5)
    verdict = None
    for k in range(3):
        assert check_rollback(cfg.retrain, cfg.registry, state, labelled_root(cfg.monitor)) is None or verdict
        _serve_and_label(cfg, bad, traffic.slice(200 * k, 200), time.time() + 200 * k)
        verdict = check_rollback(cfg.retrain, cfg.registry, state, labelled_root(cfg.monitor))
        if verdict is not None:
            break
    assert verdict is not None and verdict.action == "rolled_back" and k < 3
    assert reg.get().version == v1.version
    assert verdict.value < verdict.other_value - 0.02 and verdict.rows == 200 * (k + 1)
    doc = state.read()
    assert doc["decisions"][-1]["action"] == "rolled_back" and doc["decisions"][-1]["version"] == bad
    assert doc["watch"]["status"] == "rolled_back"
    assert reg.get(bad).tags["loop_action"] == "rolled_back"


@pytest.mark.slow
def test_inverted_labels_promote_nothing_and_roll_nothing_back(tmp_path, monkeypatch):
    """The probe's poisoning, from a client holding the token: labels inverted against the champion's scores.
    The retraining's challenger is rejected as trained on suspicious labels, and inverted labels against a
    watched promotion do not roll it back; both decisions are recorded with their reason."""
    from raygbm.loop.retrain import evidence, trusted_rows

    monkeypatch.setenv("RAYGBM_HOME", str(tmp_path / "home"))
    cfg = _cfg(make_shards(tmp_path / "old", rows=8000, shards=2, seed=1), "registry.model_name=poisoned",
               "retrain.rollback_window_rows=200", "retrain.rollback_windows=2")
    v1, _ = run_pipeline(cfg, tune=False)
    _serve_and_label(cfg, v1.version, _rows(tmp_path, "traffic", 2000, seed=6), time.time() - 10_000, invert=True)
    result = retrain(cfg, trigger="manual-poison")
    d = result.decision
    print(f"FIGURE poisoning: challenger v{d.version} {d.action}: {d.reason}")
    reg, state = Registry(cfg.registry), LoopState(tmp_path / "home", cfg.registry.model_name)
    # Caught by the class shares (inverting at the threshold moves them) or the contradiction (v1's AUC on
    # them is below chance): either is the recorded reason.
    assert d.action == "rejected" and d.reason.startswith("suspicious labels:"), d.reason
    assert "total variation" in d.reason or "contradict" in d.reason
    assert reg.get().version == v1.version and state.read()["decisions"][-1]["reason"] == d.reason
    # The same lie keeping the class shares (the lowest-scored rows labelled positive): the contradiction.
    _serve_and_label(cfg, v1.version, _rows(tmp_path, "traffic2", 1500, seed=8), time.time() - 5_000, invert="rank")
    d = retrain(cfg, trigger="manual-poison-2").decision
    print(f"FIGURE poisoning, shares kept: challenger v{d.version} {d.action}: {d.reason}")
    assert d.action == "rejected" and d.reason.startswith("suspicious labels:") and "contradict" in d.reason, d.reason
    assert reg.get().version == v1.version

    # A good model promoted and watched (with v1's evidence on the trusted split, as a promotion keeps it);
    # a client then labels its traffic against its scores to force a rollback.
    good, _ = run_pipeline(_cfg(make_shards(tmp_path / "more", rows=8000, shards=2, seed=3),
                                "registry.model_name=poisoned"), tune=False, promote=False)
    trusted = evidence(reg, v1.version, trusted_rows(cfg), "roc_auc")
    apply_decision(cfg.registry, Decision("promoted", good.version, "by the test", "roc_auc", None, v1.version,
                                          None, 0), trusted=trusted)
    traffic = _rows(tmp_path, "after", 400, seed=7)
    verdict = None
    for k in range(2):
        _serve_and_label(cfg, good.version, traffic.slice(200 * k, 200), time.time() + 200 * k, invert=True)
        verdict = check_rollback(cfg.retrain, cfg.registry, state, labelled_root(cfg.monitor))
        if verdict is not None:
            break
    print(f"FIGURE poisoning: watched v{good.version}: {verdict.action if verdict else None}: "
          f"{verdict.reason if verdict else ''}")
    assert verdict is not None and verdict.action == "kept" and "rollback refused: suspicious labels" in verdict.reason
    assert reg.get().version == good.version and state.read()["watch"]["status"] == "suspicious"

"""A tuning driver killed mid-search: the next run restores the experiment (Tuner.restore) and does not
rerun the trials that had finished."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from raygbm.config import load_config
from raygbm.training.train import RunMeta
from raygbm.training.tune import tune_search
from tests.conftest import make_shards
from tests.helpers import wait_until

pytestmark = pytest.mark.slow


def _finished(tune_dir: Path) -> dict[str, bytes]:
    out = {}
    for result in tune_dir.glob("tune-*/tune_trial_*/result.json"):
        text = result.read_bytes()
        if b"best_iteration" in text:
            out[result.parent.name] = text
    return out


def _terminated_in_saved_state(tune_dir: Path) -> set[str]:
    """Trial ids the experiment state on disk records as finished (what a restore will not rerun)."""
    import json

    states = sorted(tune_dir.glob("tune-*/experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    if not states:
        return set()
    try:
        data = json.loads(states[-1].read_text())
    except (ValueError, OSError):  # caught mid-write
        return set()
    out = set()
    for entry in data.get("trial_data", []):
        trial = json.loads(entry[0])
        if trial.get("status") == "TERMINATED":
            out.add(trial["trial_id"])
    return out


def test_killed_tuning_driver_is_restored(tmp_path, home):
    import ray

    data = make_shards(tmp_path / "data", rows=60_000, shards=2, seed=5)
    sets = ["data.drop=[id]", "tune.trials=10", "train.num_boost_round=300", "train.report_every=10",
            "train.early_stopping_rounds=300", "tune.asha=false", "tune.cv_folds=null"]
    args = [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "RAYGBM_HOME": str(home),
           "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    cli = Path(sys.executable).with_name("raygbm")
    err = tmp_path / "tune.stderr"  # a file, not a pipe nobody reads while the driver runs
    with err.open("wb") as err_file:
        proc = subprocess.Popen([str(cli), "tune", "--data", str(data), "--label", "label", *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=err_file, start_new_session=True)
    try:
        # Kill once Tune's saved state records three trials as finished (a restore keeps those).
        wait_until(lambda: proc.poll() is not None or len(_terminated_in_saved_state(home / "tune")) >= 3, 240,
                   interval=0.3, message="Tune's saved state to record three finished trials")
        assert proc.poll() is None, err.read_text()[-2000:]
        done = _terminated_in_saved_state(home / "tune")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = {name: text for name, text in _finished(home / "tune").items() if any(t in name for t in done)}
    assert len(before) >= 3
    assert not list((home / "tune").glob("tune-*/best.json"))

    cfg = load_config(None, sets, {"data.source": str(data), "data.label": "label"})
    meta = RunMeta.load(next((home / "runs").glob("preprocess-*")))
    result = tune_search(meta, cfg.train, cfg.tune, cfg.resources)
    assert result.restored
    assert len(result.trials) == 10 and all(t["score"] is not None for t in result.trials)
    after = _finished(home / "tune")
    assert len(after) == 10
    # Trials that had finished before the kill were kept, not trained again.
    assert all(after[name] == text for name, text in before.items())

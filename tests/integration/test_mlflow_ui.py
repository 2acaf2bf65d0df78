"""After a run with the demo's config: the real ``raygbm ui`` serves the experiment, the run with its trials
as child runs, and the champion's version and artifacts over MLflow's REST API; the real ``raygbm models``
(no --config, as after `make demo`) lists the demo's model.

The UI's environment (the full mlflow, created on first use) is shared by test sessions through
``RAYGBM_UI_ENV``: the first session on a machine creates it (a minute or two), alongside the session's first
tests (tests/integration/conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from raygbm.config import load_config
from raygbm.pipeline import run_pipeline
from tests.conftest import make_shards
from tests.helpers import REPO, UI_ENV, raygbm_home, wait_until

pytestmark = pytest.mark.slow
RAYGBM = Path(sys.executable).with_name("raygbm")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One tuned run (2 trials) registered with the demo's config, in its own RAYGBM_HOME."""
    home = tmp_path_factory.mktemp("home")
    with raygbm_home(home):
        data = make_shards(tmp_path_factory.mktemp("data"), rows=6000, shards=2, seed=9)
        cfg = load_config(REPO / "pipelines" / "configs" / "demo.yaml",
                          ["tune.trials=2", "tune.sample_rows=4000", "tune.compare_defaults=false",
                           "train.num_boost_round=30", "train.report_every=5", "evaluate.permutation_rows=500"],
                          {"data.source": str(data)})
        outcome, tuning = run_pipeline(cfg)
    assert outcome.decision == "champion" and len(tuning.trials) == 2
    return home, cfg, outcome


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "RAYGBM_HOME": str(home), "RAYGBM_UI_ENV": str(UI_ENV)}


def test_models_after_the_demo_lists_the_demo_model(demo_run):
    home, cfg, outcome = demo_run
    r = subprocess.run([str(RAYGBM), "models"], capture_output=True, text=True, env=_env(home), timeout=120)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if f"v{outcome.version} " in x)
    assert line.startswith("*") and "champion" in line, r.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def _api(base: str, route: str, **query: str) -> dict:
    return json.loads(_get(f"{base}/ajax-api/2.0/mlflow/{route}?{urllib.parse.urlencode(query)}"))


def _artifact(base: str, run_id: str, path: str) -> bytes:
    """A run's artifact as the UI fetches it."""
    return _get(f"{base}/get-artifact?{urllib.parse.urlencode({'path': path, 'run_uuid': run_id})}")


def _search_runs(base: str, experiment_id: str) -> list[dict]:
    """POST runs/search, as the UI lists an experiment's runs (children included)."""
    body = json.dumps({"experiment_ids": [experiment_id], "max_results": 100}).encode()
    req = urllib.request.Request(f"{base}/ajax-api/2.0/mlflow/runs/search", data=body, method="POST",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["runs"]


def test_ui_serves_the_run_its_trials_and_the_champion(demo_run):
    home, cfg, outcome = demo_run
    port = _free_port()
    proc = subprocess.Popen([str(RAYGBM), "ui", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=_env(home))
    base = f"http://127.0.0.1:{port}"
    try:
        lines, line = [], ""
        for line in proc.stdout:  # the first start creates the UI's environment: minutes, once
            lines.append(line)
            if line.startswith("MLflow UI at "):
                break
        assert line.strip().startswith(f"MLflow UI at {base}"), "".join(lines)
        assert b"<html" in _get(base + "/").lower()
        (exp,) = [e for e in _api(base, "experiments/search", max_results="100")["experiments"]
                  if e["name"] == cfg.registry.experiment]
        runs = _search_runs(base, exp["experiment_id"])
        parent = next(r for r in runs if r["info"]["run_id"] == outcome.run_id)
        children = [r for r in runs if {"key": "mlflow.parentRunId", "value": outcome.run_id} in r["data"]["tags"]]
        assert len(children) == 2 and all(any(m["key"] == "score" for m in c["data"]["metrics"]) for c in children)
        history = _api(base, "metrics/get-history", run_id=children[0]["info"]["run_id"], metric_key="validation_score")
        assert len(history["metrics"]) >= 2  # metrics per round
        assert any(m["key"] == "test_roc_auc" for m in parent["data"]["metrics"])
        champion = _api(base, "registered-models/alias", name=cfg.registry.model_name,
                        alias="champion")["model_version"]
        assert champion["version"] == outcome.version and champion["run_id"] == outcome.run_id
        assert champion["tags"] and any(t["key"] == "decision" and t["value"] == "champion" for t in champion["tags"])
        files = {f["path"] for f in _api(base, "artifacts/list", run_id=outcome.run_id, path="model")["files"]}
        assert {"model/MLmodel", "model/model.txt", "model/manifest.json"} <= files
        report = {f["path"] for f in _api(base, "artifacts/list", run_id=outcome.run_id, path="report")["files"]}
        assert {"report/model_card.md", "report/model_card.html", "report/plots"} <= report
        mlmodel = _artifact(base, outcome.run_id, "model/MLmodel")
        assert b"python_function" in mlmodel and b"pyfunc_code.py" in mlmodel
        assert cfg.registry.model_name.encode() in _artifact(base, outcome.run_id, "report/model_card.md")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    assert proc.returncode == 0
    # The server went with it.
    wait_until(lambda: _refused(base), 30, message="the UI's server to stop")


def _refused(base: str) -> bool:
    try:
        _get(base + "/health")
    except OSError:
        return True
    return False

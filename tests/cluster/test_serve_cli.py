"""`raygbm serve` as systemd, Docker or Kubernetes run it: its own embedded Ray, stopped with SIGTERM.

Runs in the cluster session (after the integration tests have shut their Ray down, and after the head node
test stopped its head): never two Ray instances on this host at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from raygbm.config import EvaluateConfig, RegistryConfig, TrainConfig, load_config
from raygbm.data.preprocess import LocalRunner, preprocess
from raygbm.registry.register import evaluate_and_register
from raygbm.training.fit import Trained
from raygbm.training.train import RunMeta, train_in_process
from tests.conftest import make_shards
from tests.helpers import raygbm_home, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.integration]
PORT = 8279


def _register_a_model(home: Path, data: Path) -> None:
    """One registered champion, trained without Ray."""
    with raygbm_home(home):
        cfg = load_config(None, ["data.drop=[id]"], {"data.source": str(make_shards(data, rows=3000, shards=1)),
                                                     "data.label": "label"})
        meta = RunMeta.load(preprocess(cfg, runner=LocalRunner()).run_dir)
        train = TrainConfig(num_boost_round=10, early_stopping_rounds=None)
        evaluate_and_register(meta, Trained(train_in_process(meta, train), meta, None), train,
                              EvaluateConfig(permutation_rows=100), RegistryConfig(), None)


def _ray_processes() -> list[str]:
    out = subprocess.run(["pgrep", "-f", "raylet|gcs_server"], capture_output=True, text=True)
    return out.stdout.split()


def test_serve_stops_cleanly_on_sigterm(tmp_path):
    wait_until(lambda: not _ray_processes(), 30, message="no other Ray on this host (the head test stops its own)")
    home = tmp_path / "home"
    _register_a_model(home, tmp_path / "data")
    env = {**os.environ, "RAYGBM_HOME": str(home)}
    env.pop("RAY_ADDRESS", None)
    raygbm = str(Path(sys.executable).with_name("raygbm"))
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen([raygbm, "serve", "--port", str(PORT)], stdout=out, stderr=err, env=env, cwd=tmp_path)
    try:
        wait_until(lambda: "press Ctrl-C" in (tmp_path / "out").read_text() or proc.poll() is not None, 120,
                   interval=0.5, message="raygbm serve to deploy")
        assert proc.poll() is None, (tmp_path / "err").read_text()[-2000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/readyz", timeout=10) as r:
            assert json.loads(r.read())["status"] == "ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, (tmp_path / "err").read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stdout, stderr = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    assert "SIGTERM: draining the endpoint and stopping Ray" in stdout
    assert "Traceback" not in stderr and "SIGTERM received" not in stderr, stderr[-2000:]
    wait_until(lambda: not _ray_processes(), 15, message="the embedded Ray's processes to exit")

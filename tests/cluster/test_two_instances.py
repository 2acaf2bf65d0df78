"""Two `raygbm serve` endpoints with their loops on one host, as two raygbm processes would run (a `raygbm
serve` beside `make demo`, two endpoints): each embedded Ray takes free ports for everything, its dashboard
agent included, and each app's loop controller submits its retraining through its own Jobs API while the
other runs. Ray's fixed agent port (52365) once made the second instance answer "No available agent to
submit job", and its loop could never retrain.

Runs in its own pytest session (the cluster lane), after any other Ray of this host has stopped.
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

from tests.cluster.test_serve_cli import _ray_processes, _register_a_model
from tests.helpers import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.integration]
PORTS = (8331, 8332)
TOKEN = "two-instances-endpoint-token"  # an endpoint with the loop requires its token
# The schedule trigger fires within seconds; the job (a retraining with no labelled rows yet) ends either way:
# what counts is that each loop submitted it and its own Jobs API ran it.
LOOP = ["--set", "serve.require_token=true", "--set", "retrain.enabled=true", "--set", "retrain.check_s=1", "--set", "retrain.every_s=3",
        "--set", "retrain.cooldown_s=0", "--set", "retrain.drift=null", "--set", "retrain.performance_drop=null",
        "--set", "data.drop=[id]"]


def _serve(tmp: Path, port: int) -> subprocess.Popen:
    home = tmp / "home"
    _register_a_model(home, tmp / "data")
    env = {**os.environ, "RAYGBM_HOME": str(home), "RAYGBM_ENDPOINT_TOKEN": TOKEN}
    env.pop("RAY_ADDRESS", None)
    raygbm = str(Path(sys.executable).with_name("raygbm"))
    with open(tmp / "out", "w") as out, open(tmp / "err", "w") as err:
        return subprocess.Popen([raygbm, "serve", "--port", str(port), *LOOP], stdout=out, stderr=err, env=env, cwd=tmp)


def _retrain(port: int) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/retrain", headers={"authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _job_ended(tmp: Path, port: int, proc: subprocess.Popen) -> dict | str:
    """The loop's first job once its Jobs API says it ended ("exited" if `raygbm serve` did)."""
    def ended() -> dict | str | None:
        if proc.poll() is not None:
            return "exited"
        if "press Ctrl-C" not in (tmp / "out").read_text():
            return None
        jobs = _retrain(port)["jobs"]
        return jobs[0] if jobs and jobs[0]["status"] not in ("PENDING", "RUNNING") else None

    return wait_until(ended, 300, interval=1.0, message=f"a retraining job of the endpoint on port {port} to end")


def test_two_endpoints_with_loops_each_submit_their_job_through_their_own_jobs_api(tmp_path, figure):
    wait_until(lambda: not _ray_processes(), 30, message="no other Ray on this host")
    procs = []
    try:
        for i, port in enumerate(PORTS):  # the second starts while the first runs
            (tmp_path / str(i)).mkdir()
            procs.append(_serve(tmp_path / str(i), port))
            wait_until(lambda: "press Ctrl-C" in (tmp_path / str(i) / "out").read_text() or procs[-1].poll() is not None,
                       180, interval=0.5, message=f"raygbm serve on port {port}")
        jobs = [_job_ended(tmp_path / str(i), port, proc) for i, (port, proc) in enumerate(zip(PORTS, procs))]
        assert "exited" not in jobs, [(tmp_path / str(i) / "err").read_text()[-2000:] for i in range(2)]
        docs = [_retrain(port) for port in PORTS]
        for doc, job in zip(docs, jobs):
            figure(f"two endpoints: loop of {doc['controller']['pid']}: job {job['id']} {job['status']}; problem: {doc['problem']}")
            # A job the Jobs API ran to its end (it fails without labelled rows), not LOST to a refused submission.
            assert job["status"] in ("SUCCEEDED", "FAILED") and doc["problem"] is None, doc
            assert doc["triggers"][0]["outcome"] == "submitted", doc["triggers"]
        # `raygbm serve` says what its loop did.
        for i in range(2):
            assert "loop: trigger schedule-" in (tmp_path / str(i) / "err").read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    wait_until(lambda: not _ray_processes(), 60, message="both instances' Ray processes gone")

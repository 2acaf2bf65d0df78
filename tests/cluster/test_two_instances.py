"""Two embedded Rays on one host, as two raygbm processes would start them (`raygbm serve` beside `make
demo`, two endpoints): each takes free ports for everything, its dashboard agent included, and each one's
Jobs API runs a job while the other is up. Ray's fixed agent port (52365) once made the second instance
answer "No available agent to submit job", and its loop could never retrain.

Runs in its own pytest session (the cluster lane), after any other Ray of this host has stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# One instance: an embedded Ray as raygbm starts it, a job through its own Jobs API, then Ray stays up until
# stdin closes (so the other instance starts and submits while this one runs).
INSTANCE = """
import sys, time
from ray.job_submission import JobSubmissionClient
from raygbm.loop.jobs import dashboard_address
from raygbm.runtime import ensure_ray

ensure_ray()
client = JobSubmissionClient(dashboard_address())
job = client.submit_job(entrypoint=f"{sys.executable} -c 'print(40 + 2)'")
deadline = time.monotonic() + 120
while (status := str(client.get_job_status(job).value)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
    if time.monotonic() > deadline:
        break
    time.sleep(0.5)
print("INSTANCE", status, dashboard_address(), job, flush=True)
sys.stdin.read()
"""


def _ray_processes() -> list[str]:
    return subprocess.run(["pgrep", "-f", "raylet|gcs_server"], capture_output=True, text=True).stdout.split()


def _start(home: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "RAYGBM_HOME": str(home)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-c", INSTANCE], env=env, stdin=subprocess.PIPE,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)


def _result(log: Path, proc: subprocess.Popen) -> list[str]:
    """The instance's ``INSTANCE <status> <jobs api> <job id>`` line (the test fails at once if it exited)."""
    def line() -> list[str] | str | None:
        found = [ln.split() for ln in log.read_text().splitlines() if ln.startswith("INSTANCE ")]
        return found[0] if found else ("exited" if proc.poll() is not None else None)

    found = wait_until(line, 180, interval=0.5, message=f"the instance's job ({log})")
    assert found != "exited", log.read_text()[-3000:]
    return found


def test_two_embedded_rays_each_run_a_job_through_their_own_jobs_api(tmp_path):
    wait_until(lambda: not _ray_processes(), 30, message="no other Ray on this host")
    procs = []
    try:
        first = _start(tmp_path / "a", tmp_path / "a.log")
        procs.append(first)
        _, status_a, url_a, _ = _result(tmp_path / "a.log", first)
        second = _start(tmp_path / "b", tmp_path / "b.log")  # while the first is up
        procs.append(second)
        _, status_b, url_b, _ = _result(tmp_path / "b.log", second)
        print(f"FIGURE two instances: first {status_a} at {url_a}, second {status_b} at {url_b}")
        assert (status_a, status_b) == ("SUCCEEDED", "SUCCEEDED") and url_a != url_b
        assert all(url.startswith("http://127.0.0.1:") for url in (url_a, url_b))
    finally:
        for proc in procs:
            proc.stdin.close()
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    wait_until(lambda: not _ray_processes(), 60, message="both instances' Ray processes gone")

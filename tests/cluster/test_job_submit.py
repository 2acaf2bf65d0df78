"""A real local head node (cluster/local/start.sh), a real `ray job submit` of the whole pipeline, and
`serve deploy` of cluster/serve.yaml serving the job's champion.

Runs in its own pytest session, after the integration tests have shut their Ray down: never two Ray
instances on this host at once.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from raygbm.config import RegistryConfig
from raygbm.registry.store import Registry
from tests.conftest import make_shards

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]
PORT, DASHBOARD, SERVE_PORT = 6391, 8276, 8277


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp) listening on ``port``."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(table):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and int(local.split(":")[1], 16) == port:
                    out.append(local.split(":")[0])
    return out


def _listeners() -> set[tuple[str, str]]:
    """(local address, process) of every listening TCP socket on this host."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return {(line.split()[3], line.split()[-1] if "users:" in line else "") for line in out.splitlines()}


def _get_status(url: str, token: str | None) -> int:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_submitted_pipeline_job_succeeds_and_registers(tmp_path, monkeypatch):
    data = make_shards(tmp_path / "data", rows=20_000, shards=2, seed=9)
    home = tmp_path / "home"
    token = tmp_path / "token"
    # The scripts run Ray from the venv running this test (not ROOT/.venv, absent in a git worktree).
    env = {**os.environ, "RAYGBM_HOME": str(home), "RAY_PORT": str(PORT), "RAY_DASHBOARD_PORT": str(DASHBOARD),
           "RAY_NUM_CPUS": "2", "RAY_AUTH_TOKEN_PATH": str(token), "RAYGBM_VENV": sys.prefix}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_MODE", None)
    local = ROOT / "cluster" / "local"
    before = _listeners()
    started = subprocess.run([str(local / "start.sh")], env=env, capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
        assert _listening(DASHBOARD) == ["0100007F"]  # dashboard and job API on 127.0.0.1 only

        job = subprocess.run(
            [str(local / "submit.sh"), "run", "--data", str(data), "--label", "label", "--trials", "4",
             "--set", "data.drop=[id]", "--set", "train.num_boost_round=80", "--set", "tune.grace_period=10",
             "--set", "train.report_every=10"],
            env=env, capture_output=True, text=True, timeout=600, cwd=ROOT,
        )
        assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
        assert "succeeded" in job.stdout.lower()

        # `serve deploy` of the shipped cluster/serve.yaml (its port and model name adjusted for this
        # test's registry) serves the job's champion over real HTTP.
        import json
        import urllib.request

        import yaml

        spec = yaml.safe_load((ROOT / "cluster" / "serve.yaml").read_text())
        spec["http_options"]["port"] = SERVE_PORT
        spec["applications"][0]["args"]["set"] = ["registry.model_name=raygbm", f"serve.port={SERVE_PORT}"]
        serve_yaml = tmp_path / "serve.yaml"
        serve_yaml.write_text(yaml.safe_dump(spec))
        deployed = subprocess.run([str(local / "serve.sh"), str(serve_yaml)], env=env, capture_output=True,
                                  text=True, timeout=300, cwd=tmp_path)
        assert deployed.returncode == 0, (deployed.stdout + deployed.stderr)[-3000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{SERVE_PORT}/model", timeout=30) as r:
            info = json.loads(r.read())
        assert info["version"] == "1" and info["name"] == "raygbm"
        fields = list(info["request_schema"]["oneOf"][0]["properties"])
        import pyarrow.parquet as pq

        row = pq.read_table(data).slice(0, 1).to_pylist()[0]
        record = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items() if k in fields}
        req = urllib.request.Request(f"http://127.0.0.1:{SERVE_PORT}/predict", data=json.dumps(record).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            answer = json.loads(r.read())
        assert answer["model_version"] == "1" and 0 <= answer["score"] <= 1
        assert _listening(SERVE_PORT) == ["0100007F"]  # the endpoint binds 127.0.0.1 too
        # Everything the head started (GCS, raylet, agents, metrics, workers, Serve) listens on loopback only.
        opened = _listeners() - before
        assert len(opened) >= 8, opened
        exposed = [(a, p) for a, p in opened if not a.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:"))]
        assert not exposed, exposed
        assert subprocess.run([str(local / "serve.sh"), "--shutdown"], env=env, capture_output=True,
                              timeout=120).returncode == 0

        # Without the token the job API refuses: 401 with no token, 403 with a wrong one, 200 with the
        # head's (so the refusals are about the token, not a broken API).
        jobs = f"http://127.0.0.1:{DASHBOARD}/api/jobs/"
        assert _get_status(jobs, None) == 401
        assert _get_status(jobs, "0" * 64) == 403
        assert _get_status(jobs, token.read_text().strip()) == 200
        wrong = tmp_path / "wrong-token"
        wrong.write_text("0" * 64)
        denied = subprocess.run([str(Path(sys.executable).with_name("ray")), "job", "list", "--address", f"http://127.0.0.1:{DASHBOARD}"],
                                env={**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(wrong)},
                                capture_output=True, text=True, timeout=60)
        assert denied.returncode != 0
    finally:
        subprocess.run([str(local / "stop.sh"), "--force"], env=env, capture_output=True, timeout=120)

    # The job's artifacts are in the registry the CLI sees (same RAYGBM_HOME, embedded MLflow store).
    monkeypatch.setenv("RAYGBM_HOME", str(home))
    champion = Registry(RegistryConfig()).get()
    assert champion is not None and champion.version == "1"
    assert float(champion.tags["test_roc_auc"]) > 0.7

"""A real local head node (cluster/local/start.sh, one for the module): the job API refuses callers without
its token, a real `ray job submit` of the whole pipeline, and `serve deploy` of cluster/serve.yaml serving the
job's champion.

Runs in its own pytest session, after the integration tests have shut their Ray down: never two Ray
instances on this host at once.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from raygbm.config import RegistryConfig
from raygbm.registry.store import Registry
from tests.conftest import make_shards

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]
PORT, DASHBOARD, SERVE_PORT, METRICS = 6391, 8276, 8277, 8278
LOCAL = ROOT / "cluster" / "local"
ENDPOINT_TOKEN = "endpoint-token-of-the-head-test"  # cluster/serve.yaml's production config requires one
AUTH = {"authorization": f"Bearer {ENDPOINT_TOKEN}"}


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


@dataclass
class Head:
    env: dict[str, str]
    token: Path
    home: Path
    before: set[tuple[str, str]]  # listening sockets before the head started


@pytest.fixture(scope="module")
def head(tmp_path_factory) -> Iterator[Head]:
    """A head node from cluster/local/start.sh for this module's tests, stopped at the end."""
    tmp = tmp_path_factory.mktemp("head")
    token = tmp / "token"
    # The scripts run Ray from the venv running this test (not ROOT/.venv, absent in a git worktree).
    env = {**os.environ, "RAYGBM_HOME": str(tmp / "home"), "RAY_PORT": str(PORT), "RAY_DASHBOARD_PORT": str(DASHBOARD),
           "RAY_METRICS_EXPORT_PORT": str(METRICS), "RAY_NUM_CPUS": "2", "RAY_AUTH_TOKEN_PATH": str(token),
           "RAYGBM_VENV": sys.prefix, "RAYGBM_ENDPOINT_TOKEN": ENDPOINT_TOKEN}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_MODE", None)
    before = _listeners()
    started = subprocess.run([str(LOCAL / "start.sh")], env=env, capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        yield Head(env, token, tmp / "home", before)
    finally:
        subprocess.run([str(LOCAL / "stop.sh"), "--force"], env=env, capture_output=True, timeout=120)


def _post_status(url: str, body: bytes, token: str | None) -> int:
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {token}"} if token else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers, method="POST"), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_job_submission_without_the_token_is_refused(head, tmp_path):
    """The control plane: the token file is the owner's only, and the job API runs nothing for a caller
    without the head's token (the CLI sending none, a raw POST with none or a wrong one)."""
    assert stat.S_IMODE(head.token.stat().st_mode) == 0o600
    marker = tmp_path / "ran"
    body = json.dumps({"entrypoint": f"touch {marker}"}).encode()
    assert _post_status(f"http://127.0.0.1:{DASHBOARD}/api/jobs/", body, None) == 401
    assert _post_status(f"http://127.0.0.1:{DASHBOARD}/api/jobs/", body, "0" * 64) == 403
    # The Ray CLI with no token anywhere (its own HOME, no token file or variable) gets the server's refusal.
    no_token = {k: v for k, v in head.env.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    no_token.update(HOME=str(tmp_path), RAY_AUTH_MODE="disabled")
    ray = str(Path(sys.executable).with_name("ray"))
    denied = subprocess.run([ray, "job", "submit", "--address", f"http://127.0.0.1:{DASHBOARD}", "--no-wait", "--",
                             "touch", str(marker)], env=no_token, capture_output=True, text=True, timeout=60)
    # "Unauthorized: Missing authentication token" is the job API's 401, relayed by the CLI.
    assert denied.returncode != 0 and "Unauthorized" in denied.stderr, (denied.stdout + denied.stderr)[-2000:]
    # With the token the API answers, and lists no job: nothing was submitted, nothing ran.
    with urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{DASHBOARD}/api/jobs/", headers={"authorization": f"Bearer {head.token.read_text().strip()}"}),
            timeout=30) as r:
        assert [j for j in json.loads(r.read()) if str(marker) in j["entrypoint"]] == []
    assert not marker.exists()
    # The head exports Prometheus metrics where cluster/metrics/prometheus.yml scrapes them, on loopback only.
    assert _listening(METRICS) == ["0100007F"]
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS}/metrics", timeout=30) as r:
        assert b"ray_" in r.read()


def test_submitted_pipeline_job_succeeds_and_registers(head, tmp_path, monkeypatch):
    data = make_shards(tmp_path / "data", rows=10_000, shards=2, seed=9)
    home, env, local = head.home, head.env, LOCAL
    assert _listening(DASHBOARD) == ["0100007F"]  # dashboard and job API on 127.0.0.1 only

    job = subprocess.run(
        [str(local / "submit.sh"), "run", "--data", str(data), "--label", "label", "--trials", "2",
         "--set", "data.drop=[id]", "--set", "train.num_boost_round=40", "--set", "tune.grace_period=10",
         "--set", "train.report_every=10", "--set", "evaluate.permutation_rows=500"],
        env=env, capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
    assert "succeeded" in job.stdout.lower()

    # `serve deploy` of the shipped cluster/serve.yaml (its port and model name adjusted for this
    # test's registry) serves the job's champion over real HTTP.
    import yaml

    spec = yaml.safe_load((ROOT / "cluster" / "serve.yaml").read_text())
    spec["http_options"]["port"] = SERVE_PORT
    spec["applications"][0]["args"]["set"] = ["registry.model_name=raygbm", f"serve.port={SERVE_PORT}"]
    serve_yaml = tmp_path / "serve.yaml"
    serve_yaml.write_text(yaml.safe_dump(spec))
    deployed = subprocess.run([str(local / "serve.sh"), str(serve_yaml)], env=env, capture_output=True,
                              text=True, timeout=300, cwd=tmp_path)
    assert deployed.returncode == 0, (deployed.stdout + deployed.stderr)[-3000:]
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{SERVE_PORT}/model", headers=AUTH),
                                timeout=30) as r:
        info = json.loads(r.read())
    assert info["version"] == "1" and info["name"] == "raygbm"
    fields = list(info["request_schema"]["oneOf"][0]["properties"])
    import pyarrow.parquet as pq

    row = pq.read_table(data).slice(0, 1).to_pylist()[0]
    record = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items() if k in fields}
    req = urllib.request.Request(f"http://127.0.0.1:{SERVE_PORT}/predict", data=json.dumps(record).encode(),
                                 headers={"content-type": "application/json", **AUTH}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        answer = json.loads(r.read())
    assert answer["model_version"] == "1" and 0 <= answer["score"] <= 1
    assert _listening(SERVE_PORT) == ["0100007F"]  # the endpoint binds 127.0.0.1 too
    # Everything the head started (GCS, raylet, agents, metrics, workers, Serve) listens on loopback only.
    opened = _listeners() - head.before
    assert len(opened) >= 8, opened
    assert any('"haproxy"' in p for _, p in opened), opened  # the default ingress: HAProxy (cluster/local/env.sh)
    exposed = [(a, p) for a, p in opened if not a.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:"))]
    assert not exposed, exposed
    assert subprocess.run([str(local / "serve.sh"), "--shutdown"], env=env, capture_output=True,
                          timeout=120).returncode == 0

    # The job's artifacts are in the registry the CLI sees (same RAYGBM_HOME, embedded MLflow store).
    monkeypatch.setenv("RAYGBM_HOME", str(home))
    champion = Registry(RegistryConfig()).get()
    assert champion is not None and champion.version == "1"
    assert float(champion.tags["test_roc_auc"]) > 0.7

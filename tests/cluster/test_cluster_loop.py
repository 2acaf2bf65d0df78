"""The product on a real multi-process Ray cluster: a head (cluster/local/start.sh) and two worker nodes
(cluster/local/join.sh), each its own raylet, token auth on, then `serve deploy` of cluster/serve.yaml with
the production config (pipelines/configs/cluster.yaml) and no raygbm process in the foreground.

Through HTTP with the endpoint's token: requests without it get 401; replicas scale up under load and back
down; concept-drifted traffic labelled through /feedback makes the app's own loop controller submit a
retraining Ray Job; the controller is SIGKILLed while the job runs, Serve restarts it, it resumes from its
state file and submits no second job; the decision is recorded and the replicas serve the promoted version
while a client keeps sending requests, none of which fails.

Runs in the cluster lane (its own pytest session): never two Ray instances on this host at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from raygbm.data.generate import DriftSpec
from tests.cluster.test_serve_cli import _ray_processes, _register_a_model
from tests.conftest import make_shards
from tests.corpora import records_of
from tests.helpers import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "cluster" / "local"
GCS, DASHBOARD, SERVE_PORT, METRICS = 6393, 8296, 8297, 8298
TOKEN = "a-cluster-test-endpoint-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}
# What the test changes in cluster/serve.yaml's application: its data, and times and sizes shrunk to a test's
# (windows of 250 rows, a check a second, no cooldown, retraining without a search on the labelled rows).
# The realized-performance trigger on the loop test's 1,500 drifted labelled rows: champion v1's AUC on them is
# ~0.63 against its test AUC ~0.72, but a 300-row block's AUC spreads 0.60-0.68 (a CI run's last block: 0.684,
# above the default 0.05 drop's 0.673, so no retraining in 180 s). Two 600-row blocks (0.625, 0.597 on that
# run) against a 0.03 drop (a 0.693 bar) leave ~3 standard deviations of margin.
OVERRIDES = ["monitor.window_size=250", "retrain.check_s=1", "retrain.cooldown_s=0", "retrain.trials=0",
             "retrain.include_source=false", "retrain.performance_rows=600", "retrain.performance_drop=0.03",
             "retrain.min_holdout_rows=100",
             "retrain.drift=null", "train.num_boost_round=80", "train.early_stopping_rounds=10", "tune.cv_folds=null",
             "evaluate.permutation_rows=200", "serve.champion_poll_s=1",
             "serve.autoscaling.target_ongoing_requests=1", "serve.autoscaling.upscale_delay_s=1",
             "serve.autoscaling.downscale_delay_s=4"]


@dataclass
class Cluster:
    env: dict[str, str]
    home: Path
    tmp: Path
    url: str = f"http://127.0.0.1:{SERVE_PORT}"


def _run(cmd: list[str], env: dict[str, str], timeout: float = 180) -> str:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert out.returncode == 0, f"{cmd}: {(out.stdout + out.stderr)[-3000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """Head (1 CPU) + two workers (2 CPUs each) on this host's address (a loopback head runs Ray's single-node
    mode, which takes no workers); a registered champion v1; cluster/serve.yaml deployed with the production
    config (the test's overrides in its ``set:``)."""
    from ray._common.network_utils import node_ip_address_from_perspective

    wait_until(lambda: not _ray_processes(), 30, message="no other Ray on this host")
    node_ip = node_ip_address_from_perspective()
    assert node_ip and not node_ip.startswith("127."), node_ip
    tmp = tmp_path_factory.mktemp("cluster")
    home = tmp / "home"
    data = make_shards(tmp / "source", rows=3000, shards=1, seed=1)
    _register_a_model(home, tmp / "data")
    env = {**os.environ, "RAYGBM_HOME": str(home), "RAY_PORT": str(GCS), "RAY_DASHBOARD_PORT": str(DASHBOARD),
           "RAY_METRICS_EXPORT_PORT": str(METRICS), "RAY_AUTH_TOKEN_PATH": str(tmp / "ray-token"),
           "RAYGBM_VENV": sys.prefix, "RAYGBM_ENDPOINT_TOKEN": TOKEN, "RAY_NODE_IP_ADDRESS": node_ip}
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    try:
        _run([str(LOCAL / "start.sh")], {**env, "RAY_NUM_CPUS": "1"})
        for i in range(2):
            # Each worker's Serve proxy on a port of its own (the client talks to the head's): proxies sharing
            # one port on one machine (SO_REUSEPORT) drop the connections queued at one Serve drains.
            _run([str(LOCAL / "join.sh")], {**env, "RAY_NUM_CPUS": "2",
                                            "RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(SERVE_PORT + 10 + i)})
        spec = yaml.safe_load((ROOT / "cluster" / "serve.yaml").read_text())
        app = spec["applications"][0]
        assert app["args"]["config"] == "pipelines/configs/cluster.yaml" and app["args"]["set"] == []
        spec["http_options"]["port"] = SERVE_PORT
        app["args"]["set"] = [f"data.source={data}", *OVERRIDES]
        (tmp / "serve.yaml").write_text(yaml.safe_dump(spec))
        _run([str(LOCAL / "serve.sh"), str(tmp / "serve.yaml")], env, timeout=300)
        yield Cluster(env, home, tmp)
    finally:
        subprocess.run([str(LOCAL / "stop.sh"), "--force"], env=env, capture_output=True, timeout=120)


def _call(url: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body or b"{}")
        except ValueError:  # not ours: an answer of Serve's proxy
            return exc.code, {"raw": body[:300].decode("latin-1")}


def _alive_nodes(env: dict[str, str]) -> int:
    out = _run([sys.executable, "-c", "import ray; ray.init(address='auto', logging_level='ERROR'); "
                "print(sum(n['Alive'] for n in ray.nodes()))"], {**env, "RAY_AUTH_MODE": "token",
                                                              "RAY_ADDRESS": f"{env['RAY_NODE_IP_ADDRESS']}:{GCS}"})
    return int(out.strip().splitlines()[-1])


def _running_replicas(env: dict[str, str], deployment: str = "ModelServer") -> int:
    out = _run(["serve", "status", "--address", f"http://127.0.0.1:{DASHBOARD}"],
               {**env, "RAY_AUTH_MODE": "token", "PATH": f"{sys.prefix}/bin:{env['PATH']}"})
    doc = yaml.safe_load(out)
    states = doc["applications"]["raygbm"]["deployments"][deployment].get("replica_states") or {}
    return int(states.get("RUNNING", 0))


class Client:
    """Clients sending one record at a time (in turn) with the token until stopped; counts answers and
    failures."""

    def __init__(self, url: str, records: list[dict[str, Any]], threads: int = 1):
        self.url, self.records = url, records
        self.sent = self.failed = 0
        self.versions: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self._lock = threading.Lock()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                status, doc = _call(self.url + "/predict", self.records[i % len(self.records)], AUTH)
            except (OSError, ValueError) as exc:  # no answer at all (connection closed or refused)
                status, doc = 0, f"{type(exc).__name__}: {exc}"
            i += 1
            with self._lock:
                self.sent += 1
                if status == 200:
                    self.versions.append(doc["model_version"])
                else:
                    self.failed += 1
                    self.errors.append(f"{time.time():.1f} {status} {doc}")

    def __enter__(self) -> "Client":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


def test_three_separate_nodes_and_the_token_is_required(cluster):
    assert _alive_nodes(cluster.env) == 3
    for path, body in (("/predict", {"num_0": 1.0}), ("/feedback", [{"prediction_id": "x", "label": 1}]),
                       ("/retrain", None), ("/model", None), ("/drift", None)):
        status, doc = _call(cluster.url + path, body)
        assert status == 401, (path, status, doc)
    assert _call(cluster.url + "/readyz")[0] == 200  # probes stay open
    status, info = _call(cluster.url + "/model", headers=AUTH)
    assert status == 200 and info["version"] == "1"


def test_replicas_scale_up_under_load_and_back_down(cluster, figure):
    import pyarrow.parquet as pq

    fields = list(_call(cluster.url + "/model", headers=AUTH)[1]["request_schema"]["oneOf"][0]["properties"])
    records = records_of(pq.read_table(cluster.tmp / "source").slice(0, 1000), fields)
    assert _running_replicas(cluster.env) == 1
    with Client(cluster.url, records, threads=12) as load:
        most = wait_until(lambda: (n := _running_replicas(cluster.env)) >= 2 and n, 120, interval=1.0,
                          message="a second replica under load")
    figure(f"cluster autoscaling: {most} replicas running under 12 clients; {load.sent} requests, {load.failed} failed")
    assert load.failed == 0, load.errors[:5]
    wait_until(lambda: _running_replicas(cluster.env) == 1, 120, interval=1.0, message="back to one replica")


def test_the_apps_loop_retrains_survives_its_controllers_death_and_the_promotion_is_served(cluster, figure):
    import pyarrow.parquet as pq

    url = cluster.url
    fields = list(_call(url + "/model", headers=AUTH)[1]["request_schema"]["oneOf"][0]["properties"])
    drifted = pq.read_table(make_shards(cluster.tmp / "drifted", rows=1500, shards=1, seed=2,
                                        drift=DriftSpec(0, concept=True)))
    records, labels = records_of(drifted, fields), drifted.column("label").to_pylist()
    status, before = _call(url + "/retrain", headers=AUTH)
    assert status == 200 and before["controller"]["alive"], before
    known = {j["id"] for j in before["jobs"]}  # what other tests' traffic may have set off
    with Client(url, records) as client:
        ids = []
        for i in range(0, len(records), 500):
            status, doc = _call(url + "/predict", records[i:i + 500], AUTH)
            assert status == 200, doc
            ids += [p["prediction_id"] for p in doc["predictions"]]
        accepted = 0
        for i in range(0, len(ids), 500):
            status, counts = _call(url + "/feedback", [{"prediction_id": p, "label": y}
                                                       for p, y in zip(ids[i:i + 500], labels[i:i + 500])], AUTH)
            assert status == 200, counts
            accepted += counts["accepted"]
        assert accepted == len(ids)

        def submitted() -> dict[str, Any] | None:
            doc = _call(url + "/retrain", headers=AUTH)[1]
            return doc if any(j["id"] not in known for j in doc.get("jobs", [])) else None

        doc = wait_until(submitted, 180, interval=1.0, message="the loop's controller to submit a retraining job")
        job = next(j for j in doc["jobs"] if j["id"] not in known)
        (trigger,) = [t for t in doc["triggers"] if t.get("job") == job["id"]]
        figure(f"cluster loop: trigger {trigger['id']} ({trigger['reason']}): job {job['id']}")
        killed = doc["controller"]["pid"]
        os.kill(killed, signal.SIGKILL)  # the controller dies while its job runs
        restarted = wait_until(lambda: (d := _call(url + "/retrain", headers=AUTH)[1]).get("controller", {}).get("alive")
                               and d["controller"]["pid"] != killed and d, 120, interval=1.0,
                               message="Serve to restart the loop's controller")
        figure(f"cluster loop: controller pid {killed} SIGKILLed mid-job; restarted as pid {restarted['controller']['pid']}")

        def decided() -> dict[str, Any] | None:
            doc = _call(url + "/retrain", headers=AUTH)[1]
            return next((d for d in doc.get("decisions", []) if d.get("trigger") == trigger["id"]), None)

        decision = wait_until(decided, 420, interval=2.0, message="the retraining's decision")
        figure(f"cluster loop: decision v{decision['version']} {decision['action']}: {decision['reason']}")
        assert decision["action"] == "promoted", decision
        wait_until(lambda: _call(url + "/model", headers=AUTH)[1].get("version") == decision["version"], 60,
                   interval=0.5, message=f"the replicas to serve v{decision['version']}")
        served = len(client.versions)
        wait_until(lambda: client.versions[served:].count(decision["version"]) >= 20, 60, interval=0.2,
                   message="the client to be answered by the promoted version")
    after = _call(url + "/retrain", headers=AUTH)[1]
    # No duplicate: the trigger fired once, its job ran once, and no other job started while it ran.
    assert [t["id"] for t in after["triggers"]].count(trigger["id"]) == 1
    # The job records its decision before it exits; the controller sees it end at its next check.
    done = wait_until(lambda: next(j for j in _call(url + "/retrain", headers=AUTH)[1]["jobs"] if j["id"] == job["id"]
                                   and j["status"] not in ("PENDING", "RUNNING")), 60, interval=1.0,
                      message="the controller to see its job end")
    assert done["status"] == "SUCCEEDED", done
    during = [j["id"] for j in after["jobs"] if j["id"] not in known and j["id"] != job["id"]
              and job["at"] <= j["at"] <= decision["at"]]
    assert during == [], during
    assert [d.get("trigger") for d in after["decisions"]].count(trigger["id"]) == 1
    # Killed again mid-watch (the promotion watched for a rollback): the next controller keeps watching it.
    assert after["watch"]["version"] == decision["version"] and after["watch"]["status"] == "watching", after["watch"]
    killed = after["controller"]["pid"]
    os.kill(killed, signal.SIGKILL)
    resumed = wait_until(lambda: (d := _call(url + "/retrain", headers=AUTH)[1]).get("controller", {}).get("ticks")
                         and d["controller"]["pid"] != killed and d, 120, interval=1.0,
                         message="the loop's controller to restart and check again")
    assert resumed["watch"] == after["watch"], (resumed["watch"], after["watch"])
    assert [j["id"] for j in resumed["jobs"]] == [j["id"] for j in after["jobs"]]
    figure(f"cluster loop: job {job['id']} SUCCEEDED, no second job; client: {client.sent} requests during the "
           f"loop, {client.failed} failed, versions {sorted(set(client.versions))}")
    assert client.failed == 0, client.errors[:5]
    assert {"1", decision["version"]} <= set(client.versions)

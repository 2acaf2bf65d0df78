"""Three Ray nodes on one host (``ray.cluster_utils.Cluster``): a head without CPUs and two 1-CPU worker
nodes, so every task, training worker and replica has to run on a worker node, and two of them on two
nodes. The data stage spreads its read tasks over both nodes; data-parallel training runs one worker per
node and, when a node is removed mid-training and a fresh one joins (what an autoscaler does), finishes
from its checkpoint with the test AUC of an uninterrupted run; Serve puts its two replicas on two nodes
and keeps answering when one node goes.

Runs in its own pytest session (never two Ray instances on this host at once).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from raygbm.config import (
    EvaluateConfig,
    MonitorConfig,
    RegistryConfig,
    ResourcesConfig,
    ServeConfig,
    TrainConfig,
    load_config,
)
from raygbm.data.preprocess import preprocess
from raygbm.data.split import RAW_TEST
from raygbm.registry.register import evaluate_and_register
from raygbm.registry.store import Registry
from raygbm.training.faults import Faults
from raygbm.training.fit import Trained
from raygbm.training.train import RunMeta, train_in_process, train_with_ray
from tests.conftest import make_shards
from tests.helpers import raygbm_home, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.integration]
PORT = 8131


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import os

    import ray
    from ray.cluster_utils import Cluster

    from raygbm.runtime import (
        HTTP_CALLBACK_ENV,
        HTTP_LIMITS_ENV,
        bounded_http_reads,
        enable_fast_ingress,
        enable_token_auth,
        ensure_private_token,
        loopback_node,
    )

    # Every node on 127.0.0.1 (Ray's single-host mode), token auth, and the default ingress (HAProxy through
    # raygbm-haproxy; Serve's guarded proxy with serve.fast_ingress=false): a request lost with its replica
    # answered 503, not 500, as on every cluster raygbm starts.
    loopback_node()
    bounded_http_reads(ServeConfig())
    if ServeConfig().fast_ingress:
        enable_fast_ingress()
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(tmp_path_factory.mktemp("auth") / "token")
    enable_token_auth()
    ensure_private_token()
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1"})
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield c, workers
    finally:
        ray.shutdown()
        c.shutdown()
        for name in ("RAY_AUTH_TOKEN_PATH", HTTP_CALLBACK_ENV, HTTP_LIMITS_ENV):
            os.environ.pop(name, None)


@pytest.fixture(scope="module")
def meta(cluster, tmp_path_factory):
    with raygbm_home(tmp_path_factory.mktemp("home")):
        data = make_shards(tmp_path_factory.mktemp("data"), rows=60_000, shards=4, seed=11)
        cfg = load_config(None, ["data.drop=[id]", "resources.read_chunk_rows=5000"],
                          {"data.source": str(data), "data.label": "label"})
        yield RunMeta.load(preprocess(cfg).run_dir)


def _alive_worker_nodes() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0}


def _two_worker_nodes(cluster) -> None:
    """Two live worker nodes: a fresh one added for each that an earlier test took away."""
    c, workers = cluster
    while len(_alive_worker_nodes()) < 2:
        workers.append(c.add_node(num_cpus=1))
    c.wait_for_nodes()


def test_the_data_stage_spreads_its_read_tasks_over_both_nodes(meta, figure):
    from ray.util.state import list_tasks

    def read_nodes() -> set[str]:
        tasks = list_tasks(filters=[("state", "=", "FINISHED")], limit=10_000, raise_on_missing_output=False)
        return {t.node_id for t in tasks if t.name.startswith("ReadShards->")} & _alive_worker_nodes()

    # Workers report task events to the GCS in batches (about once a second): wait for them to arrive.
    try:
        nodes = wait_until(lambda: n if len(n := read_nodes()) == 2 else None, 30, message="read tasks on 2 nodes")
    finally:
        figure(f"multinode data stage: read tasks ran on {len(read_nodes())} nodes")
    assert len(nodes) == 2


def _test_auc(meta: RunMeta, booster) -> float:
    test = meta.split("test")
    return roc_auc_score(np.asarray(test["label"]), booster.predict(test.drop_columns(["label"])))


def _unfinished_tasks() -> list[str]:
    """What a stuck run waits on: each unfinished task's name, state and the resources it asks for."""
    from ray.util.state import list_tasks

    tasks = list_tasks(filters=[("state", "!=", "FINISHED")], limit=1000, raise_on_missing_output=False, detail=True)
    return [f"{t.name} {t.state} {t.required_resources}" for t in tasks if t.state != "FAILED"]


def _checkpoints(storage: Path) -> list[Path]:
    return list(storage.glob("*/checkpoint_*"))


def test_two_node_training_survives_losing_a_node_and_resumes_from_its_checkpoint(cluster, meta, tmp_path, figure):
    import ray
    from ray.util.state import list_actors

    c, workers = cluster
    _two_worker_nodes(cluster)
    tc = TrainConfig(num_boost_round=300, early_stopping_rounds=None, report_every=10, checkpoint_every=10)
    resources = ResourcesConfig(num_workers=2, max_failures=2)
    clean = train_with_ray(meta, tc, resources, tmp_path / "clean", "clean")
    clean_auc = _test_auc(meta, clean.booster)

    result: dict = {}
    # Rounds slowed on the first attempt (at least 15 s for 300): the node goes while the run is surely
    # still training, however fast this machine boosts. The restarted group trains at full speed.
    slow = Faults(round_pause_s=0.05)
    run = threading.Thread(target=lambda: result.update(
        r=train_with_ray(meta, tc, resources, tmp_path / "cut", "cut", faults=slow)), daemon=True)
    run.start()
    # A checkpoint the controller has registered. A worker writes each checkpoint to storage before its
    # report reaches the controller, through a queue of one report: the third checkpoint is written only
    # after the second report was queued, so only after the controller took the first. (With the first
    # alone on storage, a group restarted right then starts again from round 0.)
    written: set[str] = set()

    def third_written() -> bool:
        written.update(p.name for p in _checkpoints(tmp_path / "cut"))
        return len(written) >= 3

    wait_until(third_written, 180, interval=0.05, message="a registered checkpoint")
    nodes = {a.node_id for a in list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])}
    assert len(nodes) == 2, nodes  # one training worker per worker node
    gone = next(w for w in workers if w.node_id in nodes)
    c.remove_node(gone, allow_graceful=False)
    workers.remove(gone)
    workers.append(c.add_node(num_cpus=1))  # the replacement an autoscaler would start
    run.join(300)  # about a minute when it works: fail, rather than hang the lane, when it does not
    assert "r" in result, f"the interrupted run did not finish; unfinished tasks: {_unfinished_tasks()}"
    cut = result["r"]
    figure(f"multinode node lost mid-training: resumed from round {cut.metrics['resumed_from']:.0f}, "
          f"test AUC {_test_auc(meta, cut.booster):.5f} vs {clean_auc:.5f} uninterrupted")
    assert cut.metrics["resumed_from"] > 0
    assert cut.booster.current_iteration() == 300
    assert abs(_test_auc(meta, cut.booster) - clean_auc) <= 0.002
    assert ray.is_initialized()


def _score(url: str, record: dict) -> tuple[int, float]:
    """(status, the retry-after it asks for) of one /predict call; status 0: no HTTP answer."""
    req = urllib.request.Request(url + "/predict", data=json.dumps(record).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, 0.0
    except urllib.error.HTTPError as e:
        return e.code, float(e.headers.get("retry-after") or 0)
    except OSError:
        return 0, 1.0


class Load:
    """One client sending the same (idempotent) request in a loop; each failed request retried once."""

    def __init__(self, url: str, record: dict):
        self.url, self.record = url, record
        self.first: list[int] = []  # each request's first answer
        self.retried: list[int] = []  # the answer of the one retry of each failed request
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            code, retry_after = _score(self.url, self.record)
            self.first.append(code)
            if code != 200:  # a well-behaved client: one retry, after the wait the answer asks for
                self._stop.wait(min(retry_after, 2.0))
                self.retried.append(_score(self.url, self.record)[0])

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def _replica_nodes() -> dict[str, str]:
    """Live ModelServer replicas: actor id → node id."""
    from ray.util.state import list_actors

    actors = list_actors(filters=[("state", "=", "ALIVE")], limit=10_000, detail=True)
    return {a.actor_id: a.node_id for a in actors
            if a.class_name.startswith("ServeReplica:") and a.class_name.endswith(":ModelServer")}


def _two_replicas_on_two_nodes(cluster) -> dict[str, str]:
    """Two worker nodes and the two replicas on them."""
    _two_worker_nodes(cluster)
    return wait_until(lambda: (r := _replica_nodes()) and len(set(r.values())) == 2 and r, 120,
                      message="two replicas on two nodes")


def _request_fields(url: str) -> set[str]:
    with urllib.request.urlopen(url + "/model", timeout=30) as r:
        return set(json.loads(r.read())["request_schema"]["oneOf"][0]["properties"])


@pytest.fixture(scope="module")
def endpoint(cluster, meta, tmp_path_factory):
    """The champion served by two replicas of one CPU each (so on two nodes), through one proxy."""
    from ray import serve

    from raygbm.serving.deploy import deploy

    with raygbm_home(tmp_path_factory.mktemp("serve-home")):
        train = TrainConfig(num_boost_round=30, early_stopping_rounds=None)
        evaluate_and_register(meta, Trained(train_in_process(meta, train), meta, None), train,
                              EvaluateConfig(permutation_rows=500), RegistryConfig(), None)
        Registry().promote(Registry().get("1"))
        # One HTTP proxy, on the head: the nodes of this test share one host, so per-node proxies would
        # contend for the same port.
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": PORT})
        url = deploy(RegistryConfig(), ServeConfig(port=PORT, num_replicas=2, champion_poll_s=0),
                     MonitorConfig(enabled=False), "1")
        raw = pq.read_table(meta.run_dir / RAW_TEST).slice(0, 1).to_pylist()[0]
        record = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in raw.items()
                  if k in _request_fields(url)}
        try:
            yield url, record
        finally:
            serve.shutdown()


def test_sigkill_of_one_of_two_replicas_under_load(cluster, endpoint, figure):
    import os
    import signal

    from ray.util.state import get_actor

    url, record = endpoint
    replicas = _two_replicas_on_two_nodes(cluster)
    victim = next(iter(replicas))
    with Load(url, record) as load:
        wait_until(lambda: len(load.first) >= 50, 60, message="traffic before the kill")
        started = time.monotonic()
        os.kill(get_actor(victim).pid, signal.SIGKILL)
        wait_until(lambda: len(r := _replica_nodes()) == 2 and victim not in r, 120,
                   message="the killed replica replaced")
        replaced_after = time.monotonic() - started
        wait_until(lambda: time.monotonic() - started >= 30, 40, message="30 s of load")
    ok = sum(code == 200 for code in load.first)
    figure(f"SIGKILL of one of two replicas, 30 s of load: {ok}/{len(load.first)} requests answered 200 "
          f"({ok / len(load.first):.2%}), {len(load.retried)} retried (first answers "
          f"{sorted(set(load.first) - {200})}), all retries 200: "
          f"{all(c == 200 for c in load.retried)}; replaced after {replaced_after:.1f} s")
    assert ok / len(load.first) >= 0.995
    assert set(load.first) <= {200, 503}  # a request lost with its replica: the guarded proxy's 503
    assert all(code == 200 for code in load.retried)


def test_serve_keeps_answering_when_a_replica_node_goes(cluster, endpoint, figure):
    c, workers = cluster
    url, record = endpoint
    replicas = _two_replicas_on_two_nodes(cluster)
    with Load(url, record) as load:
        wait_until(lambda: len(load.first) >= 50, 60, message="traffic before the node goes")
        before = len(load.first)
        gone = next(w for w in workers if w.node_id in set(replicas.values()))
        c.remove_node(gone, allow_graceful=False)
        gone_at = time.monotonic()
        workers.remove(gone)
        # At least 200 requests and 10 s: HAProxy answers ~500 a second here, so a count alone would end
        # the window inside the transient.
        wait_until(lambda: len(load.first) >= before + 200 and time.monotonic() - gone_at >= 10, 120,
                   message="traffic after the node went")
    after = load.first[before:]
    ok = sum(code == 200 for code in after)
    figure(f"multinode one of two replica nodes removed: {ok}/{len(after)} requests answered 200, "
          f"{len(load.retried)} retried (first answers {sorted(set(after) - {200})}), "
          f"all retries 200: {all(c == 200 for c in load.retried)}")
    assert set(after) <= {200, 503}  # nothing but Serve's retryable 503 while the node's replica is gone
    assert all(code == 200 for code in load.retried)
    assert all(code == 200 for code in after[-100:])  # answering steadily from the node that is left

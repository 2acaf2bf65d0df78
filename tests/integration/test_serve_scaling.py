"""Autoscaling under real HTTP load (up to two replicas on this 2-CPU Ray, then back down) and the
optional bearer-token auth."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pyarrow.parquet as pq
import pytest

from raygbm.config import (
    AutoscalingConfig,
    EvaluateConfig,
    MonitorConfig,
    RegistryConfig,
    ServeConfig,
    TrainConfig,
    load_config,
)
from raygbm.data.preprocess import preprocess
from raygbm.data.split import RAW_TEST
from raygbm.registry.register import evaluate_and_register
from raygbm.serving.deploy import APP_NAME, deploy
from raygbm.training.fit import Trained
from raygbm.training.train import RunMeta, train_in_process
from tests.conftest import make_shards
from tests.helpers import wait_until

pytestmark = pytest.mark.slow
PORT = 8124
URL = f"http://127.0.0.1:{PORT}"
TOKEN = "s3cret-token-for-the-test-only"


def _call(path: str, body: bytes | None = None, token: str | None = TOKEN) -> tuple[int, dict]:
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(URL + path, data=body, method="POST" if body is not None else "GET", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _running_replicas() -> int:
    from ray import serve
    from ray.serve._private.common import ReplicaState

    dep = serve.status().applications[APP_NAME].deployments["ModelServer"]
    return dep.replica_states.get(ReplicaState.RUNNING, 0)


def test_autoscaling_and_bearer_token(tmp_path, home, monkeypatch):
    from ray import serve

    data = make_shards(tmp_path / "data", rows=30_000, shards=2, seed=6)
    cfg = load_config(None, ["data.drop=[id]"], {"data.source": str(data), "data.label": "label"})
    meta = RunMeta.load(preprocess(cfg).run_dir)
    train = TrainConfig(num_boost_round=200, early_stopping_rounds=None, params={"num_leaves": 127})
    evaluate_and_register(meta, Trained(train_in_process(meta, train), meta, None), train,
                          EvaluateConfig(permutation_rows=500), RegistryConfig(), None)

    serve_cfg = ServeConfig(port=PORT, require_token=True, replica_cpus=1,
                            autoscaling=AutoscalingConfig(min_replicas=1, max_replicas=2, target_ongoing_requests=1,
                                                          upscale_delay_s=0.5, downscale_delay_s=3))
    from raygbm.errors import RaygbmError

    monkeypatch.delenv("RAYGBM_ENDPOINT_TOKEN", raising=False)
    with pytest.raises(RaygbmError, match="RAYGBM_ENDPOINT_TOKEN"):
        deploy(RegistryConfig(), serve_cfg, MonitorConfig(enabled=False))
    monkeypatch.setenv("RAYGBM_ENDPOINT_TOKEN", TOKEN)
    deploy(RegistryConfig(), serve_cfg, MonitorConfig(enabled=False))
    try:
        assert _call("/healthz", token=None)[0] == 200  # probes stay open
        assert _call("/model", token=None)[0] == 401
        assert _call("/model", token="wrong-token-of-some-length")[0] == 401
        status, info = _call("/model")
        assert status == 200
        fields = list(info["request_schema"]["oneOf"][0]["properties"])
        raw = pq.read_table(meta.run_dir / RAW_TEST).slice(0, 500)
        cols = {c: raw.column(c).to_pylist() for c in fields}
        body = json.dumps([{c: (v[i].isoformat() if hasattr(v[i], "isoformat") else v[i]) for c, v in cols.items()}
                           for i in range(raw.num_rows)]).encode()
        assert _call("/predict", body, token=None)[0] == 401
        assert _call("/predict", body)[0] == 200
        # The Open Inference Protocol's routes: its health probes open, the rest behind the same token.
        infer = json.dumps({"inputs": [{"name": "records", "shape": [1], "datatype": "BYTES", "data": [body.decode()]}]})
        assert _call("/v2/health/ready", token=None) == (200, {"ready": True})
        assert _call(f"/v2/models/{info['name']}", token=None)[0] == 401 and _call(f"/v2/models/{info['name']}")[0] == 200
        assert _call(f"/v2/models/{info['name']}/infer", infer.encode(), token=None)[0] == 401
        assert _call(f"/v2/models/{info['name']}/infer", infer.encode())[0] == 200
        assert _running_replicas() == 1

        stop = threading.Event()
        failures: list[object] = []  # non-200 statuses, and errors that would otherwise end a thread unseen

        def load() -> None:
            while not stop.is_set():
                try:
                    status, _ = _call("/predict", body)
                except Exception as exc:
                    failures.append(repr(exc))
                    return
                if status != 200:
                    failures.append(status)

        threads = [threading.Thread(target=load) for _ in range(6)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: _running_replicas() >= 2, 60, interval=0.5, message="a second replica under load")
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not failures
        wait_until(lambda: _running_replicas() <= 1, 60, interval=0.5,
                   message="scaling back down to one replica after the load stopped")
    finally:
        serve.shutdown()

"""The endpoint on the shared local Ray, through real HTTP: same scores as the batch path, strict 4xx
on bad input (never 5xx), health/readiness/model routes, and a model swap under load with no failed
request."""

from __future__ import annotations

import http.client
import json
import tempfile
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from raygbm.config import EvaluateConfig, MonitorConfig, RegistryConfig, ServeConfig, TrainConfig, load_config
from raygbm.data.generate import DRIFT_SHIFTED_CATEGORICAL, DRIFT_SHIFTED_NUMERIC, DriftSpec
from raygbm.data.preprocess import preprocess
from raygbm.data.split import RAW_TEST
from raygbm.monitoring.actor import MONITOR_ACTOR
from raygbm.monitoring.report import drift_report_html
from raygbm.registry.bundle import Bundle
from raygbm.registry.register import evaluate_and_register
from raygbm.registry.store import Registry, local_bundle
from raygbm.serving.deploy import deploy, swap_model
from raygbm.training.fit import Trained
from raygbm.training.train import RunMeta, train_in_process
from tests.conftest import make_shards
from tests.helpers import raygbm_home, wait_until

pytestmark = pytest.mark.slow
PORT = 8123
URL = f"http://127.0.0.1:{PORT}"
# Parquet jobs may read pytest's temporary folders (the data these tests generate) and nothing else.
SERVE = ServeConfig(port=PORT, max_rows=2000, max_body_bytes=2_000_000, batch_input_roots=[tempfile.gettempdir()],
                    champion_poll_s=1.0)
MONITOR = MonitorConfig(window_size=500)


def _post(path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(URL + path, data=body, method="POST",
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _get(path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(URL + path, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _records(raw, schema_fields) -> list[dict]:
    cols = {c: raw.column(c).to_pylist() for c in schema_fields}
    out = []
    for i in range(raw.num_rows):
        r = {}
        for c, vals in cols.items():
            v = vals[i]
            r[c] = v.isoformat() if hasattr(v, "isoformat") else v
        out.append(r)
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from ray import serve

    with raygbm_home(tmp_path_factory.mktemp("home")):
        data = make_shards(tmp_path_factory.mktemp("data"), rows=80_000, shards=3, seed=4)
        cfg = load_config(None, ["data.drop=[id]", "features.derived=[{name: h, op: hour, inputs: [event_time]}]"],
                          {"data.source": str(data), "data.label": "label"})
        meta = RunMeta.load(preprocess(cfg).run_dir)
        for rounds in (40, 80):  # v1 (champion), v2 (its own, registered as candidate or champion)
            train = TrainConfig(num_boost_round=rounds, early_stopping_rounds=None)
            evaluate_and_register(meta, Trained(train_in_process(meta, train), meta, None), train,
                                  EvaluateConfig(permutation_rows=500), RegistryConfig(), None)
        Registry().promote(Registry().get("1"))
        url = deploy(RegistryConfig(), SERVE, MONITOR, "1")
        try:
            yield meta, url, tmp_path_factory.mktemp("drifted")
        finally:
            serve.shutdown()
            import ray

            ray.kill(ray.get_actor(MONITOR_ACTOR, namespace="raygbm"))


def _serving(version: str) -> None:
    """Each test states the model it needs: pin ``version`` (a no-op when it is already pinned)."""
    swap_model(RegistryConfig(), SERVE, MONITOR, version)
    wait_until(lambda: _get("/model")[1].get("version") == version, 30, message=f"v{version} serving")


def _job_done(job: dict, timeout: float) -> dict:
    """The status document of a Parquet job once it stopped running."""
    def finished() -> dict | None:
        doc = _get(job["status_url"])[1]
        return doc if doc["status"] != "running" else None

    return wait_until(finished, timeout, interval=0.5, message=f"batch job {job['job_id']}")


def _drift_when(cond, timeout: float = 30) -> dict:
    """GET /drift once ``cond(report)`` holds (the monitor is fed asynchronously)."""
    def report() -> dict | None:
        status, doc = _get("/drift")
        return doc if status == 200 and cond(doc) else None

    return wait_until(report, timeout, interval=0.2, message="the drift report")


def test_http_scores_equal_the_batch_path_on_10k_rows(served):
    meta, _, _ = served
    _serving("1")
    assert _get("/healthz") == (200, {"status": "ok"})
    status, ready = _get("/readyz")
    assert status == 200 and ready["model_version"] == "1"
    _, info = _get("/model")
    fields = list(info["request_schema"]["oneOf"][0]["properties"])
    status, doc = _get("/openapi.json")  # the hand-parsed body's real schema is published too
    assert status == 200
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == info["request_schema"]
    raw = pq.read_table(meta.run_dir / RAW_TEST).slice(0, 10_000)
    records = _records(raw, fields)
    scores = []
    for i in range(0, len(records), 1000):
        status, out = _post("/predict", json.dumps(records[i:i + 1000]).encode())
        assert status == 200, out
        assert out["model_version"] == "1"
        scores += [p["score"] for p in out["predictions"]]
    ref, path = local_bundle(Registry(), "1")
    bundle = Bundle.load(path)
    expected = bundle.scores(bundle.features(raw))
    np.testing.assert_array_equal(np.asarray(scores), expected)
    # One record: one object back, with an id.
    status, one = _post("/predict", json.dumps(records[0]).encode())
    assert status == 200 and one["score"] == scores[0] and len(one["prediction_id"]) == 32
    assert one["prediction"] in (0, 1)


def _oip_tensors(model_meta: dict, records: list[dict]) -> list[dict]:
    """The Open Inference Protocol's JSON input tensors of ``records``, one per feature, written from the
    spec and the model's metadata: ``{name, shape, datatype, data}``, null for a missing value."""
    return [{"name": i["name"], "shape": [len(records)], "datatype": i["datatype"],
             "data": [r[i["name"]] for r in records]} for i in model_meta["inputs"]]


def _triton_inputs(model_meta: dict, records: list[dict]):
    """tritonclient's tensors of ``records`` (binary, its default): numbers as float64 with NaN for a
    missing value (tensors have no null), strings as objects (a missing category as "": unseen, the
    same code as missing)."""
    from tritonclient.http import InferInput

    inputs = []
    for i in model_meta["inputs"]:
        values = [r[i["name"]] for r in records]
        if i["datatype"] == "BYTES":
            array = np.array(["" if v is None else v for v in values], dtype=object)
        else:
            array = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        inputs.append(InferInput(i["name"], [len(values)], i["datatype"]).set_data_from_numpy(array))
    return inputs


def test_open_inference_protocol_scores_equal_predict(served):
    """tritonclient (binary tensors) and a plain JSON call written from the protocol's spec (one tensor per
    feature, and one BYTES tensor of records) score 1,000 rows exactly as /predict does; the rows reach
    the drift monitor like /predict's."""
    import tritonclient.http as triton

    meta, _, _ = served
    _serving("1")
    _, info = _get("/model")
    name, fields = info["name"], list(info["request_schema"]["oneOf"][0]["properties"])
    records = _records(pq.read_table(meta.run_dir / RAW_TEST).slice(0, 1000), fields)
    status, expected = _post("/predict", json.dumps(records).encode())
    assert status == 200
    scores = np.asarray([p["score"] for p in expected["predictions"]])
    predictions = [p["prediction"] for p in expected["predictions"]]
    assert _get("/v2/health/live") == (200, {"live": True}) and _get("/v2/health/ready") == (200, {"ready": True})
    assert _get("/v2")[1]["extensions"] == ["binary_tensor_data"]
    assert _get("/v2/models/nope")[0] == 404 and _get(f"/v2/models/{name}/versions/9")[0] == 404

    client = triton.InferenceServerClient(f"127.0.0.1:{PORT}", connection_timeout=30, network_timeout=60)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    model_meta = client.get_model_metadata(name)
    assert [i["name"] for i in model_meta["inputs"]] == fields and model_meta["versions"] == ["1"]
    drift_before = _drift_when(lambda r: True)["rows_seen"]
    result = client.infer(name, _triton_inputs(model_meta, records), request_id="triton-1")
    np.testing.assert_array_equal(result.as_numpy("score"), scores)
    assert result.as_numpy("prediction").tolist() == predictions
    answer = result.get_response()
    assert answer["id"] == "triton-1" and answer["model_name"] == name and answer["model_version"] == "1"
    # The drift monitor counts them (the monitor is fed asynchronously: awaited).
    _drift_when(lambda r: r["rows_seen"] >= drift_before + 1000)
    versioned = client.infer(name, _triton_inputs(model_meta, records[:10]), model_version="1",
                             outputs=[triton.InferRequestedOutput("score")])
    np.testing.assert_array_equal(versioned.as_numpy("score"), scores[:10])
    assert versioned.as_numpy("prediction") is None

    body = {"id": "plain-1", "inputs": _oip_tensors(model_meta, records)}
    status, plain = _post(f"/v2/models/{name}/infer", json.dumps(body).encode())
    assert status == 200, plain
    out = {o["name"]: o for o in plain["outputs"]}
    assert out["score"]["datatype"] == "FP64" and out["score"]["shape"] == [1000] and plain["id"] == "plain-1"
    np.testing.assert_array_equal(np.asarray(out["score"]["data"]), scores)
    assert out["prediction"]["data"] == predictions and len(set(out["prediction_id"]["data"])) == 1000
    one_input = {"inputs": [{"name": "records", "shape": [1], "datatype": "BYTES", "data": [json.dumps(records)]}]}
    status, plain = _post(f"/v2/models/{name}/infer", json.dumps(one_input).encode())
    assert status == 200, plain
    np.testing.assert_array_equal(np.asarray(next(o for o in plain["outputs"] if o["name"] == "score")["data"]), scores)
    # Errors come back the protocol's way: tritonclient raises with the server's message.
    with pytest.raises(triton.InferenceServerException, match="missing input"):
        client.infer(name, _triton_inputs(model_meta, records[:3])[1:])


def _post_raw(path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    req = urllib.request.Request(URL + path, data=body, method="POST", headers={"content-type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _score_arrow(raw):
    """``raw`` scored by POST /predict/batch as an Arrow IPC stream: the (prediction, score) table."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, raw.schema) as w:
        w.write_table(raw)
    status, body = _post_raw("/predict/batch", sink.getvalue().to_pybytes(), "application/vnd.apache.arrow.stream")
    assert status == 200, body[:300]
    return pa.ipc.open_stream(body).read_all()


def test_batch_route_arrow_and_csv_equal_the_batch_path(served):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    meta, _, _ = served
    _serving("1")
    raw = pq.read_table(meta.run_dir / RAW_TEST).slice(0, 10_000)
    ref, path = local_bundle(Registry(), "1")
    expected = Bundle.load(path).scores(Bundle.load(path).features(raw))
    out = _score_arrow(raw)
    assert out.column_names == ["prediction", "score", "prediction_id"] and out.num_rows == raw.num_rows == 10_000
    assert len(set(out["prediction_id"].to_pylist())) == 10_000  # one id per row, for POST /feedback
    np.testing.assert_array_equal(np.asarray(out["score"]), expected)
    csv_sink = pa.BufferOutputStream()
    pacsv.write_csv(raw.drop_columns(["label"]), csv_sink)
    status, body = _post_raw("/predict/batch", csv_sink.getvalue().to_pybytes(), "text/csv")
    assert status == 200, body[:300]
    np.testing.assert_allclose(np.asarray(pacsv.read_csv(pa.BufferReader(body))["score"]), expected, rtol=1e-12)
    # Bad tables: 4xx with a message.
    assert _post_raw("/predict/batch", b"not arrow", "application/vnd.apache.arrow.stream")[0] == 400
    assert _post_raw("/predict/batch", b"a,b\n1,2\n", "text/csv")[0] == 422
    assert _post_raw("/predict/batch", b"a,b", "application/x-www-form-urlencoded")[0] == 415


def test_batch_job_over_a_parquet_folder_writes_every_row_scored(served, tmp_path):
    _serving("1")
    data = make_shards(tmp_path / "in", rows=6000, shards=3, seed=11)
    status, job = _post("/predict/batch", json.dumps({"input": str(data)}).encode())
    assert status == 202, job
    doc = _job_done(job, 120)
    assert doc["status"] == "succeeded", doc
    assert doc["rows"] == 6000 and doc["model_version"] == "1"
    first_output = doc["output"]
    out = pq.read_table(doc["output"]).sort_by("id")
    src = pq.read_table(data).sort_by("id")
    assert out.column_names == src.column_names + ["prediction", "score"]
    _, path = local_bundle(Registry(), "1")
    bundle = Bundle.load(path)
    np.testing.assert_array_equal(np.asarray(out["score"]), bundle.scores(bundle.features(src)))
    # Refused up front: outside the allowed roots, missing, malformed; a bad dataset fails as a job.
    assert _post("/predict/batch", json.dumps({"input": "/etc"}).encode())[0] == 403
    assert _post("/predict/batch", json.dumps({"input": str(tmp_path / "in" / ".." / ".." / "nope")}).encode())[0] == 404
    assert _post("/predict/batch", json.dumps({"input": str(data), "output": "/tmp/x"}).encode())[0] == 422
    assert _post("/predict/batch", b"{not json", {})[0] == 400
    for hostile in ("relative/path", "/tmp/\x00x", "/tmp/" + "a" * 300, "s3://b/../etc"):
        assert _post("/predict/batch", json.dumps({"input": hostile}).encode())[0] in (403, 422), hostile
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "part-0.parquet").write_bytes(b"PAR1 this is not parquet")
    status, job = _post("/predict/batch", json.dumps({"input": str(bad)}).encode())
    assert status == 202
    doc = _job_done(job, 60)
    assert doc["status"] == "failed" and "part-0.parquet" in doc["error"], doc
    jobs = Path(first_output).parent  # nothing half-written from the failed job
    assert not (jobs / job["job_id"]).exists() and not [p for p in jobs.iterdir() if "staging" in p.name]
    assert _get("/predict/batch/" + "0" * 32)[0] == 404 and _get("/predict/batch/..%2f..%2fetc")[0] == 404


def test_bad_requests_get_4xx_never_5xx(served):
    meta, _, _ = served
    _, info = _get("/model")
    fields = list(info["request_schema"]["oneOf"][0]["properties"])
    good = _records(pq.read_table(meta.run_dir / RAW_TEST).slice(0, 1), fields)[0]
    cases = [
        json.dumps(good).replace(f'"num_0": {good["num_0"]}', '"num_0": NaN').encode(),
        json.dumps({**good, "num_0": "1.0"}).encode(),
        json.dumps({**good, "extra": 1}).encode(),
        json.dumps({k: v for k, v in good.items() if k != "num_3"}).encode(),
        b"{", b"", b"[]", b"null", b'"x"', json.dumps([good] * 2001).encode(),
        b"[" + b"1," * 1_100_000 + b"1]",  # over the body limit
    ]
    for body in cases:
        status, out = _post("/predict", body)
        assert 400 <= status < 500, (status, out, body[:80])
        assert "error" in out
    status, _ = _post("/predict", b"x" * 10, headers={"content-length": "99999999"})
    assert status in (400, 413)
    status, out = _post("/predict", b"[" + b"1," * 1_100_000 + b"1]")  # an honest Content-Length over the limit
    assert status == 413 and "larger than" in out["error"]
    # A client asking Serve for no timeout still gets an answer (and a normal one).
    status, _ = _post("/predict", json.dumps(good).encode(), headers={"x-request-timeout-seconds": "0"})
    assert status == 200


def _table_body(table, kind: str) -> bytes:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    sink = pa.BufferOutputStream()
    if kind == "text/csv":
        pacsv.write_csv(table, sink)
    else:
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
    return sink.getvalue().to_pybytes()


def test_hostile_bodies_of_every_format_get_4xx_without_echo(served):
    """The classes a hostile-input probe found answering 500 or echoing input: each gets a 4xx whose
    message holds none of the body, and a valid request is answered after each class."""
    import pyarrow as pa

    meta, _, _ = served
    _, info = _get("/model")
    fields = list(info["request_schema"]["oneOf"][0]["properties"])
    raw = pq.read_table(meta.run_dir / RAW_TEST).slice(0, 5).drop_columns(["label"])
    good = _records(raw.slice(0, 1), fields)[0]
    text = json.dumps(good)
    num = num_col = raw.column_names.index("num_0")
    arrow, csv = "application/vnd.apache.arrow.stream", "text/csv"
    classes = {
        "json numbers beyond float": [("/predict", text.replace(f'"{k}": {json.dumps(good[k])}', f'"{k}": {"9" * 400}').encode(), None)
                                      for k in ("num_0", "event_time")],
        "json field names": [("/predict", (text[:-1] + ', "\\ud800sentinel": 1}').encode(), None),
                             ("/predict", json.dumps({**good, "sentinel" + "x" * 900_000: 1}).encode(), None)],
        "job body nesting and encoding": [("/predict/batch", b'{"input": ' * 100_000, None),
                                          ("/predict/batch", b"\xff\xfesentinel", None)],
        "duplicated columns": [("/predict/batch", _table_body(raw.append_column("num_0", raw.column("num_0")), k), k)
                               for k in (arrow, csv)],
        "numbers json would refuse": [
            ("/predict/batch", _table_body(raw.set_column(num, "num_0", pa.array(v, t)), arrow), arrow)
            for v, t in (([float("nan")] * 5, pa.float64()), ([float("inf")] * 5, pa.float64()))],
        "csv that is not utf-8 or not a table": [
            ("/predict/batch", _table_body(raw, csv).replace(b"\n", b"\n\xff\xfesentinel", 1), csv),
            ("/predict/batch", _table_body(raw, csv) + b"sentinel,secret\n", csv)],
        "width": [("/predict/batch", ",".join(f"c{i}" for i in range(100_000)).encode() + b"\n" + b"1," * 99_999 + b"1\n", csv),
                  ("/predict/batch", _table_body(pa.table({f"c{i}": [1] for i in range(5_000)}), arrow), arrow)],
    }
    model_meta = _get(f"/v2/models/{info['name']}")[1]
    infer, tensors = f"/v2/models/{info['name']}/infer", _oip_tensors(model_meta, [good])
    num = next(i for i, t in enumerate(tensors) if t["name"] == "num_0")
    classes["open inference protocol"] = [(path, json.dumps(doc).encode(), None) for path, doc in (
        (infer, {"inputs": tensors + [{**tensors[0], "name": "sentinel"}]}),
        (infer, {"inputs": tensors[:num] + [{**tensors[num], "data": ["sentinel"]}] + tensors[num + 1:]}),
        (infer, {"inputs": tensors[:num] + [{**tensors[num], "datatype": "sentinel"}] + tensors[num + 1:]}),
        (infer, {"id": "sentinel", "inputs": tensors[1:]}),
        (infer, {"inputs": tensors, "outputs": [{"name": "sentinel"}]}),
        (infer, {"inputs": tensors, "sentinel": 1}),
        (infer, {"inputs": [{"name": "records", "shape": [1], "datatype": "BYTES", "data": ["sentinel{"]}]}),
        (infer, {"inputs": [{"name": "records", "shape": [1], "datatype": "BYTES",
                             "data": [json.dumps({**good, "cat_0": 5, "sentinel": 1})]}]}),
        ("/v2/models/sentinel/infer", {"inputs": tensors}), ("/v2/models/sentinel", {}))]
    for name, requests in classes.items():
        for path, body, kind in requests:
            status, answer = _post_raw(path, body, kind or "application/json")
            assert 400 <= status < 500, (name, status, answer[:200])
            assert b"sentinel" not in answer and len(answer) < 500, (name, answer[:200])
        assert _post("/predict", text.encode())[0] == 200, name
    status, one = _post("/predict", b"\xef\xbb\xbf" + text.encode())  # a BOM before one record: still one answer
    assert status == 200 and "prediction_id" in one
    # A 64-bit integer beyond 2^53 is a number like any other (rounded to float64, as in training).
    big = _table_body(raw.set_column(num_col, "num_0", pa.array([2**60] * 5, pa.int64())), arrow)
    assert _post_raw("/predict/batch", big, arrow)[0] == 200


def test_a_request_whose_replica_dies_gets_503_with_retry_after(served):
    """The replica dies while it is reading a request's body: the client gets a 503 with retry-after and a
    message naming no internals (Serve's own answer is a 500 with the Ray exception), and the endpoint
    answers again once Serve has replaced the replica."""
    import os
    import signal
    import socket

    from ray.util.state import list_actors

    meta, _, _ = served
    _serving("1")
    [replica] = [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000) if "ModelServer" in a.class_name]
    with socket.create_connection(("127.0.0.1", PORT), timeout=60) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: 100\r\nconnection: close\r\n\r\n[")
        wait_until(lambda: _get("/model")[1]["requests_in_flight"] == 1, 20, interval=0.2,
                   message="the replica to hold the request")
        os.kill(replica.pid, signal.SIGKILL)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), answer[:300]
    assert b"retry-after: 1" in head.lower() and b"Actor" not in body and json.loads(body)["error"]
    wait_until(lambda: _get("/readyz")[0] == 200, 60, interval=0.5, message="a replacement replica")
    _, info = _get("/model")
    good = _records(pq.read_table(meta.run_dir / RAW_TEST).slice(0, 1), list(info["request_schema"]["oneOf"][0]["properties"]))[0]
    assert _post("/predict", json.dumps(good).encode())[0] == 200


def test_drift_windows_flag_only_the_shifted_features(served):
    meta, _, tmp = served
    _serving("1")
    _, info = _get("/model")
    fields = list(info["request_schema"]["oneOf"][0]["properties"])
    raw = pq.read_table(meta.run_dir / RAW_TEST)
    before = _get("/drift")[1]
    # Rows earlier tests sent (hostile corpora repeat one record) would share the first window: close that
    # window with clean rows first, and judge only windows made of this test's rows.
    fill = (500 - before["open_window_rows"]) % 500
    if fill:
        assert _post("/predict", json.dumps(_records(raw.slice(1, fill), fields)).encode())[0] == 200
        before = _drift_when(lambda r: len(r["windows"]) > len(before["windows"]) and r["open_window_rows"] == 0)
    start = len(before["windows"])
    n = 1000
    clean = _records(raw.take(list(range(0, raw.num_rows, raw.num_rows // n))[:n]), fields)  # all ten days
    for i in range(0, len(clean), 250):
        assert _post("/predict", json.dumps(clean[i:i + 250]).encode())[0] == 200
    # Drifted rows spread over the same ten days as training (rows are 15 s apart), so only the drift
    # the generator injects differs, not the hour of day.
    drifted_dir = make_shards(tmp, rows=60_000, shards=1, seed=8, drift=DriftSpec(0, shift=1.5))
    drifted = _records(pq.read_table(drifted_dir).take(list(range(0, 60_000, 60))), fields)
    for i in range(0, len(drifted), 250):
        assert _post("/predict", json.dumps(drifted[i:i + 250]).encode())[0] == 200
    report = _drift_when(lambda r: len(r["windows"]) >= start + 4)
    windows = report["windows"][start:start + 4]
    assert [w["verdict"] for w in windows] == ["ok", "ok", "drift", "drift"], [w["drifted_features"] for w in windows]
    expected = set(DRIFT_SHIFTED_NUMERIC + DRIFT_SHIFTED_CATEGORICAL)
    for w in windows[2:]:
        assert set(w["drifted_features"]) == expected
        assert w["rows"] == 500 and w["first_ts"] <= w["last_ts"] and w["model_version"] == "1"
        assert w["features"]["num_1"]["statistic"] == "psi" and w["features"]["num_1"]["threshold_source"] == "calibrated"
    # Thresholds calibrated at registration for 1000-row windows, recalibrated at deploy for these 500.
    assert report["thresholds"]["mode"] == "calibrated" and report["thresholds"]["calibrated_at"] == "deploy"
    assert report["thresholds"]["window_size"] == 500 and report["thresholds"]["held_out"]["source"]["prediction"] == "test"
    for w in windows:
        assert w["prediction"]["threshold_source"] == "calibrated" and 0.01 <= w["prediction"]["threshold"] < 0.2
        assert 0.01 <= w["features"]["num_1"]["threshold"] < 0.2
    assert report["dropped_batches"] == 0
    # What the report shows in place of codes, and the score's cut-off: the endpoint adds them to the reference.
    cat0 = report["reference"]["features"]["cat_0"]
    assert len(cat0["labels"]) == len(cat0["codes"]) and "cat_0_000" in cat0["labels"]
    assert set(cat0["labels"]) <= {f"cat_0_{j:03d}" for j in range(8)} | {"(missing or unseen)"}
    assert 0 < report["reference"]["prediction"]["decision_threshold"] < 1
    page = drift_report_html(report)
    assert ">cat_0_000<" in page and "decision threshold" in page and "chi-square p-value" in page

    # The same verdicts reach Prometheus through Ray's metrics export (reported every few seconds).
    import ray

    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["Alive"])

    def flags() -> tuple[str, list[str]] | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        found = [ln for ln in text.splitlines() if ln.startswith("ray_raygbm_drift_flag{") and 'model_version="1"' in ln]
        return (text, found) if any('feature="num_1"' in ln and ln.endswith(" 1.0") for ln in found) else None

    text, flags = wait_until(flags, 60, interval=1, message="num_1's drift flag in Prometheus")
    assert any('feature="num_5"' in ln and ln.endswith(" 0.0") for ln in flags)
    assert "ray_raygbm_monitor_rows_total" in text


def test_drift_windows_survive_a_monitor_crash(served):
    import ray

    meta, _, _ = served
    _serving("1")
    _, info = _get("/model")
    fields = list(info["request_schema"]["oneOf"][0]["properties"])
    raw = pq.read_table(meta.run_dir / RAW_TEST)
    before = _get("/drift")[1]
    n = 500 + 500 - before["open_window_rows"] - 200  # one more closed window and 300 rows in the open one
    assert _post("/predict", json.dumps(_records(raw.slice(0, n), fields)).encode())[0] == 200
    before = _drift_when(lambda r: r["open_window_rows"] == 300)
    assert before["log_dir"] and before["rows_seen"] > 1000
    # A crash of the monitor's process: Ray restarts the actor, which reloads its log.
    ray.kill(ray.get_actor(MONITOR_ACTOR, namespace="raygbm"), no_restart=False)
    after = _drift_when(lambda r: r.get("restored_rows") == 300, 60)  # 503 while Ray restarts it
    assert after["windows"] == before["windows"] and after["open_window_rows"] == 300
    assert after["rows_seen"] == before["rows_seen"]
    # And it keeps counting: the restored open window closes after 200 more rows.
    assert _post("/predict", json.dumps(_records(raw.slice(n, 200), fields)).encode())[0] == 200
    report = _drift_when(lambda r: len(r["windows"]) > len(before["windows"]))
    assert report["windows"][-1]["rows"] == 500 and report["windows"][-1]["index"] == before["windows"][-1]["index"] + 1


def test_schemathesis_from_openapi_finds_no_server_error(served):
    """Property-based requests generated from /openapi.json (the model's real request schema):
    negative ones (violating it) and positive ones; every answer must be below 500."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.generation.modes import GenerationMode

    schema = schemathesis.openapi.from_url(URL + "/openapi.json")
    operation = schema["/predict"]["POST"]
    statuses: list[int] = []
    for mode, n in ((GenerationMode.NEGATIVE, 300), (GenerationMode.POSITIVE, 100)):

        @settings(max_examples=n, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case) -> None:
            response = case.call(base_url=URL, timeout=30)
            statuses.append(response.status_code)
            assert response.status_code < 500, (response.status_code, response.text[:200])

        call()
    assert len(statuses) >= 200 and any(400 <= s < 500 for s in statuses)


def _switch_under_load(meta, change, version: str, threads: int = 4) -> list[tuple[int, str]]:
    """Requests from ``threads`` clients while ``change()`` runs, until ``version`` answers: (status, version) each."""
    _, info = _get("/model")
    fields = list(info["request_schema"]["oneOf"][0]["properties"])
    body = json.dumps(_records(pq.read_table(meta.run_dir / RAW_TEST).slice(0, 20), fields)).encode()
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            status, out = _post("/predict", body)
            results.append((status, out.get("model_version", "")))

    clients = [threading.Thread(target=load) for _ in range(threads)]
    for t in clients:
        t.start()
    try:
        wait_until(lambda: len(results) >= 2 * threads, 30, message="answers before the change")
        change()
        wait_until(lambda: any(v == version for _, v in results[-20:]), 60, interval=0.2,
                   message=f"v{version} reaching the replicas")
        switched = len(results)
        wait_until(lambda: len(results) >= switched + 10 * threads, 30, message="answers after the change")
    finally:
        stop.set()
        for t in clients:
            t.join()
    assert results and all(s == 200 for s, _ in results), [r for r in results if r[0] != 200][:5]
    return results


def test_model_swap_under_load_fails_no_request(served):
    meta, _, _ = served
    _serving("1")
    replicas_before = _model_server_actors()
    results = _switch_under_load(meta, lambda: swap_model(RegistryConfig(), SERVE, MONITOR, "2"), "2")
    assert results[0][1] == "1" and results[-1][1] == "2"
    assert _get("/readyz")[1]["model_version"] == "2"
    # The live replicas were reconfigured in place, not replaced by new processes (a rolling update).
    assert _model_server_actors() == replicas_before


def test_replicas_follow_the_champion_alias_under_load(served):
    """Deployed as "the champion", the replicas switch by themselves when the alias moves (no redeploy),
    with no failed request; a pinned version stops following."""
    meta, _, _ = served
    reg = Registry()
    reg.promote(reg.get("1"))
    swap_model(RegistryConfig(), SERVE, MONITOR)  # the champion again, after the pinned swap above
    status, info = _get("/model")
    assert status == 200 and info["version"] == "1" and info["follows_champion"] is True
    results = _switch_under_load(meta, lambda: reg.promote(reg.get("2")), "2", threads=3)
    assert results[0][1] == "1" and results[-1][1] == "2"
    info = _get("/model")[1]
    assert info["champion_check"]["error"] is None and info["champion_check"]["checked_at"] is not None

    swap_model(RegistryConfig(), SERVE, MONITOR, "1")  # pinned: the alias (still v2) is no longer followed
    # A steady state, not an event: v1 must hold through several of the follower's polls (champion_poll_s 1 s).
    polls = [_get("/model")[1] for _ in _for_seconds(3 * SERVE.champion_poll_s)]
    assert polls and all(p["version"] == "1" and p["follows_champion"] is False for p in polls), polls[-1]


def _for_seconds(seconds: float, interval: float = 0.25):
    """Yield every ``interval`` seconds until ``seconds`` have passed (a check that must hold throughout)."""
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        yield
        time.sleep(interval)


def test_replicas_write_no_access_log_by_default(served):
    """serve.access_log is off: Serve's per-request log lines (and their once-a-second flush stalls)
    never reach the replica logs, while the replicas still log (their startup lines)."""
    import ray

    assert _post("/predict", b"{}")[0] == 422 and _get("/model")[0] == 200
    logs = list((Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve").glob("replica_raygbm_ModelServer_*.log"))
    assert logs and any(p.stat().st_size > 0 for p in logs)
    lines = [ln for p in logs for ln in p.read_text(errors="replace").splitlines()]
    assert not [ln for ln in lines if "POST /predict" in ln or "GET /model" in ln], lines[-3:]


def _model_server_actors() -> dict[str, str]:
    """Every ModelServer replica actor this Ray has had, dead or alive: id → state."""
    from ray.util.state import list_actors

    return {a.actor_id: a.state for a in list_actors(limit=10_000) if "ModelServer" in a.class_name}


def _fuzz_corpus(good: dict, seed: int = 0) -> list[tuple[bytes, dict[str, str]]]:
    """Over a thousand malformed or hostile requests built from one good record."""
    import random

    rng = random.Random(seed)
    bad_values = ["NaN", "Infinity", "-Infinity", '"1.0"', '""', "true", "[]", "{}", "[1, 2]", '{"a": 1}',
                  "1e400", "-1e400", '"\\u0000"', '"' + "x" * 5000 + '"', "123456789012345678901234567890"]
    out: list[tuple[bytes, dict[str, str]]] = []
    text = json.dumps(good)
    for name in good:
        for v in bad_values:
            rec = json.dumps({k: (None if k == name else good[k]) for k in good}).replace(f'"{name}": null', f'"{name}": {v}')
            out.append((rec.encode(), {}))
            out.append((("[" + text + ", " + rec + "]").encode(), {}))
        out.append((json.dumps({k: v for k, v in good.items() if k != name}).encode(), {}))
        out.append((json.dumps({**good, name + "_x": 1}).encode(), {}))
    structural = [b"", b"{", b"}", b"[", b"]", b"[]", b"{}", b"null", b"true", b"1", b'"s"', b"[[]]", b"[null]",
                  b"\xff\xfe\xfd", "\u2028".encode(), b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000,
                  text.encode()[:-1], text.encode() + b"x", text.encode() * 2, b"\x00" * 100,
                  json.dumps([good] * 1001).encode()]
    out += [(b, {}) for b in structural]
    for _ in range(1100 - len(out) if len(out) < 1100 else 200):  # random byte-level damage
        b = bytearray(text.encode())
        for _ in range(rng.randint(1, 5)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        out.append((bytes(b), {}))
    out += [(text.encode(), {"content-type": "text/plain"}), (text.encode(), {"content-length": "-1"}),
            (text.encode(), {"x-request-timeout-seconds": "-5"}), (text.encode(), {"x-request-timeout-seconds": "abc"})]
    return out


def test_fuzzed_requests_never_get_a_5xx(served):
    meta, _, _ = served
    _, info = _get("/model")
    fields = list(info["request_schema"]["oneOf"][0]["properties"])
    good = _records(pq.read_table(meta.run_dir / RAW_TEST).slice(0, 1), fields)[0]
    corpus = _fuzz_corpus(good)
    assert len(corpus) >= 1000

    def send(request: tuple[bytes, dict[str, str]]) -> int | str:
        body, headers = request
        try:
            return _post("/predict", body, headers)[0]
        except (urllib.error.URLError, ConnectionError, ValueError) as exc:  # the client refused to send it
            return 0 if "content-length" in headers else f"{exc} for {body[:60]!r}"

    with ThreadPoolExecutor(4) as clients:  # four at a time: the endpoint also sees them concurrently
        statuses = list(clients.map(send, corpus))
    unsent = [s for s in statuses if isinstance(s, str)]
    assert not unsent, unsent[:5]
    assert not [s for s in statuses if s >= 500]
    assert sum(400 <= s < 500 for s in statuses) >= 1000


def _damaged(body: bytes, rng, count: int) -> list[bytes]:
    """``count`` copies of ``body`` with one to five random bytes overwritten, cut short, or grown."""
    out = []
    for i in range(count):
        b = bytearray(body)
        if i % 5 == 0:
            b = b[:rng.randrange(1, len(b))]
        elif i % 5 == 1:
            b[rng.randrange(len(b)):rng.randrange(len(b))] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        else:
            for _ in range(rng.randint(1, 5)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        out.append(bytes(b))
    return out


def _hostile_corpus(raw, good: dict, seed: int = 1) -> dict[str, list[tuple[str, str, bytes, dict[str, str]]]]:
    """Hostile requests for every route and body format, by class: (method, path, body, headers)."""
    import random

    import pyarrow as pa

    rng = random.Random(seed)
    arrow, csv, js = "application/vnd.apache.arrow.stream", "text/csv", "application/json"
    csv_body, arrow_body = _table_body(raw, csv), _table_body(raw, arrow)
    job = json.dumps({"input": "/tmp/x"}).encode()
    weird_names = ["", " ", "\u0000", "\ud800", "é" * 300, "a" * 10_000, "num_0 ", "NUM_0", "__proto__", "..", "num_0\n"]
    return {
        "csv damage": [("POST", "/predict/batch", b, {"content-type": csv}) for b in _damaged(csv_body, rng, 1400)],
        "arrow damage": [("POST", "/predict/batch", b, {"content-type": arrow}) for b in _damaged(arrow_body, rng, 1400)],
        "csv shapes": [("POST", "/predict/batch", b, {"content-type": csv}) for b in (
            b"", b"\n", b",,,\n", csv_body.split(b"\n")[0] + b"\n", csv_body.replace(b",", b";"),
            csv_body.replace(b",", b"\t"), b'"' + csv_body, csv_body + b'"unterminated', csv_body * 3,
            csv_body.replace(b"\n", b"\r"), b"\x00" * 1000, b"\xef\xbb\xbf" + csv_body, csv_body.upper())]
            + [("POST", "/predict/batch", csv_body.replace(b"num_0", n.encode("utf-8", "surrogatepass"), 1),
                {"content-type": csv}) for n in weird_names],
        "arrow types": [("POST", "/predict/batch", _table_body(raw.set_column(raw.column_names.index(c), c, arr), arrow),
                         {"content-type": arrow})
                        for c in ("num_0", "cat_0", "event_time")
                        for arr in (pa.array(["x"] * raw.num_rows), pa.array([True] * raw.num_rows),
                                    pa.array([[1]] * raw.num_rows), pa.array([None] * raw.num_rows, pa.null()),
                                    pa.array([b"\xff"] * raw.num_rows, pa.binary()),
                                    pa.array([{"a": 1}] * raw.num_rows), pa.array([10**18] * raw.num_rows, pa.int64()),
                                    pa.array([1.5] * raw.num_rows, pa.float16()))]
            + [("POST", "/predict/batch", _table_body(raw.rename_columns(
                [n if n != "num_0" else w for n in raw.column_names]), arrow), {"content-type": arrow})
               for w in weird_names if "\ud800" not in w],  # Arrow names are UTF-8: no lone surrogate
        "job bodies": [("POST", "/predict/batch", b, {"content-type": js}) for b in (
            [json.dumps({"input": v}).encode() for v in
             ("", ".", "/", "~", "/etc/passwd", "file:///etc", "s3://", "gs://x/../../y", "\u0000", "a" * 100_000,
              "hdfs://x", "/tmp/" + "../" * 50 + "etc", "http://127.0.0.1:8265/api")]
            + [json.dumps({"input": v}).encode() for v in (1, None, [], {}, True, 1e308)]
            + [json.dumps({"input": "/tmp/x", "output": "/etc"}).encode(), json.dumps({}).encode(), b"[]", b"{",
               job[:-1], job + b"x", job * 2, b'{"input": "/tmp/x", "input": "/etc"}'] + _damaged(job, rng, 200))],
        "gets": [("GET", path, b"", {}) for path in (
            ["/predict/batch/" + junk for junk in ("x", "..", "%2e%2e%2fetc", "a" * 5000, "%00", "\u2028", "-1")]
            + ["/model?" + "a=1&" * 2000, "/drift?window=-1", "/healthz?x=" + "%ff" * 100, "/readyz/../model",
               "/nope", "/" + "x/" * 2000, "/predict", "/openapi.json?x=1", "/docs", "//model", "/model%00"])],
        "methods": [(m, path, b"{}", {"content-type": js}) for m in ("PUT", "DELETE", "PATCH", "OPTIONS", "TRACE")
                    for path in ("/predict", "/predict/batch", "/model", "/drift", "/healthz")],
        "content types": [("POST", path, body, {"content-type": ct}) for path, body in
                          (("/predict", json.dumps(good).encode()), ("/predict/batch", csv_body))
                          for ct in ("text/plain", "application/xml", "multipart/form-data; boundary=x",
                                     "application/x-www-form-urlencoded", "text/csv; charset=latin-1",
                                     "application/json; charset=utf-16", "application/vnd.apache.arrow.file",
                                     "a" * 2000, "text/csv, application/json", ";", "application/json" + "\t" * 50)],
        "headers": [("POST", "/predict", json.dumps(good).encode(), {"content-type": js, name: value})
                    for name, value in (("x-request-timeout-seconds", v) for v in ("-1", "0", "nan", "inf", "1e400", "abc", "9" * 400))]
            + [("POST", "/predict", json.dumps(good).encode(), {"content-type": js, "authorization": v})
               for v in ("Bearer", "Bearer " + "a" * 8000, "Basic eDp5", "\u00ff")]
            + [("POST", "/predict", json.dumps(good).encode(), {"content-type": js, "x-request-id": v})
               for v in ("a" * 8000, "../../x", "\r\nx")],
    }


def _oip_hostile_corpus(model_meta: dict, good: dict, seed: int = 2) -> dict[str, list[tuple[str, str, bytes, dict[str, str]]]]:
    """Hostile requests for the Open Inference Protocol's routes, by class: (method, path, body, headers)."""
    import random

    from tritonclient.http import InferenceServerClient

    rng = random.Random(seed)
    name, js = model_meta["name"], {"content-type": "application/json"}
    infer = f"/v2/models/{name}/infer"
    tensors = _oip_tensors(model_meta, [good] * 5)
    body = json.dumps({"inputs": tensors}).encode()
    binary, size = InferenceServerClient.generate_request_body(_triton_inputs(model_meta, [good] * 5))
    with_size = {"inference-header-content-length": str(size)}

    def tensor(**change) -> bytes:
        return json.dumps({"inputs": [{**tensors[0], **change}] + tensors[1:]}).encode()

    def doc(**change) -> bytes:
        return json.dumps({"inputs": tensors, **change}).encode()

    weird = ["", " ", "\u0000", "é" * 300, "a" * 10_000, "..", "%2e%2e", "num_0", "records", "\ud800"]
    return {
        "oip json damage": [("POST", infer, b, js) for b in _damaged(body, rng, 400)],
        "oip binary damage": [("POST", infer, b, with_size) for b in _damaged(binary, rng, 300)]
        + [("POST", infer, binary, {"inference-header-content-length": v})
           for v in ("-1", "abc", "9" * 30, "0", str(len(binary) + 5), " 12 ", "1e3", "\u00ff")],
        "oip tensors": [("POST", infer, b, js) for b in (
            [tensor(shape=v) for v in ([], [-1], [10**9], [2**64], ["5"], [None], [5, 5], [5, 1, 1], [True], None, 5, {})]
            + [tensor(datatype=v) for v in ("", "bf16", "BF16", "FP8", "STRING", "bytes", "x" * 5000, None, 5, "BOOL")]
            + [tensor(data=v) for v in (None, {}, "x", [[[]]] * 5, [[]] * 5, [1e308] * 5, [2**64] * 5, [[1, 2]] * 5,
                                        ["\ud800"] * 5, [True] * 5, ["1"] * 5, list(range(6)))]
            + [tensor(name=v) for v in weird + [None, 5, ["num_0"]]]
            + [tensor(parameters=v) for v in (None, [], {"binary_data_size": -1}, {"binary_data_size": 10**12},
                                              {"binary_data_size": "8"}, {"shared_memory_region": "x"})]
            + [doc(id=v) for v in (5, None, [], "x" * 100_000, "\ud800")]
            + [doc(outputs=v) for v in ([], [{}], [{"name": 5}], [{"name": "x"}], "score", [{"name": "score"}] * 1000)]
            + [doc(parameters=v) for v in ([], "x", {"binary_data_output": True}, {"a": {"b": [1] * 1000}})]
            + [json.dumps({"inputs": v}).encode() for v in ([], None, {}, [[]], tensors * 100, [tensors[0]] * 5000)]
            + [json.dumps({"inputs": [{"name": "records", "shape": [1], "datatype": "BYTES", "data": [v]}]}).encode()
               for v in ("", "{", "[]", "null", "[1]", json.dumps([good] * 3000), "[" * 100_000, "\ud800", json.dumps(good) * 2)])],
        "oip paths and methods": [("POST", f"/v2/models/{w}/infer", body, js) for w in weird + ["nope", name + " "]]
        + [("POST", f"/v2/models/{name}/versions/{v}/infer", body, js) for v in ("0", "-1", "x" * 3000, "1.0", "%00")]
        + [("GET", path, b"", {}) for path in (
            "/v2", "/v2/", "/v2/health/live?x=1", "/v2/health/ready/..", f"/v2/models/{name}", "/v2/models/",
            f"/v2/models/{name}/ready", f"/v2/models/{name}/versions/9/ready", "/v2/models/" + "x" * 5000,
            f"/v2/models/{name}/infer", "/v2/repository/index", f"/v2/models/{name}/stats", "/v2/models/%ff")]
        + [(m, path, body, js) for m in ("PUT", "DELETE", "PATCH") for path in (infer, "/v2", f"/v2/models/{name}")],
        "oip headers": [("POST", infer, body, {**js, k: v}) for k, v in (
            ("content-encoding", "gzip"), ("content-encoding", "br"), ("content-encoding", "x" * 3000),
            ("content-type", "application/octet-stream"), ("content-type", "text/csv"),
            ("inference-header-content-length", str(len(body))), ("inference-header-content-length", "5"))],
    }


def _call(method: str, path: str, body: bytes, headers: dict[str, str]) -> int:
    """The status of one request; 0 when the client library refused to send it."""
    try:
        req = urllib.request.Request(URL + path, data=body or None, method=method, headers=headers)
    except ValueError:
        return 0
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code
    except (urllib.error.URLError, ValueError, UnicodeEncodeError, http.client.InvalidURL) as exc:
        if isinstance(exc, urllib.error.URLError) and not isinstance(exc.reason, (ValueError, UnicodeEncodeError)):
            raise
        return 0


def test_hostile_requests_on_every_route_and_format_never_get_a_5xx(served):
    """Over four thousand hostile requests across the routes and body formats, the Open Inference
    Protocol's included (the fuzz test adds a thousand on /predict's JSON): no answer is a 5xx, and a
    valid request is answered after each class."""
    meta, _, _ = served
    _, info = _get("/model")
    fields = list(info["request_schema"]["oneOf"][0]["properties"])
    raw = pq.read_table(meta.run_dir / RAW_TEST).slice(0, 5).drop_columns(["label"])
    good = _records(raw.slice(0, 1), fields)[0]
    corpus = {**_hostile_corpus(raw, good), **_oip_hostile_corpus(_get(f"/v2/models/{info['name']}")[1], good)}
    total, server_errors, sent = 0, [], 0
    with ThreadPoolExecutor(4) as clients:  # four at a time: the endpoint also sees them concurrently
        for name, requests in corpus.items():
            for (method, path, body, _), status in zip(requests, clients.map(lambda r: _call(*r), requests)):
                total += 1
                sent += status != 0
                if status >= 500:
                    server_errors.append((name, method, path[:40], status, body[:60]))
            assert _post("/predict", json.dumps(good).encode())[0] == 200, name
    print(f"{total} hostile requests ({sent} sent), {len(server_errors)} answered >= 500")
    assert total >= 4000 and sent >= 0.95 * total
    assert not server_errors, server_errors[:10]


def test_cli_predict_through_the_endpoint(served, tmp_path):
    from typer.testing import CliRunner

    from raygbm.cli import app

    _serving("2")
    version = "2"
    data = make_shards(tmp_path / "in", rows=3000, shards=2, seed=12)
    out = tmp_path / "scored"
    result = CliRunner().invoke(app, ["predict", "--url", URL, "--input", str(data), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert f"scored 3,000 rows with model v{version} " in result.output
    scored = pq.read_table(out).sort_by("id")
    src = pq.read_table(data).sort_by("id")
    _, path = local_bundle(Registry(), version)
    bundle = Bundle.load(path)
    np.testing.assert_array_equal(np.asarray(scored["score"]), bundle.scores(bundle.features(src)))
    # A dataset the endpoint rejects: one line naming the file and the reason, nothing written.
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(src.drop_columns(["num_1"]).slice(0, 10), bad / "part-0.parquet")
    result = CliRunner().invoke(app, ["predict", "--url", URL, "--input", str(bad), "--output", str(tmp_path / "o2")])
    assert result.exit_code != 0 and "part-0.parquet" in result.output and "422" in result.output, result.output
    assert not (tmp_path / "o2").exists() and not list(tmp_path.glob(".o2.staging*"))


def test_batch_job_whose_worker_dies_is_reported_failed(served, tmp_path):
    import os
    import signal

    from ray.util.state import list_tasks

    data = make_shards(tmp_path / "in", rows=400_000, shards=8, seed=13)
    status, job = _post("/predict/batch", json.dumps({"input": str(data)}).encode())
    assert status == 202, job

    def running_pid() -> int | None:
        assert _get(job["status_url"])[1]["status"] == "running", "the job ended before it could be killed"
        tasks = list_tasks(filters=[("func_or_class_name", "=", "run_batch_job"), ("state", "=", "RUNNING")])
        return next((t.worker_pid for t in tasks if t.worker_pid), None)

    # The job's driving task, once it runs: kill its process as a crash would.
    os.kill(wait_until(running_pid, 60, interval=0.05, message="the job's task running"), signal.SIGKILL)
    doc = _job_done(job, 60)
    assert doc["status"] == "failed" and "worker died" in doc["error"], doc


def test_mlflow_pyfunc_of_the_champion_scores_like_the_endpoint_on_10k_rows(served, monkeypatch):
    """The registered version is an MLflow Model: ``mlflow.pyfunc`` scores raw rows as /predict/batch does."""
    import mlflow.pyfunc

    from raygbm.registry.store import tracking_uri

    meta, _, _ = served
    _serving("1")
    Registry().promote(Registry().get("1"))
    raw = pq.read_table(meta.run_dir / RAW_TEST).slice(0, 10_000)
    endpoint = _score_arrow(raw)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri())
    model = mlflow.pyfunc.load_model(f"models:/{RegistryConfig().model_name}@champion")
    frame = raw.select(model.metadata.get_input_schema().input_names()).to_pandas()
    frame["event_time"] = frame["event_time"].dt.tz_localize(None)  # MLflow's datetime columns are naive (UTC)
    out = model.predict(frame)
    assert len(out) == endpoint.num_rows == 10_000
    np.testing.assert_allclose(out["score"].to_numpy(), np.asarray(endpoint["score"]), rtol=0, atol=1e-12)
    assert out["prediction"].tolist() == endpoint["prediction"].to_pylist()

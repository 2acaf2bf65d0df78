"""The loop's data side on the shared local Ray, through real HTTP: served rows logged with their ids,
labels posted in every format joined to them (the labelled store, GET /feedback), performance per drift
window in GET /drift (realized and CBPE-estimated), and hostile feedback never a 5xx nor a corrupted
store."""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from raygbm.config import EvaluateConfig, MonitorConfig, RegistryConfig, ServeConfig, TrainConfig, load_config
from raygbm.data.preprocess import preprocess
from raygbm.monitoring.actor import MONITOR_ACTOR
from raygbm.monitoring.labelled import PREDICTION_ID, labelled_dir, read_labelled
from raygbm.registry.register import evaluate_and_register
from raygbm.registry.store import Registry
from raygbm.serving.deploy import deploy
from raygbm.serving.tables import ARROW_STREAM, CSV, write_table
from raygbm.training.fit import Trained
from raygbm.training.train import RunMeta, train_in_process
from tests.conftest import make_shards
from tests.corpora import records_of
from tests.helpers import raygbm_home, wait_until

PORT = 8131
URL = f"http://127.0.0.1:{PORT}"
WINDOW = 2000  # rows per drift window: the realized AUC's spread at this size is about 0.01
SERVE = ServeConfig(port=PORT, max_rows=2000, max_body_bytes=1_000_000, max_batch_body_bytes=4_000_000)
MONITOR = MonitorConfig(window_size=WINDOW)


def _request(method: str, path: str, body: bytes | None = None, kind: str = "application/json") -> tuple[int, bytes, dict]:
    req = urllib.request.Request(URL + path, data=body, method=method, headers={"content-type": kind})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        try:
            return e.code, e.read(), dict(e.headers)
        except http.client.IncompleteRead as cut:
            # An early answer (HAProxy's 413 for a declared length over the limit) to a client still sending
            # its body: the server closes the connection, and the reset can cut the answer's body.
            return e.code, cut.partial, dict(e.headers)


def _json(method: str, path: str, body: bytes | None = None, kind: str = "application/json") -> tuple[int, dict]:
    status, data, _ = _request(method, path, body, kind)
    return status, json.loads(data or b"{}")


def _score_table(table: pa.Table, kind: str = ARROW_STREAM) -> pa.Table:
    status, data, _ = _request("POST", "/predict/batch", write_table(table, kind), kind)
    assert status == 200, data[:200]
    if kind == ARROW_STREAM:
        return pa.ipc.open_stream(data).read_all()
    import pyarrow.csv as pacsv

    return pacsv.read_csv(pa.BufferReader(data), convert_options=pacsv.ConvertOptions(
        column_types={"prediction_id": pa.string()}))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from ray import serve

    with raygbm_home(tmp_path_factory.mktemp("home")) as home:
        data = make_shards(tmp_path_factory.mktemp("data"), rows=60_000, shards=2, seed=11)
        cfg = load_config(None, ["data.drop=[id, event_time]"], {"data.source": str(data), "data.label": "label"})
        meta = RunMeta.load(preprocess(cfg).run_dir)
        train = TrainConfig(num_boost_round=60, early_stopping_rounds=None)
        evaluate_and_register(meta, Trained(train_in_process(meta, train), meta, None), train,
                              EvaluateConfig(permutation_rows=300), RegistryConfig(), None, monitor=MONITOR)
        Registry().promote(Registry().get("1"))
        deploy(RegistryConfig(), SERVE, MONITOR, "1")
        fresh = pq.read_table(make_shards(tmp_path_factory.mktemp("fresh"), rows=40_000, shards=1, seed=12))
        try:
            yield meta, home / "monitor", fresh
        finally:
            serve.shutdown()
            import ray

            ray.kill(ray.get_actor(MONITOR_ACTOR, namespace="raygbm"))


def _name() -> str:
    return _json("GET", "/model")[1]["name"]


def _fields(meta: RunMeta) -> list[str]:
    status, doc = _json("GET", "/model")
    assert status == 200, doc
    return list(doc["request_schema"]["oneOf"][0]["properties"])


def _fill_window(filler: pa.Table) -> None:
    """Close the open window with ``filler``'s rows: later rows start a window of their own."""
    open_rows = _json("GET", "/drift")[1]["open_window_rows"]
    if open_rows:
        _score_table(filler.slice(0, WINDOW - open_rows))


def test_feedback_in_every_format_joins_served_rows(served):
    meta, log_dir, fresh = served
    fields = _fields(meta)
    _fill_window(fresh.select(fields).slice(30_000))
    rows = fresh.slice(0, 40)
    recs = [{c: rows.column(c)[i].as_py() for c in fields} for i in range(rows.num_rows)]
    single = _json("POST", "/predict", json.dumps(recs[0]).encode())[1]
    listed = _json("POST", "/predict", json.dumps(recs[1:10]).encode())[1]["predictions"]
    by_csv = _score_table(rows.slice(10, 10).select(fields), CSV)
    by_arrow = _score_table(rows.slice(20, 20).select(fields))
    ids = [single["prediction_id"]] + [p["prediction_id"] for p in listed] + \
        by_csv.column("prediction_id").to_pylist() + by_arrow.column("prediction_id").to_pylist()
    assert len(set(ids)) == 40
    labels = rows.column("label").to_pylist()

    # One JSON object, a list (with a repeated id and an unknown one), a CSV table, an Arrow table.
    assert _json("POST", "/feedback", json.dumps({"prediction_id": ids[0], "label": labels[0]}).encode()) == \
        (200, {"accepted": 1, "unknown_ids": 0, "duplicates": 0})
    body = [{"prediction_id": i, "label": y} for i, y in zip(ids[1:10], labels[1:10])]
    body += [{"prediction_id": ids[1], "label": 1 - labels[1]}, {"prediction_id": ids[1], "label": labels[1]},
             {"prediction_id": "f" * 32, "label": 1}]
    assert _json("POST", "/feedback", json.dumps(body).encode()) == (200, {"accepted": 11, "unknown_ids": 1, "duplicates": 2})
    table = pa.table({"prediction_id": ids[10:20], "label": pa.array(labels[10:20], pa.int64())})
    assert _json("POST", "/feedback", write_table(table, CSV), CSV)[1] == {"accepted": 10, "unknown_ids": 0, "duplicates": 0}
    table = pa.table({"prediction_id": ids[20:40], "label": pa.array(labels[20:40], pa.int64())})
    assert _json("POST", "/feedback", write_table(table, ARROW_STREAM), ARROW_STREAM)[1] == \
        {"accepted": 20, "unknown_ids": 0, "duplicates": 0}

    store = read_labelled(log_dir, _name())
    got = dict(zip(store.column(PREDICTION_ID).to_pylist(), store.column("label").to_pylist()))
    assert {i: got.get(i) for i in ids} == dict(zip(ids, labels))  # ids[1]: its last label
    assert set(fields) <= set(store.column_names)
    sent = {c: [r[c] for r in recs[1:10]] for c in ("num_1", "cat_0")}
    mine = store.filter(pc.is_in(store[PREDICTION_ID], pa.array(ids[1:10]))).sort_by([("_served_at", "ascending")])
    by_id = {i: k for k, i in enumerate(mine.column(PREDICTION_ID).to_pylist())}
    assert [mine.column("num_1")[by_id[i]].as_py() for i in ids[1:10]] == sent["num_1"]
    assert [mine.column("cat_0")[by_id[i]].as_py() for i in ids[1:10]] == sent["cat_0"]

    summary = _json("GET", "/feedback")[1]
    assert summary["labelled_predictions"] >= 40 and summary["logged_predictions"] >= 40
    # The window these rows fell in closes: its performance counts them.
    _fill_window(fresh.select(fields).slice(30_000))
    doc = _json("GET", "/drift")[1]
    window = next((w for w in doc["windows"] if w["performance"]["labelled_rows"] >= 40), None)
    assert window is not None, [w["performance"] for w in doc["windows"]]
    perf = window["performance"]
    assert set(perf["realized"]) == {"roc_auc", "log_loss", "accuracy"} and set(perf["estimated"]) == {"roc_auc", "accuracy"}
    assert perf["bounds"]["estimated"]["roc_auc"]["lower"] < perf["estimated"]["roc_auc"]
    assert doc["feedback"]["coverage"] > 0


def test_estimated_auc_is_close_to_the_realized_one_on_clean_windows(served):
    """Generated data (``make_shards``, seed 12: the training distribution, no drift), 10 windows of
    2,000 rows, every row labelled: the CBPE-estimated AUC within 0.03 of the realized one on >= 8."""
    meta, _, fresh = served
    fields = _fields(meta)
    _fill_window(fresh.select(fields).slice(30_000))
    first = len(_json("GET", "/drift")[1]["windows"])
    traffic = fresh.slice(0, 10 * WINDOW)
    ids = []
    for k in range(10):
        ids += _score_table(traffic.slice(k * WINDOW, WINDOW).select(fields)).column("prediction_id").to_pylist()
    labels = pa.table({"prediction_id": ids, "label": traffic.column("label")})
    assert _json("POST", "/feedback", write_table(labels, ARROW_STREAM), ARROW_STREAM)[1]["accepted"] == 10 * WINDOW
    windows = wait_until(lambda: (lambda ws: ws if len(ws) >= first + 10 else None)(_json("GET", "/drift")[1]["windows"]),
                         30, message="ten closed windows")[first:first + 10]
    gaps = [abs(w["performance"]["estimated"]["roc_auc"] - w["performance"]["realized"]["roc_auc"]) for w in windows]
    assert all(w["performance"]["labelled_rows"] == WINDOW for w in windows)
    print("estimated - realized AUC per window:", [round(g, 4) for g in gaps])
    assert sum(g <= 0.03 for g in gaps) >= 8


def _hostile(ids: list[str], rng: random.Random) -> list[tuple[bytes, str]]:
    """2,000 hostile feedback bodies: unknown ids, wrong label types, NaN, huge bodies, bad content types,
    malformed and damaged tables."""
    unknown = [f"{rng.getrandbits(128):032x}" for _ in range(50)]  # a damaged table that still reads joins nothing
    good = pa.table({"prediction_id": unknown, "label": pa.array([1] * 50, pa.int64())})
    arrow, csv = write_table(good, ARROW_STREAM), write_table(good, CSV)
    bad_labels = ['"1"', "1.0", "true", "null", "NaN", "Infinity", "-1", "2", "1e400", "[1]", "{}", '"yes"', "99999999999999999999"]
    out: list[tuple[bytes, str]] = []
    for i in range(400):
        out.append((json.dumps({"prediction_id": f"{rng.getrandbits(128):032x}", "label": i % 2}).encode(), "application/json"))
        lab = bad_labels[i % len(bad_labels)]
        out.append((f'{{"prediction_id": "{ids[i % len(ids)]}", "label": {lab}}}'.encode(), "application/json"))
    for i in range(300):
        b = bytearray(arrow if i % 2 else csv)
        for _ in range(rng.randint(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        out.append((bytes(b[:rng.randrange(1, len(b))] if i % 3 == 0 else b), ARROW_STREAM if i % 2 else CSV))
    shapes = [pa.table({"prediction_id": ids[:3], "label": [1.5, 0.0, 1.0]}), pa.table({"prediction_id": ids[:3]}),
              pa.table({"prediction_id": ids[:3], "label": ["a", "b", "c"]}), pa.table({"id": ids[:3], "label": [1, 0, 1]}),
              pa.table({"prediction_id": ids[:3], "label": [1, 0, 1], "x": [1, 2, 3]}),
              pa.table({"prediction_id": [1, 2, 3], "label": [1, 0, 1]}),
              pa.table({"prediction_id": ids[:3], "label": pa.array([1, None, 0], pa.int64())}),
              pa.table({"prediction_id": ids[:3], "label": [float("nan"), 1.0, 0.0]}),
              pa.table({"prediction_id": ids[:3], "label": [7, 0, 1]})]
    for i in range(400):
        kind = ARROW_STREAM if i % 2 else CSV
        out.append((write_table(shapes[i % len(shapes)], kind), kind))
    junk = [b"", b"{", b"[]", b"[1,2]", b'"x"', b"\xff\xfe\x00", b"[" * 50_000, b'{"prediction_id": "a", "label": 1, "x": 0}',
            b'{"prediction_id": ' + json.dumps("a" * 500).encode() + b', "label": 1}']
    types = ["application/json", "text/plain", "application/xml", "multipart/form-data", "application/octet-stream", ""]
    for i in range(480):
        out.append((junk[i % len(junk)], types[i % len(types)]))
    out += [(b"x" * 5_000_000, ARROW_STREAM), (b'[' + b'{"prediction_id": "a", "label": 1},' * 40_000 + b']', "application/json")] * 10
    return out


@pytest.mark.slow
def test_two_thousand_hostile_feedback_payloads_get_no_5xx_and_corrupt_nothing(served):
    meta, log_dir, fresh = served
    fields = _fields(meta)
    ids = _score_table(fresh.slice(0, 60).select(fields)).column("prediction_id").to_pylist()
    assert _json("POST", "/feedback", write_table(pa.table({"prediction_id": ids[:5], "label": pa.array([0] * 5, pa.int64())}),
                                                  ARROW_STREAM), ARROW_STREAM)[1]["accepted"] == 5
    before = sorted(p.name for p in labelled_dir(log_dir, _name()).iterdir())
    corpus = _hostile(ids[10:], random.Random(5))
    assert len(corpus) >= 2000

    def send(payload: tuple[bytes, str]) -> tuple[int, bytes]:
        try:
            return _request("POST", "/feedback", *payload)[:2]
        except (urllib.error.URLError, ConnectionError) as exc:  # a huge body refused while it was sent
            return 413, str(exc).encode()

    statuses = []
    with ThreadPoolExecutor(4) as clients:  # four at a time: the endpoint also sees them concurrently
        answers = list(clients.map(send, corpus))
    for status, data in answers:
        assert status < 500, (status, data[:200])
        if status >= 400:
            assert ids[10].encode() not in data
        statuses.append(status)
    assert sum(400 <= s < 500 for s in statuses) >= 1500
    # Only unknown ids were ever accepted: the store is as it was, and every part of it and of the log reads.
    assert sorted(p.name for p in labelled_dir(log_dir, _name()).iterdir()) == before
    store = read_labelled(log_dir, _name())
    assert {i: y for i, y in zip(store.column(PREDICTION_ID).to_pylist(), store.column("label").to_pylist()) if i in ids[:5]} \
        == {i: 0 for i in ids[:5]}
    for part in (log_dir / _name() / "predictions").glob("*.parquet"):
        pq.read_table(part).validate(full=True)
    assert _json("GET", "/feedback")[0] == 200


def test_every_prediction_answered_under_load_is_joinable_after_the_monitor_is_killed(served):
    """SIGKILL of the monitor's process while four clients are served: what it held in memory, and the
    batches on their way to it, come back from the replicas' write-ahead files."""
    import ray

    _, _, fresh = served
    fields = _fields(None)
    body = json.dumps(records_of(fresh.slice(0, 20), fields)).encode()
    ids: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            status, doc = _json("POST", "/predict", body)
            assert status == 200, doc
            ids.extend(p["prediction_id"] for p in doc["predictions"])

    monitor = ray.get_actor(MONITOR_ACTOR, namespace="raygbm")
    with ThreadPoolExecutor(4) as pool:
        clients = [pool.submit(client) for _ in range(4)]
        wait_until(lambda: len(ids) >= 2000, 60, message="rows served under load")
        os.kill(ray.get(monitor.pid.remote()), signal.SIGKILL)
        killed = len(ids)
        wait_until(lambda: len(ids) >= killed + 2000, 60, message="rows served after the kill")
        stop.set()
        for c in clients:
            c.result()
    wait_until(lambda: ray.get(monitor.ping.remote(), timeout=5), 60, message="Ray to restart the monitor")
    accepted = 0
    for k in range(0, len(ids), 1000):
        status, counts = _json("POST", "/feedback", json.dumps([{"prediction_id": i, "label": 1}
                                                                 for i in ids[k:k + 1000]]).encode())
        assert status == 200 and counts["unknown_ids"] == 0, counts
        accepted += counts["accepted"]
    recovered = _json("GET", "/feedback")[1]
    print(f"monitor SIGKILLed after {killed} of {len(ids)} served rows: /feedback accepted {accepted}; "
          f"{recovered.get('recovered_rows')} rows came back from the write-ahead files")
    assert accepted == len(ids)

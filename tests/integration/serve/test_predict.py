"""The endpoint's scores: `POST /predict` over HTTP equals the batch path, bad requests get a 4xx (never a 5xx),
and the MLflow pyfunc of the champion scores like the endpoint."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from raygbm.config import RegistryConfig
from raygbm.data.split import RAW_TEST
from raygbm.registry.bundle import Bundle
from raygbm.registry.store import Registry, local_bundle
from tests.corpora import records_of
from tests.integration.serve.endpoint import http_get, http_post, score_arrow, serving


def test_http_scores_equal_the_batch_path_on_10k_rows(served):
    meta, _, _ = served
    serving("1")
    assert http_get("/healthz") == (200, {"status": "ok"})
    status, ready = http_get("/readyz")
    assert status == 200 and ready["model_version"] == "1"
    _, info = http_get("/model")
    fields = list(info["request_schema"]["oneOf"][0]["properties"])
    status, doc = http_get("/openapi.json")  # the hand-parsed body's real schema is published too
    assert status == 200
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == info["request_schema"]
    raw = pq.read_table(meta.run_dir / RAW_TEST).slice(0, 10_000)
    records = records_of(raw, fields)
    scores = []
    for i in range(0, len(records), 1000):
        status, out = http_post("/predict", json.dumps(records[i:i + 1000]).encode())
        assert status == 200, out
        assert out["model_version"] == "1"
        scores += [p["score"] for p in out["predictions"]]
    ref, path = local_bundle(Registry(), "1")
    bundle = Bundle.load(path)
    expected = bundle.scores(bundle.features(raw))
    np.testing.assert_array_equal(np.asarray(scores), expected)
    # One record: one object back, with an id.
    status, one = http_post("/predict", json.dumps(records[0]).encode())
    assert status == 200 and one["score"] == scores[0] and len(one["prediction_id"]) == 32
    assert one["prediction"] in (0, 1)


def test_bad_requests_get_4xx_never_5xx(served):
    meta, _, _ = served
    _, info = http_get("/model")
    fields = list(info["request_schema"]["oneOf"][0]["properties"])
    good = records_of(pq.read_table(meta.run_dir / RAW_TEST).slice(0, 1), fields)[0]
    cases = [
        json.dumps(good).replace(f'"num_0": {good["num_0"]}', '"num_0": NaN').encode(),
        json.dumps({**good, "num_0": "1.0"}).encode(),
        json.dumps({**good, "extra": 1}).encode(),
        json.dumps({k: v for k, v in good.items() if k != "num_3"}).encode(),
        b"{", b"", b"[]", b"null", b'"x"', json.dumps([good] * 2001).encode(),
        b"[" + b"1," * 1_100_000 + b"1]",  # over the body limit
    ]
    for body in cases:
        status, out = http_post("/predict", body)
        assert 400 <= status < 500, (status, out, body[:80])
        assert "error" in out
    status, _ = http_post("/predict", b"x" * 10, headers={"content-length": "99999999"})
    assert status in (400, 413)
    status, out = http_post("/predict", b"[" + b"1," * 1_100_000 + b"1]")  # an honest Content-Length over the limit
    assert status == 413 and "larger than" in out["error"]
    # A client asking Serve for no timeout still gets an answer (and a normal one).
    status, _ = http_post("/predict", json.dumps(good).encode(), headers={"x-request-timeout-seconds": "0"})
    assert status == 200


def test_mlflow_pyfunc_of_the_champion_scores_like_the_endpoint_on_10k_rows(served, monkeypatch):
    """The registered version is an MLflow Model: ``mlflow.pyfunc`` scores raw rows as /predict/batch does."""
    import mlflow.pyfunc

    from raygbm.registry.store import tracking_uri

    meta, _, _ = served
    serving("1")
    Registry().promote(Registry().get("1"))
    raw = pq.read_table(meta.run_dir / RAW_TEST).slice(0, 10_000)
    endpoint = score_arrow(raw)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri())
    model = mlflow.pyfunc.load_model(f"models:/{RegistryConfig().model_name}@champion")
    frame = raw.select(model.metadata.get_input_schema().input_names()).to_pandas()
    frame["event_time"] = frame["event_time"].dt.tz_localize(None)  # MLflow's datetime columns are naive (UTC)
    out = model.predict(frame)
    assert len(out) == endpoint.num_rows == 10_000
    np.testing.assert_allclose(out["score"].to_numpy(), np.asarray(endpoint["score"]), rtol=0, atol=1e-12)
    assert out["prediction"].tolist() == endpoint["prediction"].to_pylist()

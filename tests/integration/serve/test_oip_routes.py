"""The Open Inference Protocol over HTTP (JSON tensors and Triton's binary extension, sent by tritonclient)
scores as `/predict` does."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from raygbm.data.split import RAW_TEST
from tests.corpora import oip_tensors, records_of, triton_inputs
from tests.integration.serve.endpoint import PORT, drift_when, http_get, http_post, serving


def test_open_inference_protocol_scores_equal_predict(served):
    """tritonclient (binary tensors) and a plain JSON call written from the protocol's spec (one tensor per
    feature, and one BYTES tensor of records) score 1,000 rows exactly as /predict does; the rows reach
    the drift monitor like /predict's."""
    import tritonclient.http as triton

    meta, _, _ = served
    serving("1")
    _, info = http_get("/model")
    name, fields = info["name"], list(info["request_schema"]["oneOf"][0]["properties"])
    records = records_of(pq.read_table(meta.run_dir / RAW_TEST).slice(0, 1000), fields)
    status, expected = http_post("/predict", json.dumps(records).encode())
    assert status == 200
    scores = np.asarray([p["score"] for p in expected["predictions"]])
    predictions = [p["prediction"] for p in expected["predictions"]]
    assert http_get("/v2/health/live") == (200, {"live": True}) and http_get("/v2/health/ready") == (200, {"ready": True})
    assert http_get("/v2")[1]["extensions"] == ["binary_tensor_data"]
    assert http_get("/v2/models/nope")[0] == 404 and http_get(f"/v2/models/{name}/versions/9")[0] == 404

    client = triton.InferenceServerClient(f"127.0.0.1:{PORT}", connection_timeout=30, network_timeout=60)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    model_meta = client.get_model_metadata(name)
    assert [i["name"] for i in model_meta["inputs"]] == fields and model_meta["versions"] == ["1"]
    drift_before = drift_when(lambda r: True)["rows_seen"]
    result = client.infer(name, triton_inputs(model_meta, records), request_id="triton-1")
    np.testing.assert_array_equal(result.as_numpy("score"), scores)
    assert result.as_numpy("prediction").tolist() == predictions
    answer = result.get_response()
    assert answer["id"] == "triton-1" and answer["model_name"] == name and answer["model_version"] == "1"
    # The drift monitor counts them (the monitor is fed asynchronously: awaited).
    drift_when(lambda r: r["rows_seen"] >= drift_before + 1000)
    versioned = client.infer(name, triton_inputs(model_meta, records[:10]), model_version="1",
                             outputs=[triton.InferRequestedOutput("score")])
    np.testing.assert_array_equal(versioned.as_numpy("score"), scores[:10])
    assert versioned.as_numpy("prediction") is None

    body = {"id": "plain-1", "inputs": oip_tensors(model_meta, records)}
    status, plain = http_post(f"/v2/models/{name}/infer", json.dumps(body).encode())
    assert status == 200, plain
    out = {o["name"]: o for o in plain["outputs"]}
    assert out["score"]["datatype"] == "FP64" and out["score"]["shape"] == [1000] and plain["id"] == "plain-1"
    np.testing.assert_array_equal(np.asarray(out["score"]["data"]), scores)
    assert out["prediction"]["data"] == predictions and len(set(out["prediction_id"]["data"])) == 1000
    one_input = {"inputs": [{"name": "records", "shape": [1], "datatype": "BYTES", "data": [json.dumps(records)]}]}
    status, plain = http_post(f"/v2/models/{name}/infer", json.dumps(one_input).encode())
    assert status == 200, plain
    np.testing.assert_array_equal(np.asarray(next(o for o in plain["outputs"] if o["name"] == "score")["data"]), scores)
    # Errors come back the protocol's way: tritonclient raises with the server's message.
    with pytest.raises(triton.InferenceServerException, match="missing input"):
        client.infer(name, triton_inputs(model_meta, records[:3])[1:])

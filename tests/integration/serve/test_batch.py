"""`POST /predict/batch`: Arrow and CSV tables equal the batch path; Parquet jobs score every row, and one whose
worker dies is reported failed; `raygbm predict --url` through the endpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from raygbm.data.split import RAW_TEST
from raygbm.registry.bundle import Bundle
from raygbm.registry.store import Registry, local_bundle
from tests.conftest import make_shards
from tests.helpers import wait_until
from tests.integration.serve.endpoint import URL, http_get, http_post, job_done, post_raw, score_arrow, serving


def test_batch_route_arrow_and_csv_equal_the_batch_path(served):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    meta, _, _ = served
    serving("1")
    raw = pq.read_table(meta.run_dir / RAW_TEST).slice(0, 10_000)
    ref, path = local_bundle(Registry(), "1")
    expected = Bundle.load(path).scores(Bundle.load(path).features(raw))
    out = score_arrow(raw)
    assert out.column_names == ["prediction", "score", "prediction_id"] and out.num_rows == raw.num_rows == 10_000
    assert len(set(out["prediction_id"].to_pylist())) == 10_000  # one id per row, for POST /feedback
    np.testing.assert_array_equal(np.asarray(out["score"]), expected)
    csv_sink = pa.BufferOutputStream()
    pacsv.write_csv(raw.drop_columns(["label"]), csv_sink)
    status, body = post_raw("/predict/batch", csv_sink.getvalue().to_pybytes(), "text/csv")
    assert status == 200, body[:300]
    np.testing.assert_allclose(np.asarray(pacsv.read_csv(pa.BufferReader(body))["score"]), expected, rtol=1e-12)
    # Bad tables: 4xx with a message.
    assert post_raw("/predict/batch", b"not arrow", "application/vnd.apache.arrow.stream")[0] == 400
    assert post_raw("/predict/batch", b"a,b\n1,2\n", "text/csv")[0] == 422
    assert post_raw("/predict/batch", b"a,b", "application/x-www-form-urlencoded")[0] == 415


def test_batch_job_over_a_parquet_folder_writes_every_row_scored(served, tmp_path):
    serving("1")
    data = make_shards(tmp_path / "in", rows=6000, shards=3, seed=11)
    status, job = http_post("/predict/batch", json.dumps({"input": str(data)}).encode())
    assert status == 202, job
    doc = job_done(job, 120)
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
    assert http_post("/predict/batch", json.dumps({"input": "/etc"}).encode())[0] == 403
    assert http_post("/predict/batch", json.dumps({"input": str(tmp_path / "in" / ".." / ".." / "nope")}).encode())[0] == 404
    assert http_post("/predict/batch", json.dumps({"input": str(data), "output": "/tmp/x"}).encode())[0] == 422
    assert http_post("/predict/batch", b"{not json", {})[0] == 400
    for hostile in ("relative/path", "/tmp/\x00x", "/tmp/" + "a" * 300, "s3://b/../etc"):
        assert http_post("/predict/batch", json.dumps({"input": hostile}).encode())[0] in (403, 422), hostile
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "part-0.parquet").write_bytes(b"PAR1 this is not parquet")
    status, job = http_post("/predict/batch", json.dumps({"input": str(bad)}).encode())
    assert status == 202
    doc = job_done(job, 60)
    assert doc["status"] == "failed" and "part-0.parquet" in doc["error"], doc
    jobs = Path(first_output).parent  # nothing half-written from the failed job
    assert not (jobs / job["job_id"]).exists() and not [p for p in jobs.iterdir() if "staging" in p.name]
    assert http_get("/predict/batch/" + "0" * 32)[0] == 404 and http_get("/predict/batch/..%2f..%2fetc")[0] == 404


def test_cli_predict_through_the_endpoint(served, tmp_path):
    from typer.testing import CliRunner

    from raygbm.cli import app

    serving("2")
    version = "2"
    data = make_shards(tmp_path / "in", rows=3000, shards=2, seed=12)
    out = tmp_path / "scored"
    result = CliRunner().invoke(app, ["predict", "--url", URL, "--data", str(data), "--output", str(out)])
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
    result = CliRunner().invoke(app, ["predict", "--url", URL, "--data", str(bad), "--output", str(tmp_path / "o2")])
    assert result.exit_code != 0 and "part-0.parquet" in result.output and "422" in result.output, result.output
    assert not (tmp_path / "o2").exists() and not list(tmp_path.glob(".o2.staging*"))


def test_batch_job_whose_worker_dies_is_reported_failed(served, tmp_path):
    import os
    import signal

    from ray.util.state import list_tasks

    data = make_shards(tmp_path / "in", rows=400_000, shards=8, seed=13)
    status, job = http_post("/predict/batch", json.dumps({"input": str(data)}).encode())
    assert status == 202, job

    def running_pid() -> int | None:
        assert http_get(job["status_url"])[1]["status"] == "running", "the job ended before it could be killed"
        tasks = list_tasks(filters=[("func_or_class_name", "=", "run_batch_job"), ("state", "=", "RUNNING")])
        return next((t.worker_pid for t in tasks if t.worker_pid), None)

    # The job's driving task, once it runs: kill its process as a crash would.
    os.kill(wait_until(running_pid, 60, interval=0.05, message="the job's task running"), signal.SIGKILL)
    doc = job_done(job, 60)
    assert doc["status"] == "failed" and "worker died" in doc["error"], doc

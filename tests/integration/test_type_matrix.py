"""Real data types through the real command and the real endpoint: pandas categoricals (the issue's
repro) register a champion through ``raygbm``'s entry point; an unexpected error at registration prints
one line and a log path and the re-run resumes from the finished search; and the type matrix scores the
same through ``raygbm predict`` (a Ray job), the endpoint over HTTP (JSON, CSV, Arrow, a Parquet job, the
Open Inference Protocol) and the drift report."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from raygbm.config import MonitorConfig, RegistryConfig, ServeConfig
from raygbm.registry.bundle import Bundle
from raygbm.registry.store import Registry, local_bundle
from tests.helpers import raygbm_home, wait_until
from tests.type_matrix import DERIVED, json_records, write_pandas_categoricals, write_type_matrix


def _main(capsys, *args: str) -> tuple[int, str, str]:
    """``raygbm ARGS`` through the console script's own function: (exit code, stdout, stderr)."""
    from raygbm.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    out = capsys.readouterr()
    return exit_.value.code or 0, out.out, out.err


def test_pandas_categoricals_register_and_a_crash_at_registration_resumes(tmp_path, home, capsys, monkeypatch):
    import raygbm.registry.register as register

    data = write_pandas_categoricals(tmp_path / "data")
    run = ["run", "--data", str(data), "--label", "y", "--trials", "2"]

    def broken(*_a, **_k):
        raise RuntimeError("disk on fire")

    with monkeypatch.context() as patched:
        patched.setattr(register, "write_bundle", broken)
        code, out, err = _main(capsys, *run)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert "raygbm run failed unexpectedly in the register stage (RuntimeError)" in lines[0]
    assert "Traceback" not in out + err and "disk on fire" not in err
    log = home / "logs" / lines[0].rsplit(" ", 1)[1].rsplit("/", 1)[1]
    assert log.exists() and "disk on fire" in log.read_text() and "Traceback" in log.read_text()
    assert Registry().versions() == []  # nothing half-registered

    code, out, err = _main(capsys, *run)
    assert code == 0, err
    assert "reusing finished search" in out and "reusing finished training" in out, out
    assert "champion" in out
    ref, path = local_bundle(Registry(), "champion")
    assert ref.version == "1" and Bundle.load(path).preprocessor.schema.types["edu"].startswith("dictionary<")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"content-type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def matrix_run(tmp_path_factory):
    """The type matrix (multiclass string label) run through ``raygbm run``."""
    from typer.testing import CliRunner

    from raygbm.cli import app

    with raygbm_home(tmp_path_factory.mktemp("home")) as home:
        data = write_type_matrix(tmp_path_factory.mktemp("data"), "y_class", rows=3000, shards=3)
        result = CliRunner().invoke(app, ["run", "--data", str(data), "--label", "y_class", "--trials", "2",
                                          "--set", f"features.derived={DERIVED}"])
        assert result.exit_code == 0, result.output
        ref, path = local_bundle(Registry(), "champion")
        bundle = Bundle.load(path, ref.tags["manifest_sha256"])
        raw = pq.read_table(data)
        yield home, data, bundle, raw, bundle.scores(bundle.features(raw))


@pytest.mark.slow
def test_type_matrix_scores_the_same_through_predict_and_every_endpoint_format(matrix_run, tmp_path):
    from ray import serve
    from typer.testing import CliRunner

    from raygbm.cli import app
    from raygbm.monitoring.report import drift_report_html
    from raygbm.serving.deploy import deploy

    home, data, bundle, raw, expected = matrix_run
    with raygbm_home(home):
        # raygbm predict: a Ray batch job over the shards.
        out = tmp_path / "scored"
        result = CliRunner().invoke(app, ["predict", "--data", str(data), "--output", str(out)])
        assert result.exit_code == 0, result.output
        scored = pq.read_table(out)
        np.testing.assert_array_equal(np.asarray(scored["score"]), expected.max(axis=1))
        assert set(scored["prediction"].to_pylist()) <= {"low", "mid", "high"}

        port = _free_port()
        url = deploy(RegistryConfig(), ServeConfig(port=port, batch_input_roots=[tempfile.gettempdir()]),
                     MonitorConfig(window_size=500), "1")
        try:
            fields = list(_get(url + "/model")["request_schema"]["oneOf"][0]["properties"])
            records = json_records(raw, fields)
            status, body = _post(url + "/predict", json.dumps(records[:1000]).encode())
            assert status == 200, body[:300]
            probs = np.asarray([p["probabilities"] for p in json.loads(body)["predictions"]])
            np.testing.assert_array_equal(probs, expected[:1000])

            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, raw.schema) as w:
                w.write_table(raw.slice(0, 1000))
            status, body = _post(url + "/predict/batch", sink.getvalue().to_pybytes(), "application/vnd.apache.arrow.stream")
            assert status == 200, body[:300]
            np.testing.assert_array_equal(np.asarray(pa.ipc.open_stream(body).read_all()["score"]), expected[:1000].max(axis=1))

            csv = pa.BufferOutputStream()
            pacsv.write_csv(raw.slice(0, 1000).drop_columns(["y_class"]), csv)
            status, body = _post(url + "/predict/batch", csv.getvalue().to_pybytes(), "text/csv")
            assert status == 200, body[:300]
            np.testing.assert_allclose(np.asarray(pacsv.read_csv(pa.BufferReader(body))["score"]),
                                       expected[:1000].max(axis=1), rtol=1e-12)

            status, body = _post(url + "/predict/batch", json.dumps({"input": str(data)}).encode())
            assert status == 202, body[:300]
            job = json.loads(body)
            doc = wait_until(lambda: (d := _get(url + job["status_url"]))["status"] != "running" and d, 120,
                             interval=0.5, message="the Parquet job")
            assert doc["status"] == "succeeded", doc
            np.testing.assert_array_equal(np.asarray(pq.read_table(doc["output"])["score"]), expected.max(axis=1))

            meta = _get(url + "/v2/models/raygbm")
            inputs = [{"name": i["name"], "shape": [1000], "datatype": i["datatype"],
                       "data": [r[i["name"]] for r in records[:1000]]} for i in meta["inputs"]]
            status, body = _post(url + "/v2/models/raygbm/infer", json.dumps({"inputs": inputs}).encode())
            assert status == 200, body[:300]
            score = next(o for o in json.loads(body)["outputs"] if o["name"] == "score")["data"]
            np.testing.assert_array_equal(np.asarray(score), expected[:1000].max(axis=1))

            # The drift monitor saw every type: a window over the rows sent, every field in the report.
            report = wait_until(lambda: (r := _get(url + "/drift"))["rows_seen"] >= 3000 and r, 60, interval=0.5,
                                message="the drift monitor's rows")
            html = drift_report_html(report)
            for name in ("x_cat", "x_uint64", "x_bool", "ts_hour"):
                assert name in html, name
        finally:
            serve.shutdown()
            import ray

            from raygbm.monitoring.actor import MONITOR_ACTOR
            ray.kill(ray.get_actor(MONITOR_ACTOR, namespace="raygbm"))


@pytest.mark.slow
def test_type_matrix_through_mlflow_models_serve_and_predict_from_a_clean_environment(matrix_run, tmp_path):
    """The champion as an MLflow Model where only MLflow and the model's own requirements are installed (a
    fresh virtual environment from the package index: no raygbm, no Ray; raygbm's code travels in the
    model): ``mlflow models serve -m models:/raygbm@champion`` answers ``/invocations`` and ``mlflow models
    predict`` writes the same scores as the bundle on 1,000 raw rows of every type, the records
    ``/predict`` takes (the endpoint's answer to them is ``expected`` exactly, in the test above)."""
    from raygbm.registry.store import tracking_uri
    from raygbm.ui import requirement
    from tests.helpers import model_env

    home, data, bundle, raw, expected = matrix_run
    with raygbm_home(home):
        ref, path = local_bundle(Registry(), "champion")
        uri = tracking_uri()
    saved = [line.strip() for line in (path / "requirements.txt").read_text().splitlines() if line.strip()]
    assert not any(r.startswith(("raygbm", "ray=", "ray[")) for r in saved), saved  # all on the index
    python = model_env([requirement(), *saved])
    env = {"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "MLFLOW_TRACKING_URI": uri}
    found = subprocess.run([str(python), "-c", "import importlib.util as u; "
                            "print(u.find_spec('raygbm'), u.find_spec('ray'), u.find_spec('lightgbm') is not None)"],
                           env=env, capture_output=True, text=True, cwd=tmp_path)
    assert found.stdout.split() == ["None", "None", "True"], found.stdout + found.stderr

    fields = list(bundle.preprocessor.input_columns)
    records = json_records(raw.slice(0, 1000), fields)
    want = expected[:1000].max(axis=1)
    model = "models:/raygbm@champion"

    # mlflow models predict: a file in, a file out.
    (tmp_path / "input.json").write_text(json.dumps({"dataframe_records": records}))
    out = subprocess.run([str(python), "-m", "mlflow", "models", "predict", "-m", model, "-i", str(tmp_path / "input.json"),
                          "-o", str(tmp_path / "out.json"), "-t", "json", "--env-manager", "local"],
                         env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    predicted = json.loads((tmp_path / "out.json").read_text())["predictions"]
    np.testing.assert_array_equal(np.asarray([p["score"] for p in predicted]), want)

    # mlflow models serve: /invocations over HTTP.
    port = _free_port()
    with open(tmp_path / "serve.log", "w") as log:
        server = subprocess.Popen([str(python), "-m", "mlflow", "models", "serve", "-m", model, "--env-manager",
                                   "local", "--host", "127.0.0.1", "--port", str(port)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: server.poll() is not None or urllib.request.urlopen(url + "/ping", timeout=5).status == 200,
                   180, interval=0.5, message="mlflow models serve to answer /ping")
        assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        status, body = _post(url + "/invocations", json.dumps({"dataframe_records": records}).encode())
        assert status == 200, body[:500]
        served = json.loads(body)["predictions"]
        np.testing.assert_array_equal(np.asarray([p["score"] for p in served]), want)
        assert [p["prediction"] for p in served] == [p["prediction"] for p in predicted]
        assert set(p["prediction"] for p in served) <= {"low", "mid", "high"}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

"""The endpoint the serve tests share (deployed once by the package's `served` fixture) and their HTTP helpers."""

from __future__ import annotations

import http.client
import json
import tempfile
import urllib.error
import urllib.request

from raygbm.config import MonitorConfig, RegistryConfig, ServeConfig
from raygbm.serving.deploy import swap_model
from tests.helpers import wait_until

PORT = 8123
URL = f"http://127.0.0.1:{PORT}"
# Parquet jobs may read pytest's temporary folders (the data these tests generate) and nothing else.
SERVE = ServeConfig(port=PORT, max_rows=2000, max_body_bytes=2_000_000, batch_input_roots=[tempfile.gettempdir()],
                    champion_poll_s=1.0)
MONITOR = MonitorConfig(window_size=500)


def http_post(path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(URL + path, data=body, method="POST",
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def http_get(path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(URL + path, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def post_raw(path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    req = urllib.request.Request(URL + path, data=body, method="POST", headers={"content-type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def serving(version: str) -> None:
    """Each test states the model it needs: pin ``version`` (a no-op when it is already pinned)."""
    swap_model(RegistryConfig(), SERVE, MONITOR, version)
    wait_until(lambda: http_get("/model")[1].get("version") == version, 30, message=f"v{version} serving")


def job_done(job: dict, timeout: float) -> dict:
    """The status document of a Parquet job once it stopped running."""
    def finished() -> dict | None:
        doc = http_get(job["status_url"])[1]
        return doc if doc["status"] != "running" else None

    return wait_until(finished, timeout, interval=0.5, message=f"batch job {job['job_id']}")


def drift_when(cond, timeout: float = 30) -> dict:
    """GET /drift once ``cond(report)`` holds (the monitor is fed asynchronously)."""
    def report() -> dict | None:
        status, doc = http_get("/drift")
        return doc if status == 200 and cond(doc) else None

    return wait_until(report, timeout, interval=0.2, message="the drift report")


def score_arrow(raw):
    """``raw`` scored by POST /predict/batch as an Arrow IPC stream: the (prediction, score) table."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, raw.schema) as w:
        w.write_table(raw)
    status, body = post_raw("/predict/batch", sink.getvalue().to_pybytes(), "application/vnd.apache.arrow.stream")
    assert status == 200, body[:300]
    return pa.ipc.open_stream(body).read_all()


def call(method: str, path: str, body: bytes, headers: dict[str, str]) -> int:
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

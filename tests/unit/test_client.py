"""The one endpoint client (``serving.client``) against a real HTTP server on a free local port: JSON reads,
Arrow posts, the bearer token from the environment, and every failure as one DataError line naming the
route and the endpoint's own message."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pytest

from raygbm.errors import DataError
from raygbm.serving.client import ARROW_STREAM, Endpoint, arrow_bytes


class _Handler(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        _Handler.seen.append({"path": self.path, "authorization": self.headers.get("authorization")})
        if self.path == "/drift":
            self._answer(200, b'{"windows": []}')
        elif self.path == "/text":
            self._answer(200, b"not json", "text/plain")
        else:
            self._answer(404, b'{"error": "no such route"}')

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        _Handler.seen.append({"path": self.path, "type": self.headers.get("content-type")})
        table = pa.ipc.open_stream(body).read_all()
        if self.path == "/feedback":
            self._answer(200, json.dumps({"accepted": table.num_rows}).encode())
        else:
            self._answer(400, b'{"error": "label must be an integer"}')


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.seen.clear()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_reads_posts_and_sends_the_token_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("RAYGBM_ENDPOINT_TOKEN", "s" * 20)
    endpoint = Endpoint(server + "/")
    assert endpoint.get_json("/drift") == {"windows": []}
    assert _Handler.seen[-1] == {"path": "/drift", "authorization": "Bearer " + "s" * 20}
    labels = pa.table({"prediction_id": ["a", "b"], "label": [1, 0]})
    assert endpoint.feedback(labels, "rows 0-1") == {"accepted": 2}
    assert _Handler.seen[-1] == {"path": "/feedback", "type": ARROW_STREAM}
    assert pa.ipc.open_stream(arrow_bytes(labels)).read_all().equals(labels)


def test_every_failure_is_one_line_naming_the_route_and_the_endpoints_message(server, monkeypatch):
    monkeypatch.delenv("RAYGBM_ENDPOINT_TOKEN", raising=False)
    endpoint = Endpoint(server)
    with pytest.raises(DataError, match=r"^rows 0-1: .*/predict/batch answered 400: label must be an integer$"):
        endpoint.score(pa.table({"x": [1, 2]}), "rows 0-1")
    with pytest.raises(DataError, match=r"/nope answered 404: no such route$"):
        endpoint.get_json("/nope")
    with pytest.raises(DataError, match=r"/text did not answer JSON$"):
        endpoint.get_json("/text")
    assert [s["authorization"] for s in _Handler.seen if "authorization" in s] == [None, None]  # no token set
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(DataError, match=r"^cannot reach http://127.0.0.1:\d+/drift: "):
        Endpoint(f"http://127.0.0.1:{closed}").get_json("/drift")

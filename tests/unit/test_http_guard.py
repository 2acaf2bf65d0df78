"""The guarded HTTP protocol under a real uvicorn server and raw sockets: incomplete requests are closed
within the read timeout, oversized headers and bodies are refused whatever their framing, and a valid
request is answered after each."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from raygbm.config import ServeConfig
from raygbm.serving.http_guard import BATCH_PATH, DRAIN_S, GuardedHttpTools
from tests.helpers import wait_until

TIMEOUT_S = 1.0
LIMITS = ServeConfig(read_timeout_s=TIMEOUT_S, max_headers=20, max_header_bytes=2048, max_body_bytes=4096,
                     max_batch_body_bytes=65536)


async def _echo_length(scope, receive, send):
    """Reads the whole body and answers its length."""
    assert scope["type"] == "http"
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = json.dumps({"received": size}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    GuardedHttpTools.limits = LIMITS
    config = uvicorn.Config(_echo_length, host="127.0.0.1", port=0, http=GuardedHttpTools, lifespan="off",
                            log_level="critical", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 10, message="uvicorn to start")
    yield server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    thread.join(10)
    GuardedHttpTools.limits = ServeConfig()


def _exchange(port: int, *parts: bytes, pause_s: float = 0.0, wait_s: float = DRAIN_S + 3,
              answered: list[float] | None = None) -> tuple[bytes, float]:
    """Send ``parts`` (pausing between them), then read until the server closes; returns what came back
    and the seconds from the first byte sent to the close (and appends to ``answered`` the seconds to
    the answer's first byte)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        start = time.monotonic()
        for i, part in enumerate(parts):
            if i and pause_s:
                time.sleep(pause_s)
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break
        received = b""
        try:
            while chunk := sock.recv(65536):
                if not received and answered is not None:
                    answered.append(time.monotonic() - start)
                received += chunk
        except ConnectionResetError:
            pass
        return received, time.monotonic() - start


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def _post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST %s HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: %d\r\n%s\r\n%s"
            % (path.encode(), len(body), extra, body))


def _valid_request_answered(port: int) -> None:
    response, _ = _exchange(port, _post("/predict", b"x" * 100))
    assert _status(response) == 200 and response.endswith(b'{"received": 100}')


@pytest.mark.parametrize("request_bytes", [
    pytest.param(b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-le", id="headers-without-blank-line"),
    pytest.param(b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n" + b"x" * 10,
                 id="content-length-larger-than-body"),
    pytest.param(b"POST /predict HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
                 id="chunked-without-final-chunk"),
    pytest.param(b"", id="connection-without-a-byte"),
])
def test_incomplete_requests_are_closed_within_the_read_timeout(port, request_bytes):
    response, seconds = _exchange(port, request_bytes)
    assert TIMEOUT_S - 0.1 <= seconds <= TIMEOUT_S + 1, seconds
    assert _status(response) == 408, response[:200]
    assert b"content" not in response.split(b"\r\n\r\n", 1)[1] and b"hello" not in response  # no echo
    _valid_request_answered(port)


def test_a_slow_drip_of_header_bytes_does_not_extend_the_deadline(port):
    parts = [b"GET / HTTP/1.1\r\n"] + [b"x-a: b\r\n"] * 10
    response, seconds = _exchange(port, *parts, pause_s=0.3)
    assert _status(response) == 408 and seconds <= TIMEOUT_S + 1, (response[:100], seconds)


def test_a_request_completed_in_time_is_served_and_the_next_one_gets_its_own_deadline(port):
    body = b"y" * 50
    head = b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body)
    # Two requests on one keep-alive connection, each taking 0.6 s (1.2 s together, over the timeout).
    response, _ = _exchange(port, head, body[:25], body[25:] + head, body[:25], body[25:] + _post("/predict", b""),
                            pause_s=0.3)
    assert response.count(b"HTTP/1.1 200") == 3, response
    assert response.count(b'{"received": 50}') == 2 and b"408" not in response


@pytest.mark.parametrize("extra, status", [
    pytest.param(b"".join(b"x-h%d: v\r\n" % i for i in range(25)), 431, id="too-many-headers"),
    pytest.param(b"x-big: " + b"a" * 3000 + b"\r\n", 431, id="header-bytes"),
])
def test_oversized_headers_get_431(port, extra, status):
    answered: list[float] = []
    response, seconds = _exchange(port, _post("/predict", b"{}", extra), answered=answered)
    assert _status(response) == status and answered[0] < TIMEOUT_S and seconds <= DRAIN_S + 1, (response[:200], seconds)
    assert b"aaaa" not in response
    _valid_request_answered(port)


def test_a_header_line_that_never_ends_is_refused_at_the_limit_not_the_timeout(port):
    answered: list[float] = []
    response, _ = _exchange(port, b"GET / HTTP/1.1\r\nx-big: " + b"a" * 100_000, answered=answered)
    assert _status(response) == 431 and answered[0] < TIMEOUT_S, response[:200]


def test_bodies_over_the_route_limit_get_413_whatever_the_framing(port):
    answered: list[float] = []
    head = b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\n\r\n"
    declared, _ = _exchange(port, head, answered=answered)
    assert _status(declared) == 413 and answered[-1] < TIMEOUT_S  # refused on the header, before any body
    # A client that sends its whole body before reading still gets the answer (no reset).
    declared, seconds = _exchange(port, head + b"d" * 5000, answered=answered)
    assert _status(declared) == 413 and seconds <= DRAIN_S + 1 and b"dddd" not in declared
    chunk = b"1000\r\n" + b"z" * 4096 + b"\r\n"
    chunked, _ = _exchange(port, b"POST /predict HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
                           chunk, chunk, chunk, pause_s=0.05, answered=answered)
    assert _status(chunked) == 413 and answered[-1] < TIMEOUT_S and b"zzzz" not in chunked
    # The batch route has its own, larger limit.
    response, _ = _exchange(port, _post(BATCH_PATH, b"b" * 10_000))
    assert _status(response) == 200 and response.endswith(b'{"received": 10000}')
    response, _ = _exchange(port, _post(BATCH_PATH, b"b" * 70_000))
    assert _status(response) == 413
    # The Open Inference Protocol's infer routes have /predict's limit.
    for path in ("/v2/models/m/infer", "/v2/models/m/versions/1/infer"):
        response, _ = _exchange(port, _post(path, b"v" * 5000))
        assert _status(response) == 413, path
    _valid_request_answered(port)


def _through_serve_errors(status: int, content_type: bytes, method: str = "POST", path: str = "/predict",
                          request_type: bytes = b"application/json") -> list[dict]:
    """The messages a client gets when the proxied application answers ``status`` with ``content_type``."""
    import asyncio

    from raygbm.serving.http_guard import ServeErrors

    async def proxied(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]})
        await send({"type": "http.response.body", "body": b"ActorDiedError: actor 5f3c... at 10.0.0.7:4242"})

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": [(b"content-type", request_type)]}
    asyncio.run(ServeErrors(proxied)(scope, None, send))
    return sent


def test_serve_errors_become_503_naming_no_internals():
    start, body = _through_serve_errors(500, b"text/plain; charset=utf-8")
    assert start["status"] == 503 and (b"retry-after", b"1") in start["headers"]
    assert b"Actor" not in body["body"] and json.loads(body["body"])["error"]
    # A batch job submission may have started: 503 without an invitation to retry.
    start, _ = _through_serve_errors(500, b"text/plain", path="/predict/batch")
    assert start["status"] == 503 and not any(k == b"retry-after" for k, _ in start["headers"])
    start, _ = _through_serve_errors(500, b"text/plain", path="/predict/batch", request_type=b"text/csv")
    assert (b"retry-after", b"1") in start["headers"]


def test_the_applications_own_answers_pass_unchanged():
    for status, kind in ((503, b"application/json"), (200, b"application/json"), (422, b"text/plain"),
                         (200, b"text/csv")):
        start, body = _through_serve_errors(status, kind)
        assert start["status"] == status and body["body"].startswith(b"ActorDiedError")


def test_an_exception_escaping_the_proxy_becomes_503():
    import asyncio

    from raygbm.serving.http_guard import ServeErrors

    async def dies(scope, receive, send):
        raise RuntimeError("ActorDiedError: actor 5f3c at 10.0.0.7")

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    asyncio.run(ServeErrors(dies)({"type": "http", "method": "GET", "path": "/model", "headers": []}, None, send))
    assert sent[0]["status"] == 503 and b"Actor" not in sent[1]["body"]


def test_a_proxy_that_returns_without_answering_gets_503_answered():
    import asyncio

    from raygbm.serving.http_guard import ServeErrors

    async def silent(scope, receive, send):
        return None

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    asyncio.run(ServeErrors(silent)({"type": "http", "method": "POST", "path": "/predict", "headers": []}, None, send))
    assert sent[0]["status"] == 503 and (b"retry-after", b"1") in sent[0]["headers"]

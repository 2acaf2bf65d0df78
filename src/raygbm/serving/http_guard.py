"""Bounded reads for the HTTP servers Serve runs (its proxy, and direct-ingress replicas).

Serve's proxy serves HTTP with uvicorn, which waits as long as a client likes for a request's headers and
body, accepts any number and size of headers, and buffers a body of any length while the application
reads it. ``GuardedHttpTools`` is uvicorn's own HTTP/1.1 protocol with limits on each read:

- the whole request (headers and body) must arrive within ``serve.read_timeout_s`` of its first byte
  (or of the connection, for the first request): else 408 and the connection closes;
- at most ``serve.max_headers`` headers of ``serve.max_header_bytes`` in all: else 431;
- a body longer than the route's limit (declared or counted, whatever the framing): 413 as soon as the
  limit is passed, before the rest is read.

Serve calls the function named by ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` in each process that
starts an HTTP server, before it starts it: ``install`` makes uvicorn pick this protocol there. The limits
come from ``serve`` settings in ``RAYGBM_HTTP_LIMITS`` (JSON), set by the process that starts Ray
(``runtime.bounded_http_reads``).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from raygbm.config import ServeConfig
from raygbm.runtime import HTTP_LIMITS_ENV

BATCH_PATH = "/predict/batch"
FEEDBACK_PATH = "/feedback"  # takes tables too: held to the batch limit here, to its own per type in the app
TABLE_PATHS = (BATCH_PATH, FEEDBACK_PATH)
logger = logging.getLogger(__name__)

# How much of a refused request's remaining body is read (and dropped) so that its client gets the answer.
DRAIN_S = 2.0
DRAIN_BYTES = 64 * 1024 * 1024
_REASONS = {408: b"Request Timeout", 413: b"Content Too Large", 431: b"Request Header Fields Too Large"}


def install() -> list[Any]:
    """Serve's proxy callback: make uvicorn's ``http="auto"`` protocol the guarded one in this process,
    and answer Serve's own server errors as ``ServeErrors`` does."""
    from starlette.middleware import Middleware
    from uvicorn.protocols.http import auto

    GuardedHttpTools.limits = ServeConfig.model_validate(json.loads(os.environ.get(HTTP_LIMITS_ENV) or "{}"))
    auto.AutoHTTPProtocol = GuardedHttpTools
    return [Middleware(ServeErrors)]


class ServeErrors:
    """ASGI middleware for Serve's proxy: a server error the application did not answer itself (its
    answers are JSON) becomes a 503 that names no internals.

    When the replica holding a request dies, Serve's proxy answers nothing (uvicorn sends a bare 500),
    and other failures inside Serve answer 500 with the Ray exception's text (actor ids, addresses).
    The request did not fail on its input, and another replica (or the restarted one) can take it:
    503, with ``retry-after`` unless the request started a batch job (it may have started before the
    replica went)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        started = replaced = False

        async def send_guarded(message: dict[str, Any]) -> None:
            nonlocal started, replaced
            if message["type"] == "http.response.start" and message["status"] >= 500:
                kind = dict(message.get("headers") or ()).get(b"content-type", b"")
                if not kind.startswith(b"application/json"):
                    replaced = True
                    for part in unavailable(scope):
                        await send(part)
                    return
            if not replaced:
                started = True
                await send(message)

        try:
            await self.app(scope, receive, send_guarded)
        except Exception:
            if started or replaced:
                raise
            logger.warning("a request failed in Serve's proxy; answered 503", exc_info=True)
        # When the replica dies, Serve's proxy returns without answering (uvicorn then sends a bare 500).
        if not (started or replaced):
            for part in unavailable(scope):
                await send(part)


def unavailable(scope: dict[str, Any]) -> list[dict[str, Any]]:
    """The ASGI messages of the 503 that ``ServeErrors`` answers for a request of ``scope``."""
    kind = dict(scope.get("headers") or ()).get(b"content-type", b"").split(b";")[0].strip().lower()
    starts_job = scope.get("method") == "POST" and scope.get("path", "").rstrip("/") == BATCH_PATH and \
        kind == b"application/json"
    message = ("the replica stopped while starting the batch job: it may have started (its folder would be "
               "under serve.batch_output_dir)" if starts_job else "the replica serving this request stopped; retry")
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if not starts_job:
        headers.append((b"retry-after", b"1"))
    return [{"type": "http.response.start", "status": 503, "headers": headers},
            {"type": "http.response.body", "body": body}]


def _response(status: int, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, _REASONS[status], len(body)) + body)


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline per request and limits on headers and body."""

    limits = ServeConfig()

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: Any = None
        self._refused = False
        self._in_headers = True
        self._header_bytes = 0
        self._header_count = 0
        self._body_bytes = 0
        self._arm()

    # ---- the deadline: armed at a request's first byte, cleared when its body is complete

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.limits.read_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        self._refuse(408, f"request not received within {self.limits.read_timeout_s:g} s")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` unless this request's response has started, and close the connection; the
        application, if it has the request, sees the client gone.

        A client refused while it is still sending (413, 431) reads the answer only once it has sent
        its body, and a connection closed with unread data resets, losing the answer: so the rest is
        read and dropped, for at most ``DRAIN_S`` seconds and ``DRAIN_BYTES`` bytes, before closing.
        """
        self._refused = True
        self._disarm()
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(_response(status, message))
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        if status == 408:
            self.transport.close()
        else:
            self._drain_left = DRAIN_BYTES
            self.loop.call_later(DRAIN_S, self.transport.close)

    def _drain(self, data: bytes) -> None:
        self._drain_left -= len(data)
        if self._drain_left <= 0:
            self.transport.close()

    # ---- reading

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return self._drain(data)
        self._arm()
        if self._in_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        # Still inside the headers after this chunk: everything counted so far is header bytes.
        if not self._refused and self._in_headers and self._header_bytes > self.limits.max_header_bytes:
            self._refuse(431, f"request headers over {self.limits.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_count = 0
        self._body_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count <= self.limits.max_headers:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        size = len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers)
        if self._header_count > self.limits.max_headers:
            return self._refuse(431, f"more than {self.limits.max_headers} request headers")
        if size > self.limits.max_header_bytes:
            return self._refuse(431, f"request headers over {self.limits.max_header_bytes} bytes")
        declared = dict(self.headers).get(b"content-length", b"")
        if declared.strip().isdigit() and int(declared) > self._body_limit():
            return self._refuse(413, f"body over {self._body_limit()} bytes")
        super().on_headers_complete()

    def _body_limit(self) -> int:
        path = self.url.split(b"?", 1)[0].rstrip(b"/").decode("latin-1")
        return self.limits.max_batch_body_bytes if path in TABLE_PATHS else self.limits.max_body_bytes

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        self._body_bytes += len(body)
        if self._body_bytes > self._body_limit():
            return self._refuse(413, f"body over {self._body_limit()} bytes")
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._disarm()
        self._in_headers = True
        self._header_bytes = 0
        super().on_message_complete()

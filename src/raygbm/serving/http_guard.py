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
import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from raygbm.config import ServeConfig
from raygbm.runtime import HTTP_LIMITS_ENV

BATCH_PATH = "/predict/batch"

_REASONS = {408: b"Request Timeout", 413: b"Content Too Large", 431: b"Request Header Fields Too Large"}


def install() -> list[Any]:
    """Serve's proxy callback: make uvicorn's ``http="auto"`` protocol the guarded one in this process.
    Returns no middlewares (the limits act below ASGI, before a request reaches the application)."""
    from uvicorn.protocols.http import auto

    GuardedHttpTools.limits = ServeConfig.model_validate(json.loads(os.environ.get(HTTP_LIMITS_ENV) or "{}"))
    auto.AutoHTTPProtocol = GuardedHttpTools
    return []


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
        """Answer ``status`` unless this request's response has started, then close the connection; the
        application, if it has the request, sees the client gone."""
        self._refused = True
        self._disarm()
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(_response(status, message))
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    # ---- reading

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
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
        return self.limits.max_batch_body_bytes if path == BATCH_PATH else self.limits.max_body_bytes

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

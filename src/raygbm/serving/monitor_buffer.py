"""Scored rows on their way from a replica to the drift monitor, off the request path.

A Ray call per request would cost more than the prediction, so rows are buffered and leave in one call
per ``rows`` rows or ``seconds`` seconds, whichever comes first. Sending never waits: when the monitor's
queue is full the batch is dropped and counted, and the count travels with the next batch that gets
through. With the prediction log on, each part also carries the request it came from (its raw body or
table and its prediction ids), passed along untouched: the monitor parses it, off the request path.
Plain Python (the sender is any callable), unit-tested without Ray.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import numpy as np

FLUSH_ROWS = 512
FLUSH_S = 0.25

# send(version, features, scores, missing, dropped, ts, raw): raw is None or one request part per added batch
Send = Callable[[str, np.ndarray, np.ndarray, np.ndarray, int, float, Any], Any]


class MonitorBuffer:
    """Rows of one model version at a time (a batch never mixes versions: a swap flushes first)."""

    def __init__(self, send: Send, full: tuple[type[BaseException], ...] = (), rows: int = FLUSH_ROWS,
                 seconds: float = FLUSH_S):
        self.send = send
        self.full = full  # exceptions of ``send`` that mean "the monitor's queue is full"
        self.rows, self.seconds = rows, seconds
        self.dropped = 0  # batches dropped since the last one delivered
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, list[Any] | None]] = []
        self._version: str | None = None
        self._buffered = 0
        self._timer: asyncio.TimerHandle | None = None

    def add(self, version: str, features: np.ndarray, scores: np.ndarray, missing: np.ndarray,
            raw: list[Any] | None = None) -> None:
        """Buffer rows scored by ``version``; called from the replica's event loop (the timer lives there).
        ``raw``: the request parts these rows came from, in row order (None: not logged)."""
        if self._parts and self._version != version:
            self.flush()
        self._version = version
        self._parts.append((features, scores, missing, raw))
        self._buffered += len(features)
        if self._buffered >= self.rows:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.seconds, self.flush)

    def flush(self) -> None:
        """Send what is buffered now (fire and forget)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        parts, self._parts, self._buffered = self._parts, [], 0
        if not parts:
            return
        features = np.concatenate([p[0] for p in parts])
        scores = np.concatenate([p[1] for p in parts])
        missing = np.concatenate([p[2] for p in parts])
        raw = None if any(p[3] is None for p in parts) else [r for p in parts for r in p[3]]
        try:
            self.send(self._version, features, scores, missing, self.dropped, time.time(), raw)
            self.dropped = 0
        except self.full:
            self.dropped += 1

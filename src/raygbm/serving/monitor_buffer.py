"""Scored rows on their way from a replica to the drift monitor, off the request path.

A Ray call per request would cost more than the prediction, so rows are buffered and leave in one call
per ``rows`` rows or ``seconds`` seconds, whichever comes first. Sending never waits: when the monitor's
queue is full the batch is dropped and counted, and the count travels with the next batch that gets
through. Plain Python (the sender is any callable), unit-tested without Ray.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import numpy as np

FLUSH_ROWS = 512
FLUSH_S = 0.25

# send(version, features, scores, missing, dropped, ts)
Send = Callable[[str, np.ndarray, np.ndarray, np.ndarray, int, float], Any]


class MonitorBuffer:
    """Rows of one model version at a time (a batch never mixes versions: a swap flushes first)."""

    def __init__(self, send: Send, full: tuple[type[BaseException], ...] = (), rows: int = FLUSH_ROWS,
                 seconds: float = FLUSH_S):
        self.send = send
        self.full = full  # exceptions of ``send`` that mean "the monitor's queue is full"
        self.rows, self.seconds = rows, seconds
        self.dropped = 0  # batches dropped since the last one delivered
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._version: str | None = None
        self._buffered = 0
        self._timer: asyncio.TimerHandle | None = None

    def add(self, version: str, features: np.ndarray, scores: np.ndarray, missing: np.ndarray) -> None:
        """Buffer rows scored by ``version``; called from the replica's event loop (the timer lives there)."""
        if self._parts and self._version != version:
            self.flush()
        self._version = version
        self._parts.append((features, scores, missing))
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
        try:
            self.send(self._version, features, scores, missing, self.dropped, time.time())
            self.dropped = 0
        except self.full:
            self.dropped += 1

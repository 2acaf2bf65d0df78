"""``WindowLog``: one model version's drift monitoring on disk, so its windows survive a restart of the
monitor (or of the cluster).

``meta.json``: the reference and column names; ``windows.jsonl``: each closed window as it closes;
``rows/part-<first>-<last>-<ms>-<seq>.parquet``: served rows (the model's features, scores, null masks and
their window index; a ``sample_rate`` share of them), written every ``flush_s`` seconds and on
``flush()``, each part renamed into place when complete. Parts whose windows fell out of the kept ones
are deleted, so the log stays about ``keep_windows × window_size`` rows.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from raygbm.monitoring.windows import ClosedWindow, RowBatch, window_from_json, window_to_json
from raygbm.paths import write_text_atomic

LoggedBatch = tuple[int, float, np.ndarray, np.ndarray, np.ndarray | None]
"""Rows waiting to be written: ``(window index, ts, features, scores, missing)``."""


def _last_window(part: Path) -> int:
    """The last window index a rows part holds (from its name)."""
    return int(part.name.split("-")[2])


class WindowLog:
    """One model version's log folder (see the module docstring). A failed write sets ``error`` and
    never raises: monitoring goes on in memory, and ``GET /drift`` says why nothing is kept; the next
    window written (once there is space again) clears it."""

    def __init__(self, root: Path, names: list[str], fields: list[str], sample_rate: float = 1.0,
                 flush_s: float = 5.0, keep_windows: int = 100):
        self.root = Path(root)
        self.names, self.fields = names, fields
        self.sample_rate, self.flush_s, self.keep_windows = sample_rate, flush_s, keep_windows
        self._rng = np.random.default_rng()
        self._buf: list[LoggedBatch] = []
        self._last_flush = time.time()
        self._seq = 0
        self.error: str | None = None  # the last write that failed

    def save_meta(self, reference: dict[str, Any]) -> None:
        (self.root / "rows").mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.root / "meta.json",
                          json.dumps({"reference": reference, "names": self.names, "fields": self.fields}))

    @staticmethod
    def load_meta(root: Path) -> dict[str, Any] | None:
        path = Path(root) / "meta.json"
        return json.loads(path.read_text()) if path.exists() else None

    def add_rows(self, window: int, ts: float, features: np.ndarray, scores: np.ndarray, missing: np.ndarray | None) -> None:
        if self.sample_rate < 1.0:
            keep = self._rng.random(len(features)) < self.sample_rate
            features, scores = features[keep], scores[keep]
            missing = missing[keep] if missing is not None else None
        if len(features):
            self._buf.append((window, ts, features, scores, missing))
        if time.time() - self._last_flush >= self.flush_s:
            self.flush()

    def add_window(self, doc: ClosedWindow) -> None:
        path = self.root / "windows.jsonl"
        size = path.stat().st_size if path.exists() else 0
        try:
            with open(path, "a") as f:
                f.write(window_to_json(doc) + "\n")
            self._prune(int(doc["index"]) + 1 - self.keep_windows)
            self.error = None  # writing works (again): windows resume on disk
        except OSError as exc:  # e.g. a full disk
            self.error = f"the drift window log: {exc.strerror or type(exc).__name__}"
            try:  # cut a line written in part, or the next window would be glued to it
                with open(path, "r+b") as f:
                    f.truncate(size)
            except OSError:
                pass

    def flush(self) -> None:
        self._last_flush = time.time()
        buf, self._buf = self._buf, []
        if not buf:
            return
        try:
            self._write(buf)
        except OSError as exc:
            self.error = f"the drift window log: {exc.strerror or type(exc).__name__}"

    def _columns(self, buf: list[LoggedBatch]) -> dict[str, Any]:
        """A rows part's columns: window, ts, ``feature.<name>``, ``score`` (or ``score.<k>``), ``missing.<field>``."""
        cols: dict[str, Any] = {
            "window": np.concatenate([np.full(len(b[2]), b[0], dtype=np.int64) for b in buf]),
            "ts": np.concatenate([np.full(len(b[2]), b[1]) for b in buf]),
        }
        features = np.concatenate([b[2] for b in buf])
        for j, name in enumerate(self.names):
            cols[f"feature.{name}"] = features[:, j]
        scores = np.concatenate([b[3].reshape(len(b[3]), -1) for b in buf])
        for k in range(scores.shape[1]):
            cols["score" if scores.shape[1] == 1 else f"score.{k}"] = scores[:, k]
        if self.fields and all(b[4] is not None for b in buf):
            missing = np.concatenate([b[4] for b in buf])
            for j, name in enumerate(self.fields):
                cols[f"missing.{name}"] = missing[:, j]
        return cols

    def _write(self, buf: list[LoggedBatch]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(self._columns(buf))
        self._seq += 1
        name = f"part-{buf[0][0]:08d}-{buf[-1][0]:08d}-{int(self._last_flush * 1000):013d}-{self._seq:04d}.parquet"
        rows = self.root / "rows"
        rows.mkdir(parents=True, exist_ok=True)
        tmp = rows / f".{name}.tmp"
        try:
            pq.write_table(table, tmp)
        except OSError:
            tmp.unlink(missing_ok=True)  # a part cut short by a full disk: free its space
            raise
        tmp.replace(rows / name)

    def _prune(self, oldest_kept: int) -> None:
        for part in (self.root / "rows").glob("part-*.parquet"):
            if _last_window(part) < oldest_kept:
                part.unlink(missing_ok=True)

    def load_windows(self) -> list[ClosedWindow]:
        path = self.root / "windows.jsonl"
        out = []
        for line in path.read_text().splitlines() if path.exists() else []:
            try:
                out.append(window_from_json(line))
            except ValueError:
                continue  # a line cut short by a crash
        return out[-self.keep_windows:]

    def load_rows(self, from_window: int) -> list[RowBatch]:
        """Logged rows of windows ``from_window`` on, as ``(ts, features, scores, missing)`` batches in order."""
        out: list[RowBatch] = []
        for part in sorted((self.root / "rows").glob("part-*.parquet"), key=lambda p: p.name.split("-")[3:]):
            if _last_window(part) >= from_window:
                out.extend(self._read_part(part, from_window))
        out.sort(key=lambda b: b[0])
        return out

    def _read_part(self, part: Path, from_window: int) -> list[RowBatch]:
        import pyarrow.parquet as pq

        t = pq.read_table(part)
        keep = np.asarray(t.column("window")) >= from_window
        if not keep.any():
            return []
        t = t.filter(keep)
        ts = np.asarray(t.column("ts"))
        features = np.column_stack([np.asarray(t.column(f"feature.{n}"), dtype=np.float64) for n in self.names])
        score_cols = [c for c in t.column_names if c == "score" or c.startswith("score.")]
        scores = np.column_stack([np.asarray(t.column(c)) for c in score_cols])
        scores = scores[:, 0] if scores.shape[1] == 1 else scores
        missing = (np.column_stack([np.asarray(t.column(f"missing.{n}")) for n in self.fields])
                   if self.fields and f"missing.{self.fields[0]}" in t.column_names else None)
        # One batch per distinct timestamp keeps each row's time (first/last_ts, time windows).
        out: list[RowBatch] = []
        for value in np.unique(ts):
            m = ts == value
            out.append((float(value), features[m], scores[m], missing[m] if missing is not None else None))
        return out

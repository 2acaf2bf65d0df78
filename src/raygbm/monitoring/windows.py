"""Windows of served rows and their verdicts: the open window (counts over the reference's bins), the
closed window's document (the JSON of ``GET /drift`` and of ``windows.jsonl`` lines: its shape is kept,
so logs written before stay readable) and ``DriftMonitorCore``, which fills windows, closes them (when
full, or by age) and scores them against the reference. Plain numpy: no Ray."""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict

import numpy as np

from raygbm.config import MonitorConfig
from raygbm.monitoring.reference import bin_counts
from raygbm.monitoring.scoring import (
    FeatureScore,
    MissingScore,
    score_categorical,
    score_categorical_js,
    score_missing,
    score_numeric,
)
from raygbm.monitoring.stats import hist, top_score
from raygbm.monitoring.thresholds import Thresholds

RowBatch = tuple[float, np.ndarray, np.ndarray, np.ndarray | None]
"""Served rows as logged and replayed: ``(ts, features, scores, missing)``."""


@dataclass
class OpenWindow:
    """The window rows are added to, as counts over the reference's bins."""

    counts: dict[str, np.ndarray]  # per feature the reference profiles: rows per bin (or code, then "other")
    prediction: np.ndarray  # rows per reference bin of the model's (top) score
    rows: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    missing: dict[str, int] = field(default_factory=dict)  # per raw field: rows where it was null

    @classmethod
    def empty(cls, reference: dict[str, Any], names: list[str]) -> OpenWindow:
        feats = reference["features"]
        counts = {name: np.zeros(len(feats[name]["probs"])) for name in names if name in feats}
        return cls(counts, np.zeros(len(reference["prediction"]["probs"])))


class ClosedWindow(TypedDict):
    """A closed window's document: an entry of ``GET /drift``'s ``windows`` and a line of ``windows.jsonl``."""

    index: int
    rows: int
    first_ts: float | None
    last_ts: float | None
    closed_by: str  # "rows" or "time"
    verdict: str  # "ok", "drift" or "insufficient_data" (closed by time with too few rows: not scored)
    drifted_features: list[str]  # drifted features, then "<field> (missing)" for drifted missing rates
    features: dict[str, FeatureScore]
    missing: dict[str, MissingScore]
    prediction: FeatureScore | None  # None when insufficient_data
    model_version: NotRequired[str]  # the core's labels (the actor's: the model version) come next
    alert: NotRequired[bool]  # with monitor.alert_after: drift in at least m of the last n scored windows


def window_to_json(window: ClosedWindow) -> str:
    """A closed window as one ``windows.jsonl`` line (without its newline)."""
    return json.dumps(window)


def window_from_json(line: str) -> ClosedWindow:
    """A ``windows.jsonl`` line back; ``ValueError`` when it is not JSON (a line cut short by a crash)."""
    return json.loads(line)


class DriftMonitorCore:
    """Accumulates served rows into windows and scores each closed window against the reference."""

    def __init__(self, reference: dict[str, Any], names: list[str], config: MonitorConfig, fields: list[str] | None = None,
                 labels: dict[str, Any] | None = None):
        self.reference = reference
        self.labels = labels or {}  # added to every closed window (e.g. its model version)
        self.names = names  # the model's features: the columns of ``features``
        self.fields = fields or []  # the request's raw fields: the columns of the ``missing`` mask
        self.config = config
        self.thresholds = Thresholds(reference, config)  # calibrated (recalibrated if the config differs) or static
        self.closed: deque[ClosedWindow] = deque(maxlen=config.keep_windows)
        self.index = 0
        alert = config.alert_after
        self.recent: deque[bool] = deque(maxlen=alert.n if alert else 1)  # the last scored windows' drift
        self.dropped_batches = 0
        self.rows_seen = 0
        # Persistence hooks (the actor's WindowLog): rows as they are assigned to a window, and windows
        # as they close.
        self.on_rows: Callable[[int, float, np.ndarray, np.ndarray, np.ndarray | None], None] | None = None
        self.on_close: Callable[[ClosedWindow], None] | None = None
        self.window = OpenWindow.empty(reference, names)

    def observe(self, features: np.ndarray, scores: np.ndarray, missing: np.ndarray | None = None, ts: float | None = None) -> None:
        """Add a batch (``missing``: rows × ``fields`` booleans, null in the request); closes and scores
        as many windows as fill up (or, with ``window_seconds``, as many as time closes)."""
        ts = time.time() if ts is None else ts
        self.tick(ts)
        start = 0
        n = len(features)
        while start < n:
            take = min(self.config.window_size - self.window.rows, n - start)
            part = slice(start, start + take)
            part_missing = missing[part] if missing is not None else None
            if self.on_rows is not None:
                self.on_rows(self.index, ts, features[part], scores[part], part_missing)
            self._add(features[part], scores[part], part_missing, ts)
            start += take
            if self.window.rows >= self.config.window_size:
                self._close("rows")
        self.rows_seen += n

    def tick(self, now: float | None = None) -> None:
        """Close the open window if ``window_seconds`` have passed since its first row."""
        ws = self.config.window_seconds
        now = time.time() if now is None else now
        if ws and self.window.first_ts is not None and now - self.window.first_ts >= ws:
            self._close("time")

    def _add(self, features: np.ndarray, scores: np.ndarray, missing: np.ndarray | None, ts: float) -> None:
        w = self.window
        w.first_ts = ts if w.first_ts is None else w.first_ts
        w.last_ts = ts
        w.rows += len(features)
        for j, name in enumerate(self.names):
            if name in w.counts:
                w.counts[name] += bin_counts(self.reference["features"][name], features[:, j])
        w.prediction += hist(top_score(scores), self.reference["prediction"]["cuts"])
        if missing is not None and len(missing):
            for k, v in zip(self.fields, missing.sum(axis=0)):
                w.missing[k] = w.missing.get(k, 0) + int(v)

    def _close(self, by: str) -> None:
        if by == "time" and self.window.rows < self.config.min_window_rows:
            doc = self._document(by, "insufficient_data", [], {}, {}, None)
        else:
            doc = self._scored(by)
        doc.update(self.labels)
        self._alert(doc)
        self.closed.append(doc)
        if self.on_close is not None:
            self.on_close(doc)
        self.index += 1
        self.window = OpenWindow.empty(self.reference, self.names)

    def _alert(self, doc: ClosedWindow) -> None:
        """With ``alert_after``: remember a scored window's verdict and say whether drift persists."""
        if self.config.alert_after is None:
            return
        if doc["verdict"] != "insufficient_data":  # a window too small to score neither adds nor clears drift
            self.recent.append(doc["verdict"] == "drift")
        doc["alert"] = sum(self.recent) >= self.config.alert_after.m

    def _document(self, by: str, verdict: str, drifted: list[str], features: dict[str, FeatureScore],
                  missing: dict[str, MissingScore], prediction: FeatureScore | None) -> ClosedWindow:
        w = self.window
        return {"index": self.index, "rows": w.rows, "first_ts": w.first_ts, "last_ts": w.last_ts, "closed_by": by,
                "verdict": verdict, "drifted_features": drifted, "features": features, "missing": missing,
                "prediction": prediction}

    def _scored(self, by: str) -> ClosedWindow:
        rows = self.window.rows
        features = self._score_features(rows)
        missing = self._score_missing(rows)
        prediction = score_numeric(self.reference["prediction"]["probs"], self.window.prediction,
                                   *self.thresholds.prediction(rows))
        drifted = [name for name, e in features.items() if e["drift"]]
        drifted += [f"{name} (missing)" for name, e in missing.items() if e["drift"]]
        return self._document(by, "drift" if drifted or prediction["drift"] else "ok", drifted, features, missing, prediction)

    def _score_features(self, rows: int) -> dict[str, FeatureScore]:
        out: dict[str, FeatureScore] = {}
        for name in self.names:
            if name not in self.window.counts:
                continue
            ref, counts = self.reference["features"][name], self.window.counts[name]
            rule, t, source = self.thresholds.feature(name, ref["kind"], rows)
            if rule == "psi":
                out[name] = score_numeric(ref["probs"], counts, t["psi"], source)
            elif rule == "js_distance":
                out[name] = score_categorical_js(ref["probs"], counts, t["js_distance"], source)
            else:
                out[name] = score_categorical(ref["probs"], counts, t["chi2_pvalue"], t["js_distance"], source)
        return out

    def _score_missing(self, rows: int) -> dict[str, MissingScore]:
        """Missing rates of the raw fields the rows' masks cover (a field the request does not carry, e.g.
        one only a dropped feature used, is never seen missing: scoring it would flag its reference rate)."""
        w = self.window
        return {name: score_missing(rate, w.missing.get(name, 0), w.rows, *self.thresholds.missing(name, rows))
                for name, rate in self.reference.get("missing_rate", {}).items() if name in self.fields}

    def restore(self, windows: list[ClosedWindow], rows: list[RowBatch]) -> None:
        """Continue from persisted state: the closed windows, then the open window's logged rows replayed
        (``(ts, features, scores, missing)`` batches, in order)."""
        self.closed.extend(windows)  # a deque: only the last keep_windows stay
        self.recent.extend(w["verdict"] == "drift" for w in windows if w["verdict"] != "insufficient_data")
        if windows:
            self.index = int(windows[-1]["index"]) + 1
        self.rows_seen = sum(int(w["rows"]) for w in windows)
        hooks, self.on_rows, self.on_close = (self.on_rows, self.on_close), None, None
        try:
            for ts, features, scores, missing in rows:
                self.observe(features, scores, missing, ts)
        finally:
            self.on_rows, self.on_close = hooks

    def report(self) -> dict[str, Any]:
        """The stable JSON document behind ``GET /drift``."""
        self.tick()
        return {
            "window_size": self.config.window_size,
            "window_seconds": self.config.window_seconds,
            "rows_seen": self.rows_seen,
            "open_window_rows": self.window.rows,
            "dropped_batches": self.dropped_batches,
            "windows": list(self.closed),
            "reference": {"features": self.reference["features"], "prediction": self.reference["prediction"]},
            "thresholds": self.thresholds.describe(),
            "alert_after": self.config.alert_after.model_dump() if self.config.alert_after else None,
        }

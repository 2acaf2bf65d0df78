"""Label feedback joined to the prediction log (``join``), ready for the labelled store (``labelled``) and
the window performance (``encoded``). ``LabelSpec`` is the training label the feedback must match;
``serving.feedback`` parses the bodies of ``POST /feedback`` into ids and labels. Plain Python: no Ray.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raygbm.monitoring.labelled import LABELLED_AT, PREDICTION_ID, PROBA, SCORE, WINDOW
from raygbm.monitoring.prediction_log import PredictionLog, arrow_type

ID_FIELD, LABEL_FIELD = "prediction_id", "label"
MAX_ID_CHARS = 128


@dataclass(frozen=True)
class LabelSpec:
    """The training label: its column name, Arrow type, the task and the classes (None: regression)."""

    name: str
    type: str
    task: str
    classes: list[Any] | None

    @property
    def kind(self) -> str:
        t = arrow_type(self.type)
        if pa.types.is_boolean(t):
            return "bool"
        if pa.types.is_integer(t):
            return "integer"
        if pa.types.is_floating(t) or pa.types.is_decimal(t):
            return "number"
        return "string"

    @classmethod
    def of(cls, pre: Any) -> LabelSpec:
        """The label of a fitted ``Preprocessor``."""
        s = pre.schema
        return cls(s.label, s.types.get(s.label, "string"), pre.task_, pre.label_classes_)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "task": self.task, "classes": self.classes}


@dataclass
class Joined:
    """What a join produced: the labelled rows (``None``: none) and the counts ``POST /feedback`` answers."""

    table: pa.Table | None
    accepted: int
    unknown_ids: int
    duplicates: int

    def counts(self) -> dict[str, int]:
        return {"accepted": self.accepted, "unknown_ids": self.unknown_ids, "duplicates": self.duplicates}


def join(log: PredictionLog, ids: pa.Array, labels: pa.Array, spec: LabelSpec, now: float | None = None) -> Joined:
    """Labels joined to the logged predictions. An id not in the log is counted unknown; a label for an id
    labelled before (earlier in this request or in an earlier one) is counted a duplicate, and the last
    one wins (only it is kept here; the store keeps the latest ``_labelled_at``)."""
    now = time.time() if now is None else now
    n = len(ids)
    log.ensure(ids)
    pos = log.lookup(ids)
    known = pos >= 0
    # The last occurrence of each known id in this request.
    last = {}
    for i, (p, k) in enumerate(zip(pos.tolist(), known.tolist())):
        if k:
            last[p] = i
    keep = np.array(sorted(last.values()), dtype=np.int64)
    accepted = int(known.sum())
    repeated = accepted - len(keep)
    if not len(keep):
        return Joined(None, 0, n, 0)
    rows, before = log.rows(pos[keep])
    table = rows.append_column(spec.name, labels.take(pa.array(keep)).cast(arrow_type(spec.type)))
    table = table.append_column(LABELLED_AT, pa.array(np.full(len(keep), now)))
    return Joined(table, accepted, n - accepted, repeated + int(before.sum()))


def encoded(table: pa.Table, spec: LabelSpec) -> tuple[np.ndarray, list[str], np.ndarray, Any]:
    """A joined table as ``WindowPerformance.add_labels`` takes it: (windows, ids, encoded labels, scores)."""
    windows = np.asarray(table.column(WINDOW).fill_null(-1), dtype=np.int64)
    ids = table.column(PREDICTION_ID).to_pylist()
    label = table.column(spec.name)
    if spec.task == "regression":
        return windows, ids, np.asarray(label.cast(pa.float64()), dtype=np.float64), np.asarray(
            table.column(SCORE).fill_null(np.nan), dtype=np.float64)
    codes = pc.index_in(label, value_set=pa.array(spec.classes, label.type))
    y = np.asarray(codes.fill_null(-1), dtype=np.int64)
    if spec.task == "multiclass":
        scores = table.column(PROBA).to_pylist()
    else:
        scores = np.asarray(table.column(SCORE).fill_null(np.nan), dtype=np.float64)
    keep = y >= 0
    return windows[keep], [i for i, k in zip(ids, keep) if k], y[keep], (
        [s for s, k in zip(scores, keep) if k] if isinstance(scores, list) else scores[keep])

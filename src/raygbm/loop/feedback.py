"""Label feedback: ``POST /feedback`` bodies parsed strictly (``parse_json``, ``parse_table``), and labels
joined to the prediction log (``join``), ready for the labelled store (``loop.labelled``).

A body is ``{"prediction_id": ..., "label": ...}``, a list of them, or a CSV / Arrow IPC table with
exactly those two columns. The label is in the training label's own values and type: an integer label
takes integers (not booleans, not 1.0), a string label strings, a float label finite numbers, a boolean
label true/false; a classifier's label must be one of its classes. Errors name the record and the rule,
never a value. Plain Python: no Ray, no FastAPI.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raygbm.loop.labelled import LABELLED_AT, PREDICTION_ID, PROBA, SCORE, WINDOW
from raygbm.loop.prediction_log import PredictionLog, arrow_type
from raygbm.serving.request import MAX_SAFE_INTEGER, RequestError, load_json
from raygbm.serving.tables import ARROW_STREAM, read_table

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


def _check_label(v: Any, spec: LabelSpec, classes: set[Any] | None, where: str) -> None:
    kind = spec.kind
    if kind == "bool":
        ok = isinstance(v, bool)
    elif kind == "integer":
        ok = isinstance(v, int) and not isinstance(v, bool) and abs(v) <= MAX_SAFE_INTEGER
    elif kind == "number":
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) <= 1e300
    else:
        ok = isinstance(v, str)
    if not ok:
        raise RequestError(f"{where}label must be {_KIND_WORDS[kind]} (the training label's type)")
    if classes is not None and v not in classes:
        raise RequestError(f"{where}label is not one of the model's {len(classes)} classes (GET /model lists them)")


_KIND_WORDS = {"bool": "true or false", "integer": "an integer", "number": "a finite number", "string": "a string"}


def _class_set(spec: LabelSpec) -> set[Any] | None:
    return set(spec.classes) if spec.classes is not None and spec.task != "regression" else None


def parse_json(body: bytes, spec: LabelSpec, max_rows: int) -> tuple[pa.Array, pa.Array]:
    """A JSON body → (prediction ids, labels in the training label's type)."""
    obj = load_json(body)
    records = [obj] if isinstance(obj, dict) else obj
    if not isinstance(records, list):
        raise RequestError("body must be a JSON object {prediction_id, label} or a list of them")
    if not records:
        raise RequestError("no labels in the request")
    if len(records) > max_rows:
        raise RequestError(f"{len(records)} labels in one request; the limit is {max_rows}", 413)
    classes = _class_set(spec)
    ids, labels = [], []
    for i, r in enumerate(records):
        where = f"record {i}: " if len(records) > 1 else ""
        if not isinstance(r, dict):
            raise RequestError(f"{where}expected a JSON object")
        if set(r) != {ID_FIELD, LABEL_FIELD}:
            raise RequestError(f"{where}expected exactly the fields {ID_FIELD} and {LABEL_FIELD}")
        pid = r[ID_FIELD]
        if not isinstance(pid, str) or not 0 < len(pid) <= MAX_ID_CHARS:
            raise RequestError(f"{where}{ID_FIELD} must be a string of 1 to {MAX_ID_CHARS} characters")
        _check_label(r[LABEL_FIELD], spec, classes, where)
        ids.append(pid)
        labels.append(r[LABEL_FIELD])
    return pa.array(ids, pa.string()), pa.array(labels, arrow_type(spec.type))


def parse_table(body: bytes, kind: str, spec: LabelSpec, max_rows: int) -> tuple[pa.Array, pa.Array]:
    """A CSV or Arrow IPC body with the columns ``prediction_id`` and ``label`` → (ids, labels)."""
    table = read_table(body, kind, {ID_FIELD: "string", LABEL_FIELD: spec.type}, 8)
    names = table.column_names
    if sorted(names) != sorted([ID_FIELD, LABEL_FIELD]):
        raise RequestError(f"the table must have exactly the columns {ID_FIELD} and {LABEL_FIELD} ({len(names)} given)")
    if table.num_rows == 0:
        raise RequestError("no labels in the request")
    if table.num_rows > max_rows:
        raise RequestError(f"{table.num_rows} rows; the limit is {max_rows}", 413)
    ids, labels = table.column(ID_FIELD).combine_chunks(), table.column(LABEL_FIELD).combine_chunks()
    if pa.types.is_dictionary(ids.type):
        ids = ids.dictionary_decode()
    if pa.types.is_dictionary(labels.type):
        labels = labels.dictionary_decode()
    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        raise RequestError(f"{ID_FIELD} must be a string column")
    if ids.null_count or labels.null_count:
        raise RequestError(f"{ID_FIELD} and {LABEL_FIELD} must have no nulls")
    lengths = pc.utf8_length(ids)
    if pc.min(lengths).as_py() < 1 or pc.max(lengths).as_py() > MAX_ID_CHARS:
        raise RequestError(f"{ID_FIELD} must be strings of 1 to {MAX_ID_CHARS} characters")
    return ids.cast(pa.string()), _table_labels(labels, spec, kind)


def _table_labels(labels: pa.Array, spec: LabelSpec, kind: str) -> pa.Array:
    """A table's label column held to the training label's type (Arrow: the column's own type must be of
    the same kind; CSV was read as that type)."""
    t, want = labels.type, spec.kind
    ok = {"bool": pa.types.is_boolean(t), "integer": pa.types.is_integer(t),
          "number": pa.types.is_integer(t) or pa.types.is_floating(t),
          "string": pa.types.is_string(t) or pa.types.is_large_string(t)}[want]
    if not ok:
        raise RequestError(f"{LABEL_FIELD} must be {_KIND_WORDS[want]} column (the training label's type)")
    if want == "number" and pa.types.is_floating(t) and not pc.all(pc.is_finite(labels)).as_py():
        raise RequestError(f"{LABEL_FIELD}: NaN or infinite value")
    if want in ("integer", "number") and pa.types.is_integer(t):
        lo, hi = pc.min_max(labels).values()
        if max(abs(lo.as_py()), abs(hi.as_py())) > MAX_SAFE_INTEGER:
            raise RequestError(f"{LABEL_FIELD}: number out of range")
    try:
        labels = labels.cast(arrow_type(spec.type))
    except (pa.ArrowException, ValueError):
        raise RequestError(f"{LABEL_FIELD} does not fit the training label's type") from None
    classes = _class_set(spec)
    if classes is not None and not pc.all(pc.is_in(labels, value_set=pa.array(spec.classes, labels.type))).as_py():
        raise RequestError(f"{LABEL_FIELD} has values that are not among the model's {len(classes)} classes "
                           "(GET /model lists them)")
    return labels


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

"""``POST /feedback`` bodies parsed strictly: ``parse_json`` and ``parse_table`` give (prediction ids,
labels) for the monitor's join (``monitoring.feedback``).

A body is ``{"prediction_id": ..., "label": ...}``, a list of them, or a CSV / Arrow IPC table with
exactly those two columns. The label is in the training label's own values and type: an integer label
takes integers (not booleans, not 1.0), a string label strings, a float label finite numbers, a boolean
label true/false; a classifier's label must be one of its classes. Errors name the record and the rule,
never a value. Plain Python: no Ray, no FastAPI.
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raygbm.data.schema import arrow_type
from raygbm.monitoring.feedback import ID_FIELD, LABEL_FIELD, MAX_ID_CHARS, LabelSpec
from raygbm.serving.request import MAX_SAFE_INTEGER, RequestError, load_json
from raygbm.serving.tables import read_table


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

"""Strict parsing of prediction requests, built from the training schema, and bounded body reads
(no Ray, no FastAPI here).

A request body is one JSON object or a list of them, each carrying every raw feature column the model
reads (``null`` is allowed and means missing, as in training). Rejected with a 4xx and a message that
names the model's fields, types and limits but never echoes request content (values, unknown field
names): NaN/Infinity (not JSON), strings for numbers, numbers for string categories, integers beyond
64 bits, unknown fields, missing fields, too many rows. Columns the training data had that the model
does not read (``data.drop``, identifier-like columns the data stage left out, the split key...) are
accepted with any value and ignored, so rows can be sent as users have them. Unknown category values are accepted: they map to
the reserved "unseen" code, and are counted. Table bodies (``/predict/batch``) are held to the same
rules by :meth:`RequestSchema.check_table`, and their width is bounded before they are parsed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raygbm.data.features import Preprocessor
from raygbm.errors import DataError


class RequestError(ValueError):
    """A bad request: ``status`` is the HTTP status to answer with (400, 413, 422)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def _reject_constant(name: str) -> Any:
    raise RequestError(f"{name} is not a valid JSON number; send null for a missing value", 400)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # json.loads would keep the last value silently
        raise RequestError("a JSON object in the body repeats a key", 400)
    return obj


def load_json(body: bytes | str) -> Any:
    """A JSON body strictly: NaN/Infinity (not JSON) are a 400, as are a key repeated in one object, bad
    UTF-8 and deep nesting."""
    try:
        return json.loads(body, parse_constant=_reject_constant, object_pairs_hook=_object)
    except RequestError:
        raise
    except (ValueError, UnicodeDecodeError):
        raise RequestError("body is not valid JSON", 400) from None
    except RecursionError:
        raise RequestError("body is nested too deeply", 400) from None


def _kind(arrow_type: str) -> str:
    t = arrow_type.lower()
    if t.startswith("timestamp") or t.startswith("date"):
        return "timestamp"
    if "string" in t or t == "utf8":
        return "string"
    if t == "bool":
        return "bool"
    if t.startswith("int") or t.startswith("uint"):
        return "integer"
    return "number"


MAX_SAFE_INTEGER = 2**53  # integers beyond this do not survive float64 exactly (ids, labels)
# A feature's integers: any 64-bit value. Beyond 2^53 the float64 feature is the nearest float, as in
# training (the data stage casts int64/uint64 columns the same way), so the score is the same.
MAX_INTEGER = 2**64
EXTRA_COLUMNS = 64  # columns a table body may carry beyond the model's fields and ignored columns (the label, ...)


@dataclass
class Parsed:
    features: np.ndarray  # rows × model features, float64
    unseen: int  # category values never seen in training (mapped to the "unseen" code)
    missing: np.ndarray  # rows × fields: null in the request (for the drift monitor's missing rates)
    single: bool = False  # the body was one object (answered with one object)


class RequestSchema:
    """What a request must look like for one preprocessor."""

    def __init__(self, pre: Preprocessor, max_rows: int = 10_000):
        self.pre = pre
        self.max_rows = max_rows
        s = pre.schema
        self.fields: dict[str, str] = {c: _kind(s.types.get(c, "double")) for c in pre.input_columns}
        # The training data's columns the model leaves out: accepted and ignored (see the module docstring).
        self.ignored: frozenset[str] = frozenset(c for c in s.ignored if c not in self.fields)
        self.categorical = set(s.categorical)
        self._codes = pre.category_codes  # value → code per categorical column

    # ---- parsing

    def parse(self, body: bytes) -> Parsed:
        obj = load_json(body)
        single = isinstance(obj, dict)
        if single:
            records = [obj]
        elif isinstance(obj, list):
            records = obj
        else:
            raise RequestError("body must be a JSON object (one record) or a list of objects", 422)
        return self.parse_records(records, single)

    def parse_records(self, records: list[Any], single: bool = False) -> Parsed:
        """Records already decoded from JSON (or built from another format's values with JSON's types:
        None, bool, int, float, str), checked and transformed."""
        if not records:
            raise RequestError("no records in the request", 422)
        if len(records) > self.max_rows:
            raise RequestError(f"{len(records)} records in one request; the limit is {self.max_rows}", 413)
        unseen = 0
        for i, r in enumerate(records):
            unseen += self._check(r, i if len(records) > 1 else None)
        names = list(self.fields)
        missing = np.array([[r[name] is None for name in names] for r in records], dtype=bool).reshape(len(records), len(names))
        try:
            features = self.pre.transform_records(records)
        except (ValueError, OverflowError, OSError, DataError) as exc:  # e.g. a time no calendar has
            raise RequestError(f"a record could not be transformed: {type(exc).__name__}") from None
        return Parsed(features, unseen, missing, single)

    def _check(self, r: Any, index: int | None) -> int:
        """One record's fields and types; returns how many of its category values are unseen."""
        where = f"record {index}: " if index is not None else ""
        if not isinstance(r, dict):
            raise RequestError(f"{where}expected a JSON object, got {_json_type(r)}")
        extra = sum(k not in self.fields and k not in self.ignored for k in r)
        if extra:  # counted, never named: a name is request content
            raise RequestError(f"{where}{extra} unknown field(s); GET /model lists the fields")
        missing = [k for k in self.fields if k not in r]
        if missing:
            raise RequestError(f"{where}missing field(s): {', '.join(missing[:10])}")
        unseen = 0
        for name, kind in self.fields.items():
            v = r[name]
            if v is None:
                continue
            if kind in ("number", "integer", "bool") and name not in self.categorical:
                _check_number(v, kind, f"{where}field {name!r}")
            elif kind == "timestamp":
                _check_time(v, f"{where}field {name!r}")
            else:
                _check_category(v, kind, f"{where}field {name!r}")
                unseen += int(name in self._codes and v not in self._codes[name])
        return unseen

    # ---- tables

    @property
    def max_columns(self) -> int:
        return len(self.fields) + len(self.ignored) + EXTRA_COLUMNS

    def check_width(self, columns: int) -> None:
        """A table body's column count, checked before anything is allocated per column."""
        if columns > self.max_columns:
            raise RequestError(f"{columns} columns; the limit is {self.max_columns} (the model reads "
                               f"{len(self.fields)} fields)", 413)

    def check_table(self, table: pa.Table, max_rows: int) -> None:
        """A table body by the rules of JSON records: every field once, numbers finite. Columns the model
        does not read are ignored (a table may carry ids or the label); the column types are checked where
        the bundle transforms the table."""
        self.check_width(table.num_columns)
        if table.num_rows > max_rows:
            raise RequestError(f"{table.num_rows} rows; the limit is {max_rows}", 413)
        self.check_names(table.column_names)
        for name, kind in self.fields.items():
            if name not in self.categorical and kind in ("number", "integer", "bool"):
                _check_numbers(table.column(name), f"field {name!r}")

    def check_names(self, names: list[str], what: str = "field") -> None:
        """Each of the model's fields exactly once among ``names`` (a table's columns, a request's tensors)."""
        duplicated = [k for k in self.fields if names.count(k) > 1]
        if duplicated:
            raise RequestError(f"duplicated {what}(s): {', '.join(duplicated[:10])}")
        missing = [k for k in self.fields if k not in names]
        if missing:
            raise RequestError(f"missing {what}(s): {', '.join(missing[:10])}")

    # ---- documentation

    def json_schema(self) -> dict[str, Any]:
        """JSON Schema of one record, for OpenAPI (allowed categories listed)."""
        props: dict[str, Any] = {}
        for name, kind in self.fields.items():
            if name in self.categorical:
                base = {"string": "string", "integer": "integer", "bool": "boolean"}.get(kind, "number")
                known = self.pre.categories_.get(name, [])
                props[name] = {"type": [base, "null"], "description": f"categorical; {len(known)} known values "
                               "(others are accepted as unseen)", "examples": known[:20]}
            elif kind == "timestamp":
                props[name] = {"type": ["string", "number", "null"], "format": "date-time",
                               "description": "ISO 8601 time or epoch seconds"}
            else:
                props[name] = {"type": ["number", "null"], "description": f"numeric ({kind}); null = missing"}
        record = {"type": "object", "properties": props, "required": list(self.fields), "additionalProperties": False}
        if self.ignored:
            # Not in "properties", which clients read as the model's fields: a pattern of their exact names.
            names = "|".join(_regex_literal(n) for n in sorted(self.ignored))
            record["patternProperties"] = {f"^(?:{names})$": {
                "description": "a column of the training data the model does not read: accepted and ignored"}}
        return {"oneOf": [record, {"type": "array", "items": record, "minItems": 1, "maxItems": self.max_rows}]}


def _regex_literal(name: str) -> str:
    """``name`` as a regular expression matching itself, in the syntax JSON Schema's (ECMA 262) and
    Python's share: ASCII other than letters, digits and ``_`` as ``\\uXXXX``."""
    return "".join(c if not c.isascii() or c.isalnum() or c == "_" else f"\\u{ord(c):04x}" for c in name)


def _check_number(v: Any, kind: str, what: str) -> None:
    if isinstance(v, bool) and kind != "bool" or not isinstance(v, (int, float)):
        raise RequestError(f"{what}: expected a number or null, got {_json_type(v)}")
    if isinstance(v, float) and not math.isfinite(v):
        raise RequestError(f"{what}: number out of range")
    if isinstance(v, int) and abs(v) > MAX_INTEGER:
        raise RequestError(f"{what}: number out of range")


def _check_numbers(col: pa.ChunkedArray, what: str) -> None:
    """A numeric column: no NaN or infinity (null is missing). Integer columns hold 64-bit values, all
    accepted (see ``MAX_INTEGER``)."""
    if pa.types.is_floating(col.type):
        if col.null_count < len(col) and not pc.all(pc.is_finite(col)).as_py():
            raise RequestError(f"{what}: NaN or infinite value; send null for a missing value")


def _check_time(v: Any, what: str) -> None:
    if isinstance(v, str):
        try:
            datetime.fromisoformat(v)
        except ValueError:
            raise RequestError(f"{what}: expected an ISO 8601 time") from None
    elif isinstance(v, bool) or not isinstance(v, (int, float)) or isinstance(v, float) and not math.isfinite(v):
        raise RequestError(f"{what}: expected an ISO 8601 time or epoch seconds, got {_json_type(v)}")
    elif not -62135596800 <= v <= 253402300799:  # years 1 to 9999
        raise RequestError(f"{what}: epoch seconds out of range")


def _check_category(v: Any, kind: str, what: str) -> None:
    """A categorical value of the training column's own type."""
    ok = isinstance(v, str) if kind == "string" else (
        isinstance(v, bool) if kind == "bool" else isinstance(v, int) and not isinstance(v, bool))
    if not ok:
        want = {"string": "a string", "bool": "true/false", "integer": "an integer"}.get(kind, "a number")
        raise RequestError(f"{what}: expected {want} or null, got {_json_type(v)}")


async def read_body(request: Any, limit: int) -> bytes:
    """The body of a Starlette request, refused with 413 past ``limit`` bytes: on the declared
    Content-Length first, then while reading (Serve itself sets no limit)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise RequestError("bad Content-Length", 400)
        if len(declared) > 15 or int(declared) > limit:
            raise RequestError(f"body larger than {limit} bytes", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"body larger than {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"

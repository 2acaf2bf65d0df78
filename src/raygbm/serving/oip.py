"""The Open Inference Protocol (KServe V2, also spoken by Triton and MLServer) over the served model:
inference requests parsed into the rows ``/predict`` scores, and the protocol's answers built. No Ray and
no FastAPI here: ``serving.app`` routes ``/v2/...`` to these functions.

An inference request (``POST /v2/models/{name}/infer``) carries its input tensors in one of two forms:

- one tensor per raw feature (``GET /v2/models/{name}`` lists them), shape ``[n]`` or ``[n, 1]``, with a
  datatype of the feature's family: FP16/32/64 or (U)INT8..64 for numbers, (U)INT for integer categories,
  BOOL for booleans, BYTES for string categories and for times (ISO 8601; numbers are epoch seconds);
- one BYTES tensor named ``records`` whose elements are JSON texts, each a record or a list of records
  (the body of ``/predict``).

Tensor data comes as JSON (``data``, flat or ``[[v], ...]`` for ``[n, 1]``; ``null`` is a missing value)
or through the binary tensor data extension (the ``Inference-Header-Content-Length`` header: the JSON
header, then each input's bytes, little-endian; BYTES elements with a 4-byte length prefix). Binary
tensors have no null: a NaN in a floating-point tensor is a missing value there (JSON has no NaN).
Values become records with JSON's types, which then pass the very checks of ``/predict``
(``RequestSchema.parse_records``): strict types, finite numbers, integers within ±2^53, the row limit.
Errors are 4xx that name the model's inputs and the protocol's keys but never echo request content.
Inputs named after columns of the training data the model does not read (``RequestSchema.ignored``) are
accepted, checked as tensors, and ignored.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from raygbm.serving.model_slot import ServedModel
from raygbm.serving.request import Parsed, RequestError, RequestSchema, load_json

FLOATS = {"FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}
INTEGERS = {"INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
            "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8"}
DATATYPES = {**FLOATS, **INTEGERS, "BOOL": "|b1", "BYTES": ""}  # the datatypes read (not BF16)
RECORDS_INPUT = "records"
HEADER_LENGTH = "inference-header-content-length"
MAX_ID_CHARS = 256
REQUEST_KEYS = ("id", "parameters", "inputs", "outputs")


@dataclass
class InferRequest:
    parsed: Parsed  # the rows, as /predict parses them
    id: str | None  # the request's id, echoed in the answer
    outputs: list[str] | None  # the outputs asked for; None: all
    records: list[Any] | None = None  # the rows as records (what the prediction log keeps of them)


@dataclass
class _Input:
    label: str  # how messages name it: the feature's name, or its position for a name the model lacks
    name: str
    datatype: str
    rows: int
    data: Any  # the JSON "data" (None when the data is binary)
    raw: bytes | None  # the binary tensor data, or None


# ---------------------------------------------------------------------------------------------- metadata


def declared_datatype(kind: str, categorical: bool) -> str:
    """The datatype a feature's input is declared with (``RequestSchema.fields`` kinds)."""
    if kind in ("string", "timestamp"):
        return "BYTES"
    if kind == "bool":
        return "BOOL"
    return "INT64" if categorical or kind == "integer" else "FP64"


def accepted_datatypes(kind: str, categorical: bool) -> set[str]:
    """Every datatype a feature's input may have: the declared one's family."""
    numeric = set(FLOATS) | set(INTEGERS)
    if kind == "string":
        return {"BYTES"}
    if kind == "timestamp":
        return {"BYTES"} | numeric
    if kind == "bool":
        return {"BOOL"} if categorical else {"BOOL"} | numeric
    return set(INTEGERS) if categorical else numeric


def _prediction_datatype(model: ServedModel) -> str:
    if model.bundle.task == "regression":
        return "FP64"
    classes = model.bundle.preprocessor.label_classes_ or []
    if classes and all(isinstance(c, bool) for c in classes):
        return "BOOL"
    if classes and all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return "INT64"
    if classes and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in classes):
        return "FP64"
    return "BYTES"


def output_specs(model: ServedModel) -> dict[str, tuple[str, list[int]]]:
    """Each output's datatype and shape per row (``[]`` for one value, ``[k]`` for k class probabilities)."""
    specs = {"prediction": (_prediction_datatype(model), []), "score": ("FP64", []), "prediction_id": ("BYTES", [])}
    if model.bundle.task == "multiclass":
        specs["probabilities"] = ("FP64", [len(model.bundle.preprocessor.label_classes_ or [])])
    return specs


def model_metadata(model: ServedModel) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the inputs (one per raw feature; -1 is any number of rows) and outputs."""
    s = model.schema
    inputs = [{"name": n, "datatype": declared_datatype(kind, n in s.categorical), "shape": [-1]}
              for n, kind in s.fields.items()]
    outputs = [{"name": n, "datatype": dt, "shape": [-1, *tail]} for n, (dt, tail) in output_specs(model).items()]
    return {"name": model.name, "versions": [model.version], "platform": "lightgbm", "inputs": inputs,
            "outputs": outputs}


def server_metadata() -> dict[str, Any]:
    from raygbm._version import __version__

    return {"name": "raygbm", "version": __version__, "extensions": ["binary_tensor_data"]}


def check_served(model: ServedModel, name: str, version: str | None) -> None:
    """404 unless the URL names the served model (and its version, when it names one)."""
    if name != model.name:
        raise RequestError(f"unknown model; this endpoint serves {model.name!r}", 404)
    if version is not None and version != model.version:
        raise RequestError(f"version not served; this endpoint serves {model.name!r} version {model.version}", 404)


# ---------------------------------------------------------------------------------------------- requests


def parse_infer(body: bytes, headers: Mapping[str, str], model: ServedModel) -> InferRequest:
    """An inference request's body (and its headers: the binary extension's header length, the encoding)."""
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", ""):
        raise RequestError("compressed request bodies are not accepted; send Content-Encoding: identity", 415)
    head, binary = _split(body, headers.get(HEADER_LENGTH))
    doc = load_json(head)
    if not isinstance(doc, dict):
        raise RequestError('body must be a JSON object with "inputs"')
    unknown = sum(k not in REQUEST_KEYS for k in doc)
    if unknown:
        raise RequestError(f"{unknown} unknown key(s); an inference request has {', '.join(REQUEST_KEYS)}")
    if not isinstance(doc.get("parameters", {}), dict):
        raise RequestError('"parameters" must be an object')
    request_id = _request_id(doc.get("id"))
    outputs = _outputs(doc.get("outputs"), output_specs(model))
    inputs = _inputs(doc.get("inputs"), binary, model.schema)
    if len(inputs) == 1 and inputs[0].name == RECORDS_INPUT and RECORDS_INPUT not in model.schema.fields:
        records = _json_records(inputs[0], model.schema.max_rows)
    else:
        records = _feature_records(inputs, model.schema)
    return InferRequest(model.schema.parse_records(records), request_id, outputs, records)


def _request_id(v: Any) -> str | None:
    """The request's id, which the answer echoes: printable text that encodes (no lone surrogate)."""
    if v is not None and not (isinstance(v, str) and len(v) <= MAX_ID_CHARS and v.isprintable()
                              and v.encode("utf-8", "replace").decode("utf-8") == v):
        raise RequestError(f'"id" must be a string of at most {MAX_ID_CHARS} printable characters')
    return v


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(the JSON header, the binary tensor data after it)."""
    if header_length is None:
        return body, b""
    n = header_length.strip()
    if not (n.isascii() and n.isdigit()) or len(n) > 15 or int(n) > len(body):
        raise RequestError(f"bad {HEADER_LENGTH} header: it must be the JSON header's length in bytes", 400)
    return body[:int(n)], body[int(n):]


def _outputs(specs: Any, available: Mapping[str, Any]) -> list[str] | None:
    if specs is None:
        return None
    if not isinstance(specs, list) or not all(isinstance(s, dict) and isinstance(s.get("name"), str) for s in specs):
        raise RequestError('"outputs" must be a list of objects with a "name"')
    names = list(dict.fromkeys(s["name"] for s in specs))
    unknown = sum(n not in available for n in names)
    if unknown:
        raise RequestError(f"{unknown} unknown output(s); the model's outputs are {', '.join(available)}")
    return names or None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _inputs(specs: Any, binary: bytes, schema: RequestSchema) -> list[_Input]:
    """The input tensors' descriptions, each with its JSON data or its slice of the binary data."""
    if not isinstance(specs, list) or not specs:
        raise RequestError('"inputs" must be a non-empty list of tensors')
    if len(specs) > schema.max_columns:
        raise RequestError(f"{len(specs)} inputs; the model reads {len(schema.fields)}", 413)
    out, offset = [], 0
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise RequestError(f"input {i}: expected an object")
        name, datatype = spec.get("name"), spec.get("datatype")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise RequestError(f'input {i}: "name" and "datatype" must be strings')
        label = repr(name) if name in schema.fields or name in schema.ignored or name == RECORDS_INPUT else str(i)
        params = spec.get("parameters", {})
        if not isinstance(params, dict):
            raise RequestError(f'input {label}: "parameters" must be an object')
        if "shared_memory_region" in params:
            raise RequestError(f"input {label}: shared memory is not supported")
        rows = _rows(spec.get("shape"), label, schema.max_rows)
        size = params.get("binary_data_size")
        if size is None:
            if "data" not in spec:
                raise RequestError(f'input {label}: no "data" (nor binary_data_size)')
            out.append(_Input(label, name, datatype, rows, spec["data"], None))
            continue
        if "data" in spec:
            raise RequestError(f'input {label}: both "data" and binary_data_size')
        if not _is_int(size) or size < 0 or offset + size > len(binary):
            raise RequestError(f"input {label}: binary_data_size runs past the end of the body", 400)
        out.append(_Input(label, name, datatype, rows, None, binary[offset:offset + size]))
        offset += size
    if offset != len(binary):
        raise RequestError("the body holds more binary data than the inputs' binary_data_size", 400)
    return out


def _rows(shape: Any, label: str, max_rows: int) -> int:
    """The rows of an input of shape ``[n]`` or ``[n, 1]``."""
    if not (isinstance(shape, list) and len(shape) in (1, 2) and all(_is_int(d) and d >= 0 for d in shape)
            and shape[1:] in ([], [1])):
        raise RequestError(f"input {label}: shape must be [n] or [n, 1]")
    if shape[0] == 0:
        raise RequestError(f"input {label}: no rows")
    if shape[0] > max_rows:
        raise RequestError(f"input {label}: more rows than the limit of {max_rows}", 413)
    return shape[0]


# ---------------------------------------------------------------------------------------------- values


def _feature_records(inputs: list[_Input], schema: RequestSchema) -> list[dict[str, Any]]:
    """One input per feature → records of the features' values."""
    names = [t.name for t in inputs]
    unknown = sum(n not in schema.fields and n not in schema.ignored for n in names)
    if unknown:
        raise RequestError(f"{unknown} unknown input(s); the model's metadata lists its inputs (or send one "
                           f'BYTES input "{RECORDS_INPUT}" of JSON records)')
    schema.check_names(names, "input")
    if len({t.rows for t in inputs}) > 1:
        raise RequestError("the inputs' shapes have different numbers of rows")
    columns = {}
    for t in inputs:
        if t.name in schema.ignored:  # a column the model does not read: any datatype, values checked and dropped
            if t.datatype not in DATATYPES:
                raise RequestError(f"input {t.label}: unknown datatype; the protocol's are {', '.join(DATATYPES)}")
            _values(t)
            continue
        kind, categorical = schema.fields[t.name], t.name in schema.categorical
        if t.datatype not in accepted_datatypes(kind, categorical):
            family = ", ".join(sorted(accepted_datatypes(kind, categorical)))
            raise RequestError(f"input {t.label}: wrong datatype; this feature takes {family}")
        columns[t.name] = _values(t)
    n = inputs[0].rows
    return [{name: columns[name][i] for name in schema.fields} for i in range(n)]


def _json_records(t: _Input, max_rows: int) -> list[Any]:
    """The ``records`` input: each element a JSON record or a list of them."""
    if t.datatype != "BYTES":
        raise RequestError(f'input "{RECORDS_INPUT}": datatype must be BYTES (JSON texts)')
    records: list[Any] = []
    for text in _values(t):
        obj = load_json(text) if text is not None else None
        if isinstance(obj, dict):
            records.append(obj)
        elif isinstance(obj, list):
            records.extend(obj)
        else:
            raise RequestError(f'input "{RECORDS_INPUT}": each element must be a JSON object or a list of objects')
        if len(records) > max_rows:
            break  # enough to be refused by the row limit
    return records


def _values(t: _Input) -> list[Any]:
    """An input's values with JSON's types (None for a missing value)."""
    if t.raw is not None:
        return _binary_values(t)
    data = t.data
    if not isinstance(data, list):
        raise RequestError(f'input {t.label}: "data" must be a list')
    if data and all(isinstance(v, list) for v in data):  # [[v], [v], ...]: shape [n, 1] nested
        if not all(len(v) == 1 for v in data):
            raise RequestError(f'input {t.label}: nested "data" must hold one value per row')
        data = [v[0] for v in data]
    if len(data) != t.rows:
        raise RequestError(f'input {t.label}: "data" holds a different number of values than its shape')
    return _json_values(data, t)


def _json_values(data: list[Any], t: _Input) -> list[Any]:
    dt = t.datatype
    ok = (lambda v: isinstance(v, str)) if dt == "BYTES" else (lambda v: isinstance(v, bool)) if dt == "BOOL" \
        else _is_int if dt in INTEGERS else (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
    if not all(v is None or ok(v) for v in data):
        want = {"BYTES": "strings", "BOOL": "true/false"}.get(dt, "integers" if dt in INTEGERS else "numbers")
        raise RequestError(f"input {t.label}: {dt} data must be {want} or null")
    if dt in INTEGERS:
        info = np.iinfo(np.dtype(INTEGERS[dt]))
        if not all(v is None or info.min <= v <= info.max for v in data):
            raise RequestError(f"input {t.label}: a value out of {dt}'s range")
    elif dt in FLOATS:
        try:  # at the tensor's precision, as its binary form would have been (null → NaN → None)
            with np.errstate(over="ignore"):
                values = np.array([math.nan if v is None else v for v in data], np.float64).astype(FLOATS[dt])
        except (OverflowError, ValueError):  # an integer beyond any float
            values = np.array([math.inf])
        if np.isinf(values).any():
            raise RequestError(f"input {t.label}: a value out of {dt}'s range")
        data = [None if v != v else v for v in values.astype(np.float64).tolist()]
    return data


def _binary_values(t: _Input) -> list[Any]:
    raw, dt = t.raw or b"", t.datatype
    if dt == "BYTES":
        return _binary_strings(raw, t)
    dtype = np.dtype(DATATYPES[dt])
    if len(raw) != t.rows * dtype.itemsize:
        raise RequestError(f"input {t.label}: binary data of a different size than its shape and datatype")
    if dt == "BOOL":
        if any(b > 1 for b in raw):
            raise RequestError(f"input {t.label}: BOOL bytes must be 0 or 1")
        return [b == 1 for b in raw]
    values = np.frombuffer(raw, dtype)
    if dt in INTEGERS:
        return values.tolist()
    if np.isinf(values).any():
        raise RequestError(f"input {t.label}: infinite value (a NaN is a missing value)")
    return [None if v != v else v for v in values.astype(np.float64).tolist()]


def _binary_strings(raw: bytes, t: _Input) -> list[str]:
    """BYTES binary data: each element a 4-byte little-endian length, then that many bytes of UTF-8."""
    out, pos = [], 0
    while pos < len(raw) and len(out) <= t.rows:
        if pos + 4 > len(raw):
            raise RequestError(f"input {t.label}: BYTES binary data cut short")
        (size,) = struct.unpack_from("<I", raw, pos)
        if pos + 4 + size > len(raw):
            raise RequestError(f"input {t.label}: BYTES binary data cut short")
        out.append(raw[pos + 4:pos + 4 + size])
        pos += 4 + size
    if len(out) != t.rows or pos != len(raw):
        raise RequestError(f"input {t.label}: binary data holds a different number of elements than its shape")
    try:
        return [b.decode("utf-8") for b in out]
    except UnicodeDecodeError:
        raise RequestError(f"input {t.label}: BYTES elements must be UTF-8 text") from None


# ---------------------------------------------------------------------------------------------- answers


def infer_response(model: ServedModel, results: list[dict[str, Any]], request: InferRequest) -> dict[str, Any]:
    """The inference response for ``model.results(scores)`` (JSON tensors, whatever the request's
    ``binary_data_output`` asked: clients read both)."""
    specs = output_specs(model)
    n = len(results)
    prediction = [r["prediction"] for r in results]
    data = {"prediction": [str(p) for p in prediction] if specs["prediction"][0] == "BYTES" else prediction,
            "score": [r["score"] for r in results], "prediction_id": [r["prediction_id"] for r in results]}
    if "probabilities" in specs:
        data["probabilities"] = [p for r in results for p in r["probabilities"]]
    doc: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if request.id is not None:
        doc["id"] = request.id
    doc["outputs"] = [{"name": name, "datatype": specs[name][0], "shape": [n, *specs[name][1]], "data": data[name]}
                      for name in request.outputs or specs]
    return doc


INFER_BODY = {"required": True, "content": {"application/json": {"schema": {
    "description": "An Open Inference Protocol inference request: one input per feature (GET /v2/models/{name} "
                   f"lists them) or one BYTES input \"{RECORDS_INPUT}\" of JSON records",
    "type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string", "maxLength": MAX_ID_CHARS},
        "parameters": {"type": "object"},
        "inputs": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "shape", "datatype"], "properties": {
                "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
                "datatype": {"type": "string", "enum": list(DATATYPES)}, "parameters": {"type": "object"},
                "data": {"type": "array"}}}},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"],
                                               "properties": {"name": {"type": "string"}}}}}}}}}

"""Tables in request and response bodies of ``/predict/batch``: Arrow IPC streams and CSV."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from raygbm.data.schema import arrow_type
from raygbm.serving.request import RequestError

ARROW_STREAM = "application/vnd.apache.arrow.stream"
CSV = "text/csv"
TABLE_TYPES = (ARROW_STREAM, CSV)


def content_type(headers: Mapping[str, str]) -> str:
    """The media type of a request, without parameters, lower case."""
    return headers.get("content-type", "").split(";")[0].strip().lower()


def read_table(body: bytes, kind: str, types: dict[str, str], max_columns: int) -> pa.Table:
    """An Arrow IPC stream or CSV body as a table (CSV columns read with the training types). The width is
    checked first, from the Arrow schema message or the CSV header line, so a body with a huge number of
    columns is refused before anything is allocated per column."""
    try:
        table = _read_arrow(body, max_columns) if kind == ARROW_STREAM else _read_csv(body, types, max_columns)
        table.column_names  # noqa: B018  pyarrow decodes names lazily: a name that is not UTF-8 raises here
        return table
    except (pa.ArrowException, OSError, ValueError, UnicodeError) as exc:
        if isinstance(exc, RequestError):
            raise
        raise RequestError(_why_unreadable(kind, exc), 400) from None


def _read_arrow(body: bytes, max_columns: int) -> pa.Table:
    with pa.ipc.open_stream(body) as reader:
        _check_width(len(reader.schema), max_columns)
        table = reader.read_all()
    # The IPC reader trusts the body's buffer sizes and offsets: computing on a damaged stream can read
    # out of bounds (a crash of the replica), so check every array before anything uses it.
    table.validate(full=True)
    return table


def _read_csv(body: bytes, types: dict[str, str], max_columns: int) -> pa.Table:
    import pyarrow.csv as pacsv

    header = body[:body.find(b"\n")] if b"\n" in body else body
    _check_width(header.count(b",") + 1, max_columns)
    column_types = {}
    for c, t in types.items():
        try:
            column_types[c] = arrow_type(t)
        except ValueError:
            continue  # a type with no text form: let the CSV reader infer it
        if pa.types.is_timestamp(column_types[c]):
            del column_types[c]  # inferred, zoned or not; the preprocessor converts it to the training zone
    return pacsv.read_csv(pa.BufferReader(body), convert_options=pacsv.ConvertOptions(column_types=column_types))


def _check_width(columns: int, max_columns: int) -> None:
    if columns > max_columns:
        raise RequestError(f"{columns} columns; the limit is {max_columns}", 413)


_CSV_SAFE = [  # what of pyarrow's CSV errors can be said without echoing the body
    (re.compile(r"Expected (\d+) columns, got (\d+)"), "expected {0} columns, got {1}"),
    (re.compile(r"In CSV column #(\d+): CSV conversion error to (\w+)"), "column {0} is not all {1}"),
    (re.compile(r"CSV file had duplicate column names|Duplicate column"), "duplicated column names"),
]


def _why_unreadable(kind: str, exc: BaseException) -> str:
    """Why a body could not be read, without any of its content (pyarrow's messages quote the bad row)."""
    if kind == ARROW_STREAM:
        return "body is not a valid Arrow IPC stream"
    text = str(exc)
    for pattern, say in _CSV_SAFE:
        m = pattern.search(text)
        if m:
            return "body is not a valid CSV table: " + say.format(*m.groups())
    if isinstance(exc, UnicodeError) or "UTF8" in text or "utf8" in text.lower():
        return "body is not a valid CSV table: not UTF-8 text"
    return "body is not a valid CSV table"


def write_table(table: pa.Table, kind: str) -> bytes:
    sink = pa.BufferOutputStream()
    if kind == ARROW_STREAM:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    else:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, sink)
    return sink.getvalue().to_pybytes()


# Table bodies at least this large give their memory back once answered (``release_memory``).
LARGE_BODY_BYTES = 1_000_000


@functools.cache
def _libc() -> Any:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_memory() -> None:
    """Return the memory freed after a large request to the operating system.

    Arrow's allocator (mimalloc) and glibc's malloc both keep freed pages for reuse, glibc in one arena
    per thread that parsed or scored a table: without this, a replica's resident memory stays near the
    sum of its largest requests' peaks.
    """
    pa.default_memory_pool().release_unused()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


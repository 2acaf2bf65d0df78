"""Tables in request and response bodies of ``/predict/batch``: Arrow IPC streams and CSV."""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa

from raygbm.serving.request import RequestError

ARROW_STREAM = "application/vnd.apache.arrow.stream"
CSV = "text/csv"
TABLE_TYPES = (ARROW_STREAM, CSV)


def content_type(headers: Mapping[str, str]) -> str:
    """The media type of a request, without parameters, lower case."""
    return headers.get("content-type", "").split(";")[0].strip().lower()


def read_table(body: bytes, kind: str, types: dict[str, str]) -> pa.Table:
    """An Arrow IPC stream or CSV body as a table; CSV columns are read with the training types."""
    try:
        if kind == ARROW_STREAM:
            with pa.ipc.open_stream(body) as reader:
                return reader.read_all()
        import pyarrow.csv as pacsv

        column_types = {}
        for c, t in types.items():
            try:
                column_types[c] = pa.type_for_alias(t)
            except ValueError:
                pass  # e.g. timestamps with a zone: let the CSV reader infer them
        return pacsv.read_csv(pa.BufferReader(body), convert_options=pacsv.ConvertOptions(column_types=column_types))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError, ValueError) as exc:
        raise RequestError(f"body is not a valid {'Arrow IPC stream' if kind == ARROW_STREAM else 'CSV table'}: "
                           f"{str(exc).splitlines()[0][:200]}", 400) from None


def write_table(table: pa.Table, kind: str) -> bytes:
    sink = pa.BufferOutputStream()
    if kind == ARROW_STREAM:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    else:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, sink)
    return sink.getvalue().to_pybytes()

"""``raygbm feedback``: labels from a file sent to a running endpoint's ``POST /feedback`` (Arrow IPC, one
request per chunk), with ``Authorization: Bearer $RAYGBM_ENDPOINT_TOKEN`` when that is set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from raygbm.errors import DataError
from raygbm.loop.feedback import ID_FIELD, LABEL_FIELD

COUNTS = ("accepted", "unknown_ids", "duplicates")


def read_labels(source: str | Path) -> pa.Table:
    """The ``prediction_id`` and ``label`` columns of a Parquet file or folder, or of a CSV file."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(source)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    try:
        if path.is_file() and path.suffix.lower() == ".csv":
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types={ID_FIELD: pa.string()}))
        else:
            table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet or CSV table ({type(exc).__name__})") from None
    missing = [c for c in (ID_FIELD, LABEL_FIELD) if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (need {ID_FIELD} and {LABEL_FIELD})")
    return table.select([ID_FIELD, LABEL_FIELD])


def send_feedback(source: str | Path, url: str, *, chunk_rows: int = 100_000, timeout_s: float = 300) -> dict[str, Any]:
    """Every label of ``source`` posted to ``url``/feedback; the counts summed over the requests."""
    import urllib.error
    import urllib.request

    from raygbm.predict import endpoint_auth

    table = read_labels(source)
    headers = {"content-type": "application/vnd.apache.arrow.stream", **endpoint_auth()}
    totals = {k: 0 for k in COUNTS}
    for start in range(0, max(table.num_rows, 1), chunk_rows):
        chunk = table.slice(start, chunk_rows)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, chunk.schema) as w:
            w.write_table(chunk)
        req = urllib.request.Request(url.rstrip("/") + "/feedback", data=sink.getvalue().to_pybytes(), method="POST",
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as r:
                doc = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            try:
                msg = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                msg = exc.reason
            raise DataError(f"rows {start}-{start + chunk.num_rows - 1}: the endpoint answered {exc.code}: {msg}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise DataError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
        for k in COUNTS:
            totals[k] += int(doc.get(k, 0))
    return {**totals, "rows": table.num_rows}

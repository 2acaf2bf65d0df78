"""The one client of a running endpoint, for the CLI and the loop: JSON reads (``GET /drift``,
``GET /retrain``) and Arrow IPC posts (``POST /predict/batch``, ``POST /feedback``), each with
``Authorization: Bearer $RAYGBM_ENDPOINT_TOKEN`` when that is set. Every failure is a ``DataError`` of one
line naming the route and the endpoint's own error message (never a traceback)."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raygbm.errors import DataError
from raygbm.monitoring.feedback import ID_FIELD, LABEL_FIELD

ARROW_STREAM = "application/vnd.apache.arrow.stream"
COUNTS = ("accepted", "unknown_ids", "duplicates")


def endpoint_auth() -> dict[str, str]:
    """``Authorization: Bearer $RAYGBM_ENDPOINT_TOKEN`` for a client of the endpoint, when that is set."""
    token = os.environ.get("RAYGBM_ENDPOINT_TOKEN")
    return {"authorization": f"Bearer {token}"} if token else {}


def arrow_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


class Endpoint:
    """A running endpoint at ``url`` (its base URL)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, timeout_s: float = 300):
        self.url = url.rstrip("/")
        self.headers = endpoint_auth() if headers is None else headers
        self.timeout_s = timeout_s

    def _call(self, route: str, body: bytes | None, headers: dict[str, str], what: str,
              timeout_s: float | None = None) -> tuple[bytes, Any]:
        req = urllib.request.Request(self.url + route, data=body, method="POST" if body is not None else "GET",
                                     headers={**self.headers, **headers})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s or self.timeout_s) as r:
                return r.read(), r.headers
        except urllib.error.HTTPError as exc:
            try:
                msg = json.loads(exc.read()).get("error", exc.reason)
            except (ValueError, AttributeError):
                msg = exc.reason
            raise DataError(f"{what}: {self.url}{route} answered {exc.code}: {msg}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise DataError(f"cannot reach {self.url}{route}: {getattr(exc, 'reason', exc)}") from None

    def get_json(self, route: str, timeout_s: float = 30) -> dict[str, Any]:
        """``GET route`` as JSON."""
        body, _ = self._call(route, None, {}, "GET", timeout_s)
        try:
            doc = json.loads(body)
        except ValueError:
            raise DataError(f"{self.url}{route} did not answer JSON") from None
        return doc

    def post_arrow(self, route: str, table: pa.Table, what: str) -> tuple[bytes, Any]:
        """``POST route`` with ``table`` as an Arrow IPC stream: (the answer's body, its headers)."""
        return self._call(route, arrow_bytes(table), {"content-type": ARROW_STREAM}, what)

    def score(self, table: pa.Table, what: str) -> tuple[pa.Table, str | None]:
        """``table`` scored by ``POST /predict/batch``: (prediction and score columns, the model version)."""
        body, headers = self.post_arrow("/predict/batch", table, what)
        return pa.ipc.open_stream(body).read_all(), headers.get("x-model-version")

    def feedback(self, labels: pa.Table, what: str) -> dict[str, Any]:
        body, _ = self.post_arrow("/feedback", labels, what)
        return json.loads(body)


def read_labels(source: str | Path) -> pa.Table:
    """The ``prediction_id`` and ``label`` columns of a Parquet file or folder, or of a CSV file."""
    import pyarrow.csv as pacsv

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
    table = read_labels(source)
    endpoint = Endpoint(url, timeout_s=timeout_s)
    totals = {k: 0 for k in COUNTS}
    for start in range(0, max(table.num_rows, 1), chunk_rows):
        chunk = table.slice(start, chunk_rows)
        doc = endpoint.feedback(chunk, f"rows {start}-{start + chunk.num_rows - 1}")
        for k in COUNTS:
            totals[k] += int(doc.get(k, 0))
    return {**totals, "rows": table.num_rows}


def predict_via_endpoint(source: str, output: Path, url: str, *, chunk_rows: int = 100_000, overwrite: bool = False,
                         timeout_s: float = 300) -> dict[str, Any]:
    """Score a local Parquet dataset through a running endpoint's ``/predict/batch`` (Arrow IPC, one request
    per chunk), into the Parquet folder ``output``: every input column plus ``prediction`` and ``score``."""
    import pyarrow.dataset as pads

    from raygbm.predict import input_shards, staged

    t0 = time.perf_counter()
    shards = input_shards(source, Path(output), overwrite)
    endpoint = Endpoint(url, timeout_s=timeout_s)
    rows, files, version = 0, 0, None
    with staged(Path(output)) as staging:
        for shard in shards.shards:
            f = shards.display_path(shard.path)
            for batch in pads.dataset(shard.path, format="parquet", filesystem=shards.filesystem).to_batches(batch_size=chunk_rows):
                table = pa.Table.from_batches([batch])
                scored, answered = endpoint.score(table, f)
                version = answered or version
                out = table.append_column("prediction", scored.column("prediction")).append_column("score", scored.column("score"))
                pq.write_table(out, staging / f"part-{files:05d}.parquet")
                rows += out.num_rows
                files += 1
    return {"rows": rows, "files": files, "seconds": time.perf_counter() - t0, "model_version": version}

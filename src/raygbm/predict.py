"""Batch scoring with a registered model as a Ray Data job: every input column kept, plus ``prediction``
and ``score`` (the positive-class probability for binary tasks).

Each read block is scored and written by the task that read it (no block passes through the driver),
to a staging folder that is renamed into place only when every block succeeded.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raygbm.data.preprocess import ROW_COL, SHARD_COL, LocalRunner, RayTaskRunner
from raygbm.data.schema import ShardSet, check_shards
from raygbm.errors import DataError
from raygbm.registry.bundle import METRICS_FILE, MODEL_FILE, PREPROCESSOR_FILE, Bundle

OUTPUT_COLUMNS = ("prediction", "score")

_CACHE: dict[int, Bundle] = {}


@dataclass(frozen=True)
class ModelTexts:
    """The bundle's files as text: shipped to the block tasks once, with no shared filesystem needed."""

    model: str
    preprocessor: str
    metrics: str

    @classmethod
    def of(cls, bundle: Path) -> "ModelTexts":
        return cls(*((bundle / f).read_text() for f in (MODEL_FILE, PREPROCESSOR_FILE, METRICS_FILE)))

    def bundle(self) -> Bundle:
        key = hash(self)
        if key not in _CACHE:  # one parse per worker process, not per block
            import json

            import lightgbm as lgb

            from raygbm.data.features import Preprocessor

            _CACHE.clear()
            _CACHE[key] = Bundle(Path("."), lgb.Booster(model_str=self.model),
                                 Preprocessor.from_json(self.preprocessor), json.loads(self.metrics))
        return _CACHE[key]


def score_table(bundle: Bundle, table: pa.Table) -> pa.Table:
    prediction, score = bundle.predictions(bundle.scores(bundle.features(table)))
    return table.append_column("prediction", prediction).append_column("score", score)


def predict_block(table: pa.Table, texts: ModelTexts, out_dir: str) -> dict[str, list]:
    shard = int(table.column(SHARD_COL)[0].as_py()) if table.num_rows else -1
    first = int(table.column(ROW_COL)[0].as_py()) if table.num_rows else -1
    table = table.drop_columns([SHARD_COL, ROW_COL])
    scored = score_table(texts.bundle(), table)
    name = f"part-{shard:05d}-{first:011d}.parquet"
    pq.write_table(scored, os.path.join(out_dir, name))
    return {"file": [name], "rows": [scored.num_rows]}


def predict_dataset(source: str, output: Path, bundle: Path, *, chunk_rows: int = 1_000_000,
                    overwrite: bool = False, runner: RayTaskRunner | LocalRunner | None = None) -> dict[str, Any]:
    """Score every row of ``source`` into the Parquet folder ``output``; returns rows, files and seconds."""
    t0 = time.perf_counter()
    shards = _input_shards(source, Path(output), overwrite)
    Bundle.load(bundle).check_columns(shards.schema)
    with _staged(Path(output)) as staging:
        written = (runner or RayTaskRunner()).map_blocks(shards, chunk_rows, predict_block, (ModelTexts.of(bundle), str(staging)))
    return {"rows": sum(int(w["rows"]) for w in written), "files": len(written), "seconds": time.perf_counter() - t0}


def _input_shards(source: str, output: Path, overwrite: bool) -> ShardSet:
    """The checked input shards of a scoring run, once ``output`` may be written."""
    if output.exists() and not overwrite:
        raise DataError(f"{output} already exists (use --overwrite to replace it)")
    shards = check_shards(source, label=None)
    clash = [c for c in OUTPUT_COLUMNS if c in shards.schema.names]
    if clash:
        raise DataError(f"{source}: input already has column(s) {', '.join(clash)}, which prediction adds")
    return shards


@contextmanager
def _staged(output: Path) -> Iterator[Path]:
    """A hidden staging folder beside ``output``, renamed to it only when the block succeeds (replacing
    what was there); removed on any failure, so nothing half-written is ever at ``output``."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        os.rename(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def endpoint_auth() -> dict[str, str]:
    """``Authorization: Bearer $RAYGBM_ENDPOINT_TOKEN`` for a client of the endpoint, when that is set."""
    token = os.environ.get("RAYGBM_ENDPOINT_TOKEN")
    return {"authorization": f"Bearer {token}"} if token else {}


def predict_via_endpoint(source: str, output: Path, url: str, *, chunk_rows: int = 100_000, overwrite: bool = False,
                         timeout_s: float = 300) -> dict[str, Any]:
    """Score a local Parquet dataset through a running endpoint's ``/predict/batch`` (Arrow IPC, one request
    per chunk), into the Parquet folder ``output``: every input column plus ``prediction`` and ``score``.
    Sends ``Authorization: Bearer $RAYGBM_ENDPOINT_TOKEN`` when that is set."""
    import json
    import urllib.error
    import urllib.request

    import pyarrow.dataset as pads

    t0 = time.perf_counter()
    shards = _input_shards(source, Path(output), overwrite)
    headers = {"content-type": "application/vnd.apache.arrow.stream", **endpoint_auth()}
    rows, files, version = 0, 0, None
    with _staged(Path(output)) as staging:
        for shard in shards.shards:
            f = shards.display_path(shard.path)
            for batch in pads.dataset(shard.path, format="parquet", filesystem=shards.filesystem).to_batches(batch_size=chunk_rows):
                table = pa.Table.from_batches([batch])
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, table.schema) as w:
                    w.write_table(table)
                req = urllib.request.Request(url.rstrip("/") + "/predict/batch", data=sink.getvalue().to_pybytes(),
                                             method="POST", headers=headers)
                try:
                    with urllib.request.urlopen(req, timeout=timeout_s) as r:
                        scored = pa.ipc.open_stream(r.read()).read_all()
                        version = r.headers.get("x-model-version", version)
                except urllib.error.HTTPError as exc:
                    try:
                        msg = json.loads(exc.read()).get("error", exc.reason)
                    except ValueError:
                        msg = exc.reason
                    raise DataError(f"{f}: the endpoint answered {exc.code}: {msg}") from None
                except (urllib.error.URLError, OSError) as exc:
                    raise DataError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
                out = table.append_column("prediction", scored.column("prediction")).append_column("score", scored.column("score"))
                pq.write_table(out, staging / f"part-{files:05d}.parquet")
                rows += out.num_rows
                files += 1
    return {"rows": rows, "files": files, "seconds": time.perf_counter() - t0, "model_version": version}

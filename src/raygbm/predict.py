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

from raygbm.data.blocks import block_progress
from raygbm.data.preprocess import ROW_COL, SHARD_COL, BlockRunner, default_runner, dictionary_page_columns
from raygbm.data.schema import ShardSet, check_shards
from raygbm.errors import DataError
from raygbm.progress import Progress, no_progress
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
    # Dictionary pages as the data stage writes them: for floats they cost 20% of the write here (0.52 s
    # against 0.41 s for a 1M-row block).
    pq.write_table(scored, os.path.join(out_dir, name), use_dictionary=dictionary_page_columns(scored.schema))
    return {"file": [name], "rows": [scored.num_rows]}


def predict_dataset(source: str, output: Path, bundle: Path, *, chunk_rows: int = 1_000_000,
                    overwrite: bool = False, runner: BlockRunner | None = None,
                    progress: Progress = no_progress) -> dict[str, Any]:
    """Score every row of ``source`` into the Parquet folder ``output``; returns rows, files and seconds."""
    t0 = time.perf_counter()
    shards = input_shards(source, Path(output), overwrite)
    Bundle.load(bundle).check_columns(shards.schema)
    with staged(Path(output)) as staging:
        written = (runner or default_runner()).map_blocks(shards, chunk_rows, predict_block,
                                                          (ModelTexts.of(bundle), str(staging)),
                                                          progress=block_progress(progress, "scoring"))
    return {"rows": sum(int(w["rows"]) for w in written), "files": len(written), "seconds": time.perf_counter() - t0}


def input_shards(source: str, output: Path, overwrite: bool) -> ShardSet:
    """The checked input shards of a scoring run, once ``output`` may be written."""
    if output.exists() and not overwrite:
        raise DataError(f"{output} already exists (use --overwrite to replace it)")
    shards = check_shards(source, label=None)
    clash = [c for c in OUTPUT_COLUMNS if c in shards.schema.names]
    if clash:
        raise DataError(f"{source}: input already has column(s) {', '.join(clash)}, which prediction adds")
    return shards


@contextmanager
def staged(output: Path) -> Iterator[Path]:
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

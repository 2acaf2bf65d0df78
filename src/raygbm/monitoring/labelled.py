"""Labelled traffic: served rows joined with the labels that arrived for them.

This store is what the loop's parts share: feedback writes it, performance per window, retraining data,
the promotion gate and rollback read it. Layout, under a root (the monitor's log folder by default)::

    <root>/<model name>/labelled/part-<ms>-<seq>.parquet

Each part is written under a hidden name and renamed into place, so a reader never sees half a part.
Columns: the raw request fields (the training data's feature columns, as served), the label (named and
typed as in the training data), and the ``META`` columns below. A prediction labelled twice appears in
two parts; readers keep its latest ``_labelled_at`` (the last label wins).

**Compaction** keeps reads at two files however labels arrive (1,500 re-labels of one id once made 1,500
parts and a read 1,000× slower; ``bench/labelled.py``): the store is a base part (the oldest) and a delta.
Past ``COMPACT_AT`` parts, a write merges every part after the base into a new delta (each prediction once,
its last label), or everything into a new base once the delta holds a quarter of the base's rows, so a
write rewrites at most about a fifth of the store. The merged part is renamed into place next to the
newest part it replaces, then those are deleted: a crash in between leaves rows twice, which readers
already resolve, and a reader that listed a part compaction deleted lists again.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Iterable

import pyarrow as pa

PREDICTION_ID = "_prediction_id"
MODEL_VERSION = "_model_version"
SERVED_AT = "_served_at"
LABELLED_AT = "_labelled_at"
SCORE = "_score"
WINDOW = "_window"
PROBA = "_proba"
REQUIRED = (PREDICTION_ID, MODEL_VERSION, SERVED_AT, LABELLED_AT, SCORE)
META = (*REQUIRED, WINDOW, PROBA)  # the last two are written as nulls when a writer leaves them out
META_TYPES = {PREDICTION_ID: pa.string(), MODEL_VERSION: pa.string(), SERVED_AT: pa.float64(),
              LABELLED_AT: pa.float64(), SCORE: pa.float64(), WINDOW: pa.int64(), PROBA: pa.list_(pa.float64())}
"""``_served_at``/``_labelled_at``: epoch seconds; ``_score``: the positive class's probability (binary),
the value (regression), null (multiclass); ``_window``: the drift window of its model version the row
was served in (``GET /drift``'s ``index``); ``_proba``: the class probabilities (multiclass; else null)."""

_seq = itertools.count()
COMPACT_AT = 2  # parts (a base and a delta); a write past this many compacts


def labelled_dir(root: str | Path, name: str) -> Path:
    return Path(root) / name / "labelled"


def write_labelled(root: str | Path, name: str, table: pa.Table, compact_at: int = COMPACT_AT) -> Path | None:
    """Add labelled rows as one new part (none for an empty table), then compact past ``compact_at`` parts.
    The REQUIRED columns must be present. One writer per model name (the monitor actor)."""
    import pyarrow.parquet as pq

    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise ValueError(f"labelled rows lack the columns {missing}")
    if table.num_rows == 0:
        return None
    for col in META:
        if col not in table.column_names:
            table = table.append_column(col, pa.nulls(table.num_rows, META_TYPES[col]))
    for col, typ in META_TYPES.items():
        table = table.set_column(table.schema.get_field_index(col), col, table.column(col).cast(typ))
    folder = labelled_dir(root, name)
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f"part-{int(time.time() * 1000):013d}-{os.getpid()}-{next(_seq):06d}.parquet"
    tmp = part.with_name(f".{part.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(part)
    if len(_parts(folder)) > compact_at:
        compact(root, name)
    return part


def _parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.parquet"))


def compact(root: str | Path, name: str, delta_share: float = 0.25) -> Path | None:
    """Merge the parts after the base (the oldest part) into one delta, or every part into a new base when
    that delta would hold ``delta_share`` of the base's rows or more (each prediction once, its last label).
    The merged part is written next to the newest part it replaces (``<that part>-c``, which sorts just
    before it and after every older one), then the replaced parts deleted. Returns the merged part (None
    when there was nothing to merge)."""
    import pyarrow.parquet as pq

    folder = labelled_dir(root, name)
    parts = _parts(folder)
    if len(parts) < 2:
        return None
    table = _latest(_concat(parts[1:]))
    if len(parts) == 2 or table.num_rows >= delta_share * pq.read_metadata(parts[0]).num_rows:
        table = _latest(_concat(parts))  # a new base
    else:
        parts = parts[1:]
    merged = parts[-1].with_name(parts[-1].name.removesuffix(".parquet") + "-c.parquet")
    tmp = merged.with_name(f".{merged.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(merged)
    for p in parts:
        if p != merged:
            p.unlink(missing_ok=True)
    return merged


def _concat(parts: list[Path]) -> pa.Table:
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(p) for p in parts], promote_options="permissive")


def _latest(table: pa.Table) -> pa.Table:
    """Each prediction once: the row with the greatest ``_labelled_at`` per id (the later part on a tie)."""
    import pyarrow.compute as pc

    order = pc.sort_indices(table, [(PREDICTION_ID, "ascending"), (LABELLED_AT, "descending")])
    table = table.take(order)
    ids = table[PREDICTION_ID].combine_chunks()
    later = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1))
    return table.filter(pa.concat_arrays([pa.array([True]), later]))


def read_labelled(root: str | Path, name: str, *, since: float | None = None,
                  versions: Iterable[str] | None = None) -> pa.Table | None:
    """Every labelled row of ``name`` (served at or after ``since``, by the given model versions), each
    prediction once with its latest label, in serving order; None when there is none."""
    import pyarrow.compute as pc

    for attempt in range(5):
        parts = _parts(labelled_dir(root, name))
        if not parts:
            return None
        try:
            table = _concat(parts)
            break
        except FileNotFoundError:  # a compaction replaced what was listed: list again
            if attempt == 4:
                raise
    if since is not None:
        table = table.filter(pc.greater_equal(table[SERVED_AT], since))
    if versions is not None:
        table = table.filter(pc.is_in(table[MODEL_VERSION], value_set=pa.array(list(versions), pa.string())))
    if table.num_rows == 0:
        return None
    table = _latest(table)  # the last label wins
    return table.take(pc.sort_indices(table, [(SERVED_AT, "ascending")]))


def training_rows(table: pa.Table) -> pa.Table:
    """Labelled rows as training data: the raw fields and the label, without the META columns."""
    return table.drop_columns([c for c in META if c in table.column_names])

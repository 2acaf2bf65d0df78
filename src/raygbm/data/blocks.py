"""Read blocks: the unit of work of the data stage and of batch scoring. A block is whole row groups of
one shard (up to ``resources.read_chunk_rows`` rows), read with each row's shard and row number; a block
function (``preprocess.profile_block``, ``transform_block``, ``predict.predict_block``) turns it into a small
result. A runner runs a block function over every block: ``raygbm.data.engine.RayDataRunner`` on Ray
Data, or ``LocalRunner`` in one process (tests and the benches' baseline)."""

from __future__ import annotations

import time
from typing import Any, Callable, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raygbm.data.schema import ShardSet
from raygbm.errors import DataError, RaygbmError
from raygbm.progress import Progress

SHARD_COL, ROW_COL = "__shard", "__row"


def read_plan(shards: ShardSet, chunk_rows: int, columns: list[str] | None) -> list[tuple[int, str, list[int], int]]:
    """(shard index, path, row groups, first row) per read block: whole row groups up to ``chunk_rows``."""
    tasks = []
    for i, s in enumerate(shards.shards):
        groups: list[int] = []
        rows = first = 0
        for g, n in enumerate(s.row_groups):
            if groups and rows + n > chunk_rows:
                tasks.append((i, s.path, groups, first))
                first += rows
                groups, rows = [], 0
            groups.append(g)
            rows += n
        if groups or not s.row_groups:
            tasks.append((i, s.path, groups, first))
    return tasks


def read_block(fs: pafs.FileSystem, display: str, path: str, groups: list[int], shard: int, first: int,
                columns: list[str] | None, dictionary: list[str] = ()) -> pa.Table:
    try:
        f = fs.open_input_file(path)
    except OSError as exc:  # gone, or refused (object storage credentials) since the shards were checked
        raise DataError(f"{display}: cannot read ({str(exc).strip().splitlines()[0]})") from None
    try:
        with f:
            # Text categoricals decoded as dictionaries: 2-3x faster to read than strings, and every later
            # step (hash, counts, encoding) works on the few distinct values instead of every row.
            pf = pq.ParquetFile(f, read_dictionary=list(dictionary) or None)
            table = pf.read_row_groups(groups, columns=columns, use_threads=False) if groups else pf.schema_arrow.empty_table()
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{display}: corrupt Parquet data ({str(exc).strip().splitlines()[0]})") from None
    n = table.num_rows
    table = table.append_column(SHARD_COL, pa.array(np.full(n, shard, dtype=np.int32)))
    return table.append_column(ROW_COL, pa.array(np.arange(first, first + n, dtype=np.int64)))


def read_rows(path: str, offset: int, length: int, columns: list[str]) -> pa.Table:
    """Rows ``offset`` to ``offset + length`` of a local Parquet file, reading only the row groups that
    hold them (a training worker's slice of a split part)."""
    pf = pq.ParquetFile(path)
    groups, group_start, first = [], 0, None
    for g in range(pf.num_row_groups):
        rows = pf.metadata.row_group(g).num_rows
        if group_start < offset + length and group_start + rows > offset:
            groups.append(g)
            first = group_start if first is None else first
        group_start += rows
    return pf.read_row_groups(groups, columns=columns, use_threads=False).slice(offset - (first or 0), length)


def dictionary_columns(shards: ShardSet, categorical: list[str]) -> list[str]:
    """The text categorical columns, read as dictionary arrays (see ``read_block``)."""
    text = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)
    return [c for c in categorical if c in shards.schema.names and any(t(shards.schema.field(c).type) for t in text)]


def find_user_error(exc: BaseException) -> RaygbmError | None:
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        # Ray re-raises a task's error as a class deriving from both RayTaskError and ours, whose text is
        # the whole remote trace; ours is its ``cause``. Ray Data appends lines on retries to our error's
        # text (which is one line).
        if isinstance(e, RaygbmError) and type(e).__module__.startswith("raygbm"):
            return type(e)(str(e).strip().splitlines()[0])
        stack.extend([e.__cause__, e.__context__, getattr(e, "cause", None)])
    return None


def block_rows(shards: ShardSet, block: tuple[int, str, list[int], int]) -> int:
    """The rows of one ``read_plan`` block, from the shards' footers."""
    shard, _path, groups, _first = block
    return sum(shards.shards[shard].row_groups[g] for g in groups)


def run_block(shards: ShardSet, block: tuple[int, str, list[int], int], fn: Callable[..., dict[str, list]],
              args: tuple, columns: list[str] | None, dictionary: list[str] | tuple[str, ...]) -> list[dict[str, Any]]:
    """``fn(block's table, *args)`` in this process, as rows."""
    shard, path, groups, first = block
    table = read_block(shards.filesystem, shards.display_path(path), path, groups, shard, first, columns,
                       list(dictionary))
    return rows_of(fn(table, *args))


def rows_of(out: dict[str, list]) -> list[dict[str, Any]]:
    """A block function's columns as rows."""
    keys = list(out)
    return [dict(zip(keys, values)) for values in zip(*(out[k] for k in keys))]


PROGRESS_EVERY_S = 5.0  # the least time between two progress lines of one pass


def block_progress(progress: Progress, what: str) -> Callable[[int, int], None]:
    """A runner's ``progress`` as our progress lines ("profiling: 12 of 40 blocks (30%)"), at most one per
    ``PROGRESS_EVERY_S``, the first after that long (a short pass says nothing), none once all are done."""
    last = [time.monotonic()]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            progress(f"{what}: {done:,} of {total:,} blocks ({100 * done // total}%)")

    return report


class BlockRunner(Protocol):
    """Runs a block function over every read block: ``raygbm.data.engine.RayDataRunner`` (the stage's
    runner, on Ray Data) or ``LocalRunner`` (one process; tests and the bench's baseline).

    ``fn(block, *args, *per_block[i])`` for the i-th read block; returns its rows, in block order, and
    calls ``progress(blocks done, blocks)`` as blocks finish."""

    def map_blocks(self, shards: ShardSet, chunk_rows: int, fn: Callable[..., dict[str, list]], args: tuple,
                   columns: list[str] | None = None, dictionary: list[str] = (),
                   per_block: list[tuple] | None = None,
                   progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]: ...


class LocalRunner:
    """The same block functions in a plain single-process loop (the baseline in bench/preprocess.py)."""

    def map_blocks(self, shards: ShardSet, chunk_rows: int, fn: Callable[..., dict[str, list]], args: tuple,
                   columns: list[str] | None = None, dictionary: list[str] = (),
                   per_block: list[tuple] | None = None,
                   progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        plan = read_plan(shards, chunk_rows, columns)
        for i, block in enumerate(plan):
            rows.extend(run_block(shards, block, fn, args + (per_block[i] if per_block else ()), columns, dictionary))
            if progress is not None:
                progress(i + 1, len(plan))
        return rows

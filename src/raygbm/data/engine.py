"""The data stage's engine on a Ray cluster: Ray Data runs the block functions of
``raygbm.data.preprocess`` (and ``raygbm.predict``) over every read block of the shards.

Imported only when a stage runs on Ray (``preprocess.default_runner``): it imports Ray Data."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray
import ray.data
from ray.data import DataContext, Datasource
from ray.data.block import BlockMetadata
from ray.data.datasource import ReadTask

from raygbm.data.blocks import block_rows, find_user_error, read_block, read_plan, read_rows, run_block
from raygbm.data.schema import ShardSet

BLOCK_COL = "__block"  # the read block's index in the plan, so a map function finds its per-block arguments


class ShardBlocks(Datasource):
    """A Ray Data datasource whose read tasks are exactly our read blocks (``read_plan``): whole row
    groups of one shard, with each row's shard and row number (``SHARD_COL``, ``ROW_COL``) and the
    block's index (``BLOCK_COL``) appended.

    Not ``ray.data.read_parquet``: its blocks carry neither a row's position in its shard (the keep-first
    order for duplicates, the output files' names) nor a stable identity across two passes (the profile
    pass hands each block's split codes to the transform pass), and its errors name no shard. The shards'
    footers and schemas are checked before (``check_shards``), as for any read."""

    def __init__(self, shards: ShardSet, blocks: list[tuple[int, tuple[int, str, list[int], int]]],
                 columns: list[str] | None, dictionary: list[str]) -> None:
        """``blocks``: (index in the plan, ``read_plan`` entry) of the blocks to read."""
        super().__init__()
        self.shards, self.blocks, self.columns, self.dictionary = shards, blocks, columns, list(dictionary)

    def get_name(self) -> str:
        return "Shards"  # the operator shows as ReadShards->MapBatches(...)

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[Any]:
        tasks = []
        for i, block in self.blocks:
            shard, path, groups, first = block
            rows = block_rows(self.shards, block)
            read = functools.partial(_read_indexed_block, self.shards.filesystem, self.shards.display_path(path),
                                     path, groups, shard, first, self.columns, self.dictionary, i)
            tasks.append(ReadTask(read, BlockMetadata(num_rows=rows, size_bytes=None, input_files=[path],
                                                      exec_stats=None)))
        return tasks


class ParquetSlices(Datasource):
    """A Ray Data datasource of row ranges of local Parquet files, ``(path, first row, rows)``, a block each:
    a training worker's rows of the data stage's split parts, for Ray Train's ``datasets``.

    Consecutive slices share a read task up to ``task_rows`` rows. A read task needs a worker process,
    and Ray starts one per task running at once: booting one is ~1 s of CPU here (Ray, Ray Data, pandas),
    more than reading 200,000 rows, and on 2 cores the boots of 8 one-slice tasks (a 4-shard input's train
    and validation parts) took 3-7 s and ran on into the boosting loop.

    Not ``ray.data.read_parquet``: it lists its files in an operator of its own whose task takes a CPU
    whatever the read's ``num_cpus`` (one Ray Train's placement group may hold, see
    ``training.train.ingest_datasets``), and its blocks cannot be cut at a given row."""

    def __init__(self, slices: list[tuple[str, int, int]], columns: list[str], task_rows: int = 1_000_000) -> None:
        super().__init__()
        self.slices, self.columns, self.task_rows = [tuple(s) for s in slices], list(columns), task_rows

    def get_name(self) -> str:
        return "Slices"

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[Any]:
        groups: list[tuple[list[tuple], int]] = []  # (slices, their rows)
        for s in self.slices:
            if not groups or groups[-1][1] >= self.task_rows:
                groups.append(([], 0))
            groups[-1] = (groups[-1][0] + [s], groups[-1][1] + s[2])
        return [ReadTask(functools.partial(_read_slices, group, self.columns),
                         BlockMetadata(num_rows=rows, size_bytes=None, exec_stats=None,
                                       input_files=list(dict.fromkeys(path for path, _, _ in group))))
                for group, rows in groups]


def _read_slices(slices: list[tuple[str, int, int]], columns: list[str]) -> Iterator[pa.Table]:
    for path, offset, length in slices:
        yield read_rows(path, offset, length, columns)


def _read_indexed_block(fs: pafs.FileSystem, display: str, path: str, groups: list[int], shard: int, first: int,
                        columns: list[str] | None, dictionary: list[str], index: int) -> list[pa.Table]:
    table = read_block(fs, display, path, groups, shard, first, columns, dictionary)
    return [table.append_column(BLOCK_COL, pa.array(np.full(table.num_rows, index, dtype=np.int32)))]


class _ApplyToBlock:
    """The ``map_batches`` function: one read block in (whole: block shaping is off for our runs), the
    block function's small result out, with the block's index for ordering.

    ``per_block``: each block's own arguments as object refs, fetched by the task of that block only. The
    function is shipped whole to every task, and with the arguments themselves in it (the transform
    pass's split codes: a byte per row) every task of a 40M-row run unpickled all 40 MB of them."""

    def __init__(self, fn: Callable[..., dict[str, list]], args: tuple, per_block: list[Any] | None) -> None:
        self.fn, self.args, self.per_block = fn, args, per_block

    def __call__(self, table: pa.Table) -> dict[str, list]:
        index = int(table.column(BLOCK_COL)[0].as_py()) if table.num_rows else -1
        extra = ray.get(self.per_block[index]) if self.per_block and index >= 0 else ()
        out = self.fn(table.drop_columns([BLOCK_COL]), *self.args, *extra)
        n = len(next(iter(out.values()))) if out else 0
        return {**out, BLOCK_COL: [index] * n}


# Ray Data options for our runs (set for the run's datasets only, see ``data_context``):
# - no block shaping: a read block (read_chunk_rows, whole row groups) reaches the map function whole, so
#   its index finds its per-block arguments and the output files are named by the block as with LocalRunner;
# - no progress bars or stats dumps: our progress lines and data report say it once.
QUIET_DATA_CONTEXT = {"enable_progress_bars": False, "print_on_execution_start": False, "enable_auto_log_stats": False}
RUN_DATA_CONTEXT = {"target_max_block_size": None, **QUIET_DATA_CONTEXT}
# - no backpressure policies (ray/data/_internal/execution/backpressure_policy/__init__.py reads this key):
#   a block function returns a few KB (statistics, the names of the files it wrote), so there is no output
#   for the object store to hold back, and memory is bounded by the tasks running at once (one read block
#   each, one task per CPU). With Ray's policies on, its resource budget held the tasks back until the
#   first had finished: on 2 cores, 4M rows took 5.4-6.3 s against 3.8-4.4 s without them (bench/preprocess.py).
RUN_DATA_CONFIG = {"backpressure_policies.enabled": []}


def _drop(record: logging.LogRecord) -> bool:
    return False


@contextmanager
def data_context(config: dict[str, Any] | None = None, **options: Any) -> Iterator[Any]:
    """Ray Data's ``DataContext`` with ``options`` (attributes) and ``config`` (``set_config`` keys) for the
    datasets made inside (a dataset keeps the context it was made with), restored afterwards: nothing
    global outlives the run.

    Ray Data's console lines are held back meanwhile: on a failed block it logs the whole task trace to
    the console (our error is one line); its log file in the session's ``logs/ray-data`` keeps them."""
    ctx = DataContext.get_current()
    saved = {k: getattr(ctx, k) for k in options}
    missing = object()
    saved_config = {k: ctx.get_config(k, missing) for k in config or {}}
    console = [h for h in logging.getLogger("ray.data").handlers
               if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    for k, v in options.items():
        setattr(ctx, k, v)
    for k, v in (config or {}).items():
        ctx.set_config(k, v)
    for h in console:
        h.addFilter(_drop)
    try:
        yield ctx
    finally:
        for h in console:
            h.removeFilter(_drop)
        for k, v in saved.items():
            setattr(ctx, k, v)
        for k, v in saved_config.items():
            ctx.remove_config(k) if v is missing else ctx.set_config(k, v)


class RayDataRunner:
    """Runs a block function over every read block as a Ray Data pipeline: our datasource's read tasks
    (``ShardBlocks``) fused with ``map_batches`` of the function, so a block never leaves the task that
    read it and only the function's small result comes back. Ray Data's streaming executor schedules the
    tasks over every node's CPUs (SPREAD), retries them when a worker or node dies, and shows the run in
    the dashboard's Data view; a data error is not retried and comes back as the one line it is.

    ``actors``: the function runs instead in a pool of up to that many actors (one CPU each), fed by the
    read tasks through the object store (Ray Data's backpressure on, as blocks then wait there)."""

    def __init__(self, actors: int | None = None) -> None:
        self.actors = actors

    def map_blocks(self, shards: ShardSet, chunk_rows: int, fn: Callable[..., dict[str, list]], args: tuple,
                   columns: list[str] | None = None, dictionary: list[str] = (),
                   per_block: list[tuple] | None = None,
                   progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
        """``fn(block, *args, *per_block[i])`` for the i-th read block; its rows, in block order."""
        plan = read_plan(shards, chunk_rows, columns)
        results: dict[int, list[dict[str, Any]]] = {}
        # A block without rows (an empty shard) runs here: Ray Data hands a map function no empty batch, and
        # every block's result must keep its place (the profile pass's split codes go to the i-th block).
        for i, block in enumerate(plan):
            if not block_rows(shards, block):
                results[i] = run_block(shards, block, fn, args + (per_block[i] if per_block else ()), columns,
                                       dictionary)
        blocks = [(i, block) for i, block in enumerate(plan) if i not in results]
        if blocks:
            results.update(self._run(shards, blocks, fn, args, columns, dictionary, per_block, progress, len(plan)))
        return [row for i in sorted(results) for row in results[i]]

    def _run(self, shards: ShardSet, blocks: list[tuple[int, tuple]], fn: Callable[..., dict[str, list]],
             args: tuple, columns: list[str] | None, dictionary: list[str], per_block: list[tuple] | None,
             progress: Callable[[int, int], None] | None, total: int) -> dict[int, list[dict[str, Any]]]:
        """The blocks' results by block index, from one Ray Data pipeline."""
        source = ShardBlocks(shards, blocks, columns, list(dictionary))
        if per_block:
            per_block = [ray.put(extra) for extra in per_block]
        with data_context(None if self.actors else RUN_DATA_CONFIG, **RUN_DATA_CONTEXT):
            ds = ray.data.read_datasource(source, override_num_blocks=len(blocks))
            if self.actors:
                ds = ds.map_batches(_ApplyToBlock, fn_constructor_args=(fn, args, per_block),
                                    compute=ray.data.ActorPoolStrategy(min_size=1, max_size=self.actors),
                                    batch_format="pyarrow", batch_size=None, zero_copy_batch=True, num_cpus=1)
            else:
                ds = ds.map_batches(_ApplyToBlock(fn, args, per_block), batch_format="pyarrow", batch_size=None,
                                    zero_copy_batch=True)
            tables, done = [], set()
            try:
                # Results stream back as blocks finish (a few KB each), which is what progress counts.
                for table in ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0):
                    tables.append(table)
                    done.update(table.column(BLOCK_COL).to_pylist())
                    if progress is not None:
                        progress(len(done) + total - len(blocks), total)
            except Exception as exc:  # Ray Data wraps task errors; report ours as the one line they are
                err = find_user_error(exc)
                if err is not None:
                    raise err from None
                raise
        results: dict[int, list[dict[str, Any]]] = {}
        for table in tables:
            for row in table.to_pylist():
                results.setdefault(row.pop(BLOCK_COL), []).append(row)
        return results

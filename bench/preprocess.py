"""Data stage throughput: our path on Ray Data against a plain single-process pyarrow loop, same shards, same
transforms (the same block functions: profile pass, fit, transform-and-write pass), in one run; and against the
stage's previous runner, a plain Ray task per read block (``task_ratio``: Ray Data's rows/s over the tasks').

    python bench/preprocess.py [--rows 4000000] [--shards 8] [--object-store-mb N]

Prints rows/s for both and the ratio, and the peak memory of each path: for Ray, the driver plus every Ray
process it started, as PSS, read in an untimed run of each runner (reading PSS takes CPU from what it
measures: ``bench/sampling.py``). Every rate is the best of its runs: two for Polars and the floors,
``--repeats`` (3) warm runs for each Ray runner, alternated.

Two references beside them, on the same shards:

- the floor: one pyarrow pass per shard (read, fill nulls, encode categories, write) with pyarrow's
  defaults, the least any data stage has to do, on every core (a process per core). ``floor_ratio`` is
  our rows/s over the floor's. The tuned floor is the same pass with our stage's two tricks (text read as
  dictionaries, floats written without dictionary pages): ``tuned_floor_ratio``.
- Polars with a thread per core, the tool a one-machine user would pick: per-column statistics (count, nulls,
  mean, std, min, max, median), category counts, a row hash and the duplicate count, nulls filled with
  the medians, categories encoded, one Parquet file written (``polars_rows_per_s``).

It ends with one line:

    RESULT ratio=<ray / plain rows/s> task_ratio=<ray data / ray tasks> ray_rows_per_s=... plain_rows_per_s=... floor_rows_per_s=...
           floor_ratio=<ray / floor> polars_rows_per_s=... tuned_floor_ratio=... peak_rss_mb=...

Every timed run starts after ``os.sync()``: the runs write hundreds of MB, and a run that starts while the
last one's pages are still being flushed is slowed by that (measured: the floor at 0.85M against 3.6M
rows/s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sampling import PeakMemory  # noqa: E402  (bench/sampling.py)


def _floor_shard(path: Path, out: Path, tuned: bool) -> int:
    """The floor's work on one shard: read, fill nulls, encode categories, write. ``tuned``: with our
    stage's two tricks (text read as dictionaries, no dictionary pages for floats); otherwise pyarrow's
    defaults, the pass as one would first write it."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    table = pq.read_table(path, read_dictionary=text if tuned else None, use_threads=False)
    cols = []
    for f in table.schema:
        c = table[f.name]
        if pa.types.is_floating(f.type):
            c = pc.fill_null(c, 0.0)
        elif pa.types.is_dictionary(f.type) or f.name in text:
            codes = c if pa.types.is_dictionary(f.type) else pc.dictionary_encode(c)
            c = pa.chunked_array([pc.fill_null(ch.indices, -1) for ch in codes.chunks])
        cols.append(c)
    out_table = pa.table(cols, names=table.column_names)
    floats = [f.name for f in out_table.schema if pa.types.is_floating(f.type)]
    pq.write_table(out_table, out, use_dictionary=[c for c in out_table.column_names if c not in floats] if tuned else True)
    return table.num_rows


def floor_rows_per_s(data: Path, processes: int = 2, tuned: bool = False) -> float:
    """The floor pass over every shard, ``processes`` shards at a time."""
    from concurrent.futures import ProcessPoolExecutor

    out = Path(tempfile.mkdtemp(prefix="raygbm-floor-"))
    shards = sorted(data.glob("*.parquet"))
    try:
        with ProcessPoolExecutor(processes) as pool:
            list(pool.map(len, [[]] * processes))  # workers started before the clock
            os.sync()
            t = time.perf_counter()
            rows = sum(pool.map(_floor_shard, shards, [out / p.name for p in shards], [tuned] * len(shards)))
            return rows / (time.perf_counter() - t)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _polars_child(data: Path, out: Path) -> None:
    import polars as pl

    t = time.perf_counter()
    df = pl.read_parquet(sorted(data.glob("*.parquet")))
    num = [c for c, d in df.schema.items() if d.is_float()]
    cat = [c for c, d in df.schema.items() if d == pl.String]
    stats = df.select([pl.col(num).count().name.suffix("_n"), pl.col(num).null_count().name.suffix("_nulls"),
                       pl.col(num).mean().name.suffix("_mean"), pl.col(num).std().name.suffix("_std"),
                       pl.col(num).min().name.suffix("_min"), pl.col(num).max().name.suffix("_max"),
                       pl.col(num).median().name.suffix("_median")]).row(0, named=True)
    counts = {c: df[c].value_counts() for c in cat}
    hashes = df.hash_rows(seed=7)
    duplicates = int(hashes.is_duplicated().sum())
    filled = [pl.col(c).fill_null(stats[f"{c}_median"]) for c in num]
    encoded = [pl.col(c).cast(pl.Categorical).to_physical().cast(pl.Int32).fill_null(-1) for c in cat]
    df.with_columns(filled + encoded).with_columns(hashes.alias("row_hash")).write_parquet(out / "out.parquet")
    s = time.perf_counter() - t
    print(json.dumps({"rows_per_s": df.height / s, "threads": pl.thread_pool_size(), "duplicates": duplicates,
                      "categories": sum(len(v) for v in counts.values())}))


def polars_rows_per_s(data: Path, threads: int = 2) -> tuple[float, int]:
    """Polars' pass in a child process (its thread pool is sized once, at import): rows/s and threads."""
    out = Path(tempfile.mkdtemp(prefix="raygbm-polars-"))
    os.sync()
    try:
        done = subprocess.run([sys.executable, __file__, "--polars-child", str(data), str(out)], check=True,
                              capture_output=True, text=True, env={**os.environ, "POLARS_MAX_THREADS": str(threads)})
        r = json.loads(done.stdout.strip().splitlines()[-1])
        return r["rows_per_s"], r["threads"]
    finally:
        shutil.rmtree(out, ignore_errors=True)


def cached_shards(data_dir: Path, rows: int, shards: int) -> Path:
    """Generated shards (seed 11) under ``data_dir``, made on first use and reused by every bench."""
    from raygbm.data.generate import GeneratorSpec, generate_dataset

    data = data_dir / f"rows{rows}-shards{shards}"
    if not (data / f"part-{shards - 1:05d}.parquet").exists():
        t = time.perf_counter()
        generate_dataset(data, GeneratorSpec(rows=rows, shards=shards, seed=11))
        print(f"generated {rows:,} rows in {shards} shards in {time.perf_counter() - t:.1f}s", flush=True)
    return data


class RayTaskRunner:
    """The reference: the data stage's runner before it moved to Ray Data (raygbm.data.engine), one plain
    Ray task per read block (read → block function), all submitted at once. Kept here to measure the
    Ray Data path against it in the same run."""

    def map_blocks(self, shards, chunk_rows, fn, args, columns=None, dictionary=(), per_block=None, progress=None):
        import ray

        from raygbm.data.blocks import find_user_error, read_block, read_plan

        @ray.remote(num_cpus=1, scheduling_strategy="SPREAD")
        def read_and_map(fs, display, path, groups, shard, first, columns, dictionary, fn, args, extra):
            return fn(read_block(fs, display, path, groups, shard, first, columns, dictionary), *args, *extra)

        args_ref = ray.put(args)
        plan = read_plan(shards, chunk_rows, columns)
        refs = [read_and_map.options(name=f"read->{fn.__name__}").remote(
                    shards.filesystem, shards.display_path(path), path, groups, shard, first, columns,
                    list(dictionary), fn, args_ref, per_block[i] if per_block else ())
                for i, (shard, path, groups, first) in enumerate(plan)]
        try:
            outs = ray.get(refs)
        except Exception as exc:
            err = find_user_error(exc)
            if err is not None:
                raise err from None
            raise
        return [dict(zip(out, values)) for out in outs for values in zip(*out.values())]


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--polars-child":
        _polars_child(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4_000_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--chunk-rows", type=int, default=None, help="rows per read block (default: config default)")
    ap.add_argument("--object-store-mb", type=int, default=None, help="cap Ray's object store (memory test)")
    ap.add_argument("--data-dir", default=str(ROOT / "bench" / ".data"), help="generated shards are cached here")
    ap.add_argument("--repeats", type=int, default=3, help="warm runs of each Ray runner, alternated; the best counts")
    ap.add_argument("--skip-plain", action="store_true", help="only the Ray path (large memory runs)")
    args = ap.parse_args()

    from raygbm.config import load_config
    from raygbm.data.preprocess import LocalRunner, preprocess

    data = cached_shards(Path(args.data_dir), args.rows, args.shards)

    sets = ["data.drop=[id]"]
    if args.chunk_rows:
        sets.append(f"resources.read_chunk_rows={args.chunk_rows}")
    if args.object_store_mb:
        sets.append(f"resources.object_store_memory_mb={args.object_store_mb}")
    cfg = load_config(None, sets, {"data.source": str(data), "data.label": "label"})
    home = Path(tempfile.mkdtemp(prefix="raygbm-bench-"))
    os.environ["RAYGBM_HOME"] = str(home)
    try:
        plain_s = plain_rss = None
        if not args.skip_plain:
            # The baseline runs first, before Ray exists, so its memory is its own.
            with PeakMemory() as mem:  # one process: its RSS is cheap to read
                os.sync()
                t = time.perf_counter()
                preprocess(cfg, runner=LocalRunner(), force=True)
                plain_s = time.perf_counter() - t
            plain_rss = mem.peak
            print(f"plain pyarrow loop : {plain_s:6.2f}s  {args.rows / plain_s / 1e6:5.2f}M rows/s  peak {plain_rss:,.0f} MB", flush=True)

        cores = os.cpu_count() or 1  # the references use every core, as Ray does
        floor = max(floor_rows_per_s(data, cores) for _ in range(2))  # the better of two, like warm Ray
        print(f"floor ({cores} processes): {floor / 1e6:5.2f}M rows/s", flush=True)
        tuned = max(floor_rows_per_s(data, cores, tuned=True) for _ in range(2))
        print(f"tuned floor ({cores} processes): {tuned / 1e6:5.2f}M rows/s", flush=True)
        polars, threads = max(polars_rows_per_s(data, cores) for _ in range(2))
        print(f"polars ({threads} threads)  : {polars / 1e6:5.2f}M rows/s", flush=True)

        from raygbm.runtime import ensure_ray

        t = time.perf_counter()
        ensure_ray(cfg.resources)
        ray_start = time.perf_counter() - t
        runs, task_runs = [], []
        # Ray Data (the stage's runner) and the plain-task reference, alternated so both see the same
        # machine; the first Ray Data run is the cold one. No sampler runs meanwhile (bench/sampling.py).
        for attempt, runner in [("cold", None)] + [("warm", r) for _ in range(args.repeats)
                                                   for r in (None, RayTaskRunner())]:
            os.sync()  # the last run's written files flushed first, so no run pays for another's
            name = "ray data" if runner is None else "ray tasks"
            t = time.perf_counter()
            r = preprocess(cfg, force=True, runner=runner)
            took = time.perf_counter() - t
            (runs if runner is None else task_runs).append(took)
            print(f"{name} ({attempt})  : {took:6.2f}s  {args.rows / took / 1e6:5.2f}M rows/s  "
                  f"(profile {r.timings['profile_s']:.2f}s, transform {r.timings['transform_s']:.2f}s)", flush=True)
        # Memory in a run of each of its own, its PSS sampled every 100 ms (driver and every Ray process).
        pss, ray_rss = {}, 0.0
        for name, runner in (("ray data", None), ("ray tasks", RayTaskRunner())):
            os.sync()
            with PeakMemory(pss=True, pss_share=None) as mem:
                preprocess(cfg, force=True, runner=runner)
            pss[name], ray_rss = mem.peak_pss, max(ray_rss, mem.peak_rss)
            print(f"{name} (memory run): peak PSS {mem.peak_pss:,.0f} MB, RSS sum {mem.peak_rss:,.0f} MB", flush=True)
        import ray

        store_mb = ray.cluster_resources().get("object_store_memory", 0) / 2**20
        print(f"ray start {ray_start:.1f}s (not timed above); peak RSS of driver + Ray processes {ray_rss:,.0f} MB "
              f"with an object store of {store_mb:,.0f} MB; input {sum(p.stat().st_size for p in data.iterdir()) / 2**20:,.0f} MB on disk")
        ray_rps = args.rows / min(runs[1:])
        result = {
            "rows": args.rows,
            "ray_rows_per_s": round(ray_rps),
            "ray_cold_rows_per_s": round(args.rows / runs[0]),
            "task_rows_per_s": round(args.rows / min(task_runs)),
            "task_ratio": round(ray_rps / (args.rows / min(task_runs)), 3),
            "peak_rss_mb": round(ray_rss),
            "peak_pss_mb": round(pss["ray data"]),
            "task_peak_pss_mb": round(pss["ray tasks"]),
            "object_store_mb": round(store_mb),
            "ray_start_s": round(ray_start, 1),
        }
        result = {"task_ratio": result.pop("task_ratio"), "floor_ratio": round(ray_rps / floor, 3), **result, "floor_rows_per_s": round(floor),
                  "polars_rows_per_s": round(polars), "tuned_floor_rows_per_s": round(tuned),
                  "tuned_floor_ratio": round(ray_rps / tuned, 3)}
        if plain_s is not None:
            plain_rps = args.rows / plain_s
            result = {
                "ratio": round(ray_rps / plain_rps, 3),
                **result,
                "plain_rows_per_s": round(plain_rps),
                "cold_ratio": round(args.rows / runs[0] / plain_rps, 3),
                "plain_peak_rss_mb": round(plain_rss),
            }
            print(f"ratio (ray / plain rows/s): {result['ratio']:.2f} warm, {result['cold_ratio']:.2f} cold")
        print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()

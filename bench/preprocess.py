"""Data stage throughput: our Ray Data path against a plain single-process pyarrow loop, same shards,
same transforms (the same block functions: profile pass, fit, transform-and-write pass), in one run.

    python bench/preprocess.py [--rows 4000000] [--shards 8] [--object-store-mb N]

Prints rows/s for both and the ratio, and the peak resident memory of each path (for Ray: the driver
plus every Ray process it started, sampled), ending with one line:

    RESULT ratio=<ray / plain rows/s> ray_rows_per_s=... plain_rows_per_s=... peak_rss_mb=...
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_tree_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        stack.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
    return total / 2**20


class PeakRSS:
    """Samples the memory of this process tree every 100 ms while in use."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> "PeakRSS":
        self.peak = _rss_tree_mb(os.getpid())
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, _rss_tree_mb(os.getpid()))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_tree_mb(os.getpid()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4_000_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--chunk-rows", type=int, default=None, help="rows per read block (default: config default)")
    ap.add_argument("--object-store-mb", type=int, default=None, help="cap Ray's object store (memory test)")
    ap.add_argument("--data-dir", default=str(ROOT / "bench" / ".data"), help="generated shards are cached here")
    ap.add_argument("--skip-plain", action="store_true", help="only the Ray path (large memory runs)")
    args = ap.parse_args()

    from raygbm.config import load_config
    from raygbm.data.generate import GeneratorSpec, generate_dataset
    from raygbm.data.preprocess import LocalRunner, preprocess

    data = Path(args.data_dir) / f"rows{args.rows}-shards{args.shards}"
    if not (data / f"part-{args.shards - 1:05d}.parquet").exists():
        t = time.perf_counter()
        generate_dataset(data, GeneratorSpec(rows=args.rows, shards=args.shards, seed=11))
        print(f"generated {args.rows:,} rows in {args.shards} shards in {time.perf_counter() - t:.1f}s", flush=True)

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
            with PeakRSS() as mem:
                t = time.perf_counter()
                preprocess(cfg, runner=LocalRunner(), force=True)
                plain_s = time.perf_counter() - t
            plain_rss = mem.peak
            print(f"plain pyarrow loop : {plain_s:6.2f}s  {args.rows / plain_s / 1e6:5.2f}M rows/s  peak {plain_rss:,.0f} MB", flush=True)

        from raygbm.runtime import ensure_ray

        t = time.perf_counter()
        ensure_ray(cfg.resources)
        ray_start = time.perf_counter() - t
        runs = []
        with PeakRSS() as mem:
            for attempt in ("cold", "warm"):
                t = time.perf_counter()
                r = preprocess(cfg, force=True)
                runs.append(time.perf_counter() - t)
                print(f"ray data ({attempt})    : {runs[-1]:6.2f}s  {args.rows / runs[-1] / 1e6:5.2f}M rows/s  "
                      f"(profile {r.timings['profile_s']:.2f}s, transform {r.timings['transform_s']:.2f}s)", flush=True)
        ray_rss = mem.peak
        import ray

        store_mb = ray.cluster_resources().get("object_store_memory", 0) / 2**20
        print(f"ray start {ray_start:.1f}s (not timed above); peak RSS of driver + Ray processes {ray_rss:,.0f} MB "
              f"with an object store of {store_mb:,.0f} MB; input {sum(p.stat().st_size for p in data.iterdir()) / 2**20:,.0f} MB on disk")
        ray_rps = args.rows / runs[-1]
        result = {
            "rows": args.rows,
            "ray_rows_per_s": round(ray_rps),
            "ray_cold_rows_per_s": round(args.rows / runs[0]),
            "peak_rss_mb": round(ray_rss),
            "object_store_mb": round(store_mb),
            "ray_start_s": round(ray_start, 1),
        }
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

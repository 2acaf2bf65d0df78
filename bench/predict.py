"""Batch scoring throughput and memory: ``raygbm predict``'s path (``predict_dataset`` on Ray Data) against a
plain single-process loop (read a shard, ``Booster.predict`` through the same bundle, write), and against the
previous runner (a plain Ray task per read block, ``bench/preprocess.py``'s ``RayTaskRunner``), same shards,
same model, in one run.

    python bench/predict.py [--rows 10000000] [--shards 10] [--trees 100] [--actors]

``--actors`` adds a run with the scoring in a Ray Data actor pool (``RayDataRunner(actors=N)``: a bundle
loaded once per actor, blocks passed from the read tasks through the object store) beside the default, where
each read task scores its own block (read and score fused; the bundle parsed once per worker process).

Peak memory is that of this process and every Ray process it started, as PSS, read every 100 ms in an
untimed run of each path of its own (reading PSS takes CPU from what it measures: ``bench/sampling.py``).
The Ray paths' rates are the best of ``--repeats`` (2) alternated timed runs, with no sampler. Ends with one line:

    RESULT rows_per_s=<ray data> task_ratio=<ray data / ray tasks> plain_ratio=<ray data / plain> peak_pss_mb=...
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from preprocess import RayTaskRunner, cached_shards  # noqa: E402  (bench/preprocess.py)
from sampling import PeakMemory  # noqa: E402  (bench/sampling.py)


def model(work: Path, trees: int) -> Path:
    """A registered model trained without Ray on 200,000 generated rows; its verified bundle folder."""
    from raygbm.config import EvaluateConfig, RegistryConfig, TrainConfig, load_config
    from raygbm.data.generate import GeneratorSpec, generate_dataset
    from raygbm.data.preprocess import LocalRunner, preprocess
    from raygbm.registry.register import evaluate_and_register
    from raygbm.registry.store import Registry, local_bundle
    from raygbm.training.fit import Trained
    from raygbm.training.train import RunMeta, train_in_process

    generate_dataset(work / "train", GeneratorSpec(rows=200_000, shards=2, seed=5))
    cfg = load_config(None, ["data.drop=[id]"], {"data.source": str(work / "train"), "data.label": "label"})
    meta = RunMeta.load(preprocess(cfg, runner=LocalRunner()).run_dir)
    train = TrainConfig(num_boost_round=trees, early_stopping_rounds=None, params={"num_leaves": 31})
    evaluate_and_register(meta, Trained(train_in_process(meta, train), meta, None), train,
                          EvaluateConfig(permutation_rows=1000), RegistryConfig(), None)
    return local_bundle(Registry())[1]


def plain(data: Path, out: Path, bundle_dir: Path) -> int:
    """The baseline: one process, shard by shard (read, score through the bundle, write)."""
    import pyarrow.parquet as pq

    from raygbm.predict import score_table
    from raygbm.registry.bundle import Bundle

    bundle = Bundle.load(bundle_dir)
    out.mkdir(exist_ok=True)
    rows = 0
    for shard in sorted(data.glob("*.parquet")):
        scored = score_table(bundle, pq.read_table(shard))
        pq.write_table(scored, out / shard.name)
        rows += scored.num_rows
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--shards", type=int, default=10)
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2, help="warm runs of each Ray path, alternated; the best counts")
    ap.add_argument("--actors", action="store_true", help="also score in a Ray Data actor pool")
    ap.add_argument("--data-dir", default=str(ROOT / "bench" / ".data"), help="generated shards are cached here")
    args = ap.parse_args()

    data = cached_shards(Path(args.data_dir), args.rows, args.shards)
    work = Path(tempfile.mkdtemp(prefix="raygbm-bench-predict-"))
    os.environ["RAYGBM_HOME"] = str(work / "home")
    try:
        bundle = model(work, args.trees)
        os.sync()
        t = time.perf_counter()
        rows = plain(data, work / "plain", bundle)
        plain_s = time.perf_counter() - t
        os.sync()
        with PeakMemory(pss=True, pss_share=None) as mem:
            plain(data, work / "plain", bundle)
        plain_pss = mem.peak
        print(f"plain loop        : {plain_s:6.2f}s  {rows / plain_s:,.0f} rows/s  peak PSS {plain_pss:,.0f} MB", flush=True)

        from raygbm.config import ResourcesConfig
        from raygbm.data.engine import RayDataRunner
        from raygbm.predict import predict_dataset
        from raygbm.runtime import ensure_ray

        ensure_ray(ResourcesConfig())
        import ray

        cpus = int(ray.cluster_resources().get("CPU", 1))
        plan = [("ray data (cold)", None)] + [(name, runner) for _ in range(args.repeats)
                                             for name, runner in (("ray data", None), ("ray tasks", RayTaskRunner()))]
        if args.actors:
            plan += [("ray data actors", RayDataRunner(actors=cpus)), ("ray data actors", RayDataRunner(actors=cpus))]
        times: dict[str, list[float]] = {}
        peaks: dict[str, float] = {}
        for name, runner in plan:
            out = work / "scored"
            os.sync()
            t = time.perf_counter()
            result = predict_dataset(str(data), out, bundle, overwrite=True, runner=runner)
            took = time.perf_counter() - t
            assert result["rows"] == rows, result
            key = name.removesuffix(" (cold)")
            if "cold" not in name:
                times.setdefault(key, []).append(took)
            print(f"{name:18s}: {took:6.2f}s  {rows / took:,.0f} rows/s", flush=True)
        for key, runner in dict(plan).items():  # memory: an untimed run of each path
            if "cold" in key:
                continue
            os.sync()
            with PeakMemory(pss=True, pss_share=None) as mem:
                predict_dataset(str(data), work / "scored", bundle, overwrite=True, runner=runner)
            peaks[key] = mem.peak
            print(f"{key:18s}: peak PSS {mem.peak:,.0f} MB (memory run)", flush=True)
        best = {k: rows / min(v) for k, v in times.items()}
        result = {
            "rows_per_s": round(best["ray data"]),
            "task_ratio": round(best["ray data"] / best["ray tasks"], 3),
            "plain_ratio": round(best["ray data"] * plain_s / rows, 3),
            "peak_pss_mb": round(peaks["ray data"]),
            "rows": rows,
            "task_rows_per_s": round(best["ray tasks"]),
            "plain_rows_per_s": round(rows / plain_s),
            "task_peak_pss_mb": round(peaks["ray tasks"]),
            "plain_peak_pss_mb": round(plain_pss),
            "input_mb": round(sum(p.stat().st_size for p in data.iterdir()) / 2**20),
            "cpus": cpus,
        }
        if "ray data actors" in best:
            result["actors_ratio"] = round(best["ray data actors"] / best["ray data"], 3)
            result["actors_peak_pss_mb"] = round(peaks["ray data actors"])
        print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

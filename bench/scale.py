"""How far one machine goes: the data stage plus training at growing sizes, our path against plain
pyarrow + ``lgb.train`` on the same rows, each (path, size) in its own process so its peak memory is its own.

    python bench/scale.py [--sizes 1M,4M,16M,40M] [--rounds 50]

Ours: ``preprocess`` (Ray Data: validation, profile, split, fitted preprocessor, staged Parquet) then
``train_in_process`` on the training split (the path ``raygbm train`` takes for data that fits one node).
Plain: ``pyarrow.parquet.read_table`` of every shard, the categoricals dictionary-encoded, then
``lgb.train`` on the same number of training rows with the same parameters and rounds. Peak memory is
that of the process and all its children (Ray's workers included), sampled every 100 ms, as PSS (a page
shared by n processes, like a library or the object store, counts 1/n in each, so the sum is what the
tree holds); the sum of resident sets, which counts shared pages once per process, is printed beside it.
A size stops the sweep when either path fails (out of memory: killed) and says so. Ends with:

    RESULT max_rows=... bytes_per_row_ratio=<worst ours/plain> rows_per_s_ratio=<worst ours/plain> sizes=...
           marginal_bytes_per_row_ratio=<worst (ours - Ray idle)/plain>

``marginal``: our peak less what the driver and Ray's processes hold right after ``ray.init`` (a fixed
cost that does not grow with the data).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PARAMS = {"objective": "binary", "num_leaves": 63, "learning_rate": 0.1, "verbosity": -1, "num_threads": 2,
          "seed": 7}


def _rows(text: str) -> int:
    text = text.strip().upper()
    return int(float(text[:-1]) * (1_000_000 if text.endswith("M") else 1_000)) if text[-1] in "MK" else int(text)


def data_for(rows: int, cache: Path) -> Path:
    from raygbm.data.generate import GeneratorSpec, generate_dataset

    shards = max(4, rows // 1_000_000)
    data = cache / f"rows{rows}-shards{shards}"
    if not (data / f"part-{shards - 1:05d}.parquet").exists():
        generate_dataset(data, GeneratorSpec(rows=rows, shards=shards, seed=11))
    return data


def run_ours(data: Path, rounds: int) -> dict:
    from raygbm.config import TrainConfig, load_config
    from raygbm.data.preprocess import preprocess
    from raygbm.runtime import ensure_ray
    from raygbm.training.train import RunMeta, train_in_process
    from sampling import pss_tree_mb

    cfg = load_config(None, ["data.drop=[id]"], {"data.source": str(data), "data.label": "label"})
    ensure_ray(cfg.resources)
    idle_mb = pss_tree_mb(os.getpid())  # this driver and the Ray processes it started, before any data
    t = time.perf_counter()
    meta = RunMeta.load(preprocess(cfg, force=True).run_dir)
    data_s = time.perf_counter() - t
    params = {k: v for k, v in PARAMS.items() if k not in ("objective", "verbosity", "num_threads", "seed")}
    train = TrainConfig(num_boost_round=rounds, early_stopping_rounds=None, params={**params, "seed": 7})
    t = time.perf_counter()
    train_in_process(meta, train, num_threads=2)
    return {"data_s": data_s, "train_s": time.perf_counter() - t, "train_rows": meta.rows("train"), "idle_mb": idle_mb}


def run_plain(data: Path, rounds: int, train_rows: int) -> dict:
    import lightgbm as lgb
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = time.perf_counter()
    table = pq.read_table(data).drop_columns(["id"])
    cats = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    for name in cats:  # lgb.Dataset takes Arrow columns; categories as integer codes
        codes = pc.dictionary_encode(table[name]).combine_chunks().indices
        table = table.set_column(table.schema.get_field_index(name), name, codes)
    times = [f.name for f in table.schema if pa.types.is_timestamp(f.type)]
    table = table.drop_columns(times).slice(0, train_rows)
    label = table["label"].to_numpy()
    features = table.drop_columns(["label"])
    data_s = time.perf_counter() - t
    t = time.perf_counter()
    lgb.train(PARAMS, lgb.Dataset(features, label=label, categorical_feature=cats), num_boost_round=rounds)
    return {"data_s": data_s, "train_s": time.perf_counter() - t, "train_rows": train_rows}


def measure(path: str, data: Path, rounds: int, train_rows: int) -> dict | None:
    """One (path, size) in a child process: its result and the peak memory of its process tree."""

    out = Path(tempfile.mkdtemp(prefix="raygbm-scale-")) / "result.json"
    child = subprocess.Popen([sys.executable, __file__, "--child", path, str(data), str(rounds), str(train_rows),
                              str(out)], env={**os.environ, "RAYGBM_HOME": str(out.parent / "home")})
    from sampling import PeakMemory

    # PSS read near the RSS sum's peak only, at most 5% of the time (bench/sampling.py: reading PSS every
    # 100 ms took a core from the process measured).
    with PeakMemory(child.pid, pss=True, pss_share=0.05) as mem:
        child.wait()
    peak, peak_rss = mem.peak_pss, mem.peak_rss
    if child.returncode != 0 or not out.exists():
        print(f"{path}: failed with exit code {child.returncode} (peak {peak:,.0f} MB)", flush=True)
        return None
    result = json.loads(out.read_text())
    return {**result, "peak_mb": peak, "peak_rss_mb": peak_rss}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        path, data, rounds, train_rows, out = sys.argv[2:7]
        fn = run_ours if path == "ours" else run_plain
        result = fn(Path(data), int(rounds)) if path == "ours" else fn(Path(data), int(rounds), int(train_rows))
        Path(out).write_text(json.dumps(result))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1M,4M,16M,40M")
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--data-dir", default=str(ROOT / "bench" / ".data"), help="generated shards are cached here")
    args = ap.parse_args()
    done, bytes_ratios, rps_ratios, marginal_ratios = [], [], [], []
    for size in [_rows(s) for s in args.sizes.split(",")]:
        data = data_for(size, Path(args.data_dir))
        ours = measure("ours", data, args.rounds, 0)
        if ours is None:
            print(f"{size:,} rows: our path did not finish; the sweep stops here")
            break
        plain = measure("plain", data, args.rounds, ours["train_rows"])
        ours_s = ours["data_s"] + ours["train_s"]
        line = (f"{size:>11,} rows  ours {ours_s:7.1f}s ({ours['data_s']:.1f} data + {ours['train_s']:.1f} train) "
                f"{size / ours_s:9,.0f} rows/s peak {ours['peak_mb']:8,.0f} MB ({ours['peak_mb'] * 2**20 / size:6.0f} B/row; "
                f"RSS sum {ours['peak_rss_mb']:,.0f} MB)")
        if plain is None:
            print(line + "  |  plain: failed (out of memory?)", flush=True)
            done.append(size)
            continue
        plain_s = plain["data_s"] + plain["train_s"]
        bytes_ratios.append(ours["peak_mb"] / plain["peak_mb"])
        marginal_ratios.append((ours["peak_mb"] - ours["idle_mb"]) / plain["peak_mb"])
        rps_ratios.append(plain_s / ours_s)
        print(line + f"  |  plain {plain_s:7.1f}s ({plain['data_s']:.1f} + {plain['train_s']:.1f}) {size / plain_s:9,.0f} rows/s peak {plain['peak_mb']:8,.0f} MB "
              f"({plain['peak_mb'] * 2**20 / size:6.0f} B/row)  ratios bytes {bytes_ratios[-1]:.2f} rows/s "
              f"{rps_ratios[-1]:.2f} (bytes over Ray's idle {ours['idle_mb']:,.0f} MB: {marginal_ratios[-1]:.2f})", flush=True)
        done.append(size)
    print(f"RESULT max_rows={max(done) if done else 0} bytes_per_row_ratio={max(bytes_ratios, default=float('nan')):.3f} "
          f"rows_per_s_ratio={min(rps_ratios, default=float('nan')):.3f} sizes={','.join(str(s) for s in done)} "
          f"rounds={args.rounds} marginal_bytes_per_row_ratio={max(marginal_ratios, default=float('nan')):.3f}")


if __name__ == "__main__":
    main()

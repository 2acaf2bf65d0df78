"""Tuning throughput: the wall time of a 16-trial Ray Tune search (Optuna TPE + ASHA, in-process trials)
against the ideal, the sum of the trials' own times divided by the concurrency, in one run.

    python bench/tune.py [--rows 1000000] [--trials 16] [--rounds 300]

The ideal is what a perfect scheduler with no per-trial overhead would take for the same trials; the
ratio shows what Tune's scheduling, actor start-up and reporting cost. Also reports the share of trials
ASHA stopped early. Ends with:

    RESULT ideal_ratio=<wall / ideal> early_stopped_frac=... wall_s=... ideal_s=... trials=... concurrency=...
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--sample-rows", type=int, default=200_000)
    args = ap.parse_args()

    from raygbm.config import load_config
    from raygbm.data.generate import GeneratorSpec, generate_dataset
    from raygbm.data.preprocess import preprocess
    from raygbm.runtime import ensure_ray
    from raygbm.training.train import RunMeta
    from raygbm.training.tune import tune_search

    work = Path(tempfile.mkdtemp(prefix="raygbm-bench-tune-"))
    os.environ["RAYGBM_HOME"] = str(work / "home")
    try:
        generate_dataset(work / "data", GeneratorSpec(rows=args.rows, shards=8, seed=11))
        cfg = load_config(None, ["data.drop=[id]", f"tune.trials={args.trials}", f"train.num_boost_round={args.rounds}",
                                 f"tune.sample_rows={args.sample_rows}"],
                          {"data.source": str(work / "data"), "data.label": "label"})
        ensure_ray(cfg.resources)
        meta = RunMeta.load(preprocess(cfg).run_dir)
        r = tune_search(meta, cfg.train, cfg.tune, cfg.resources, progress=lambda m: print(m, flush=True))
        trial_s = sum(t["time_s"] for t in r.trials)
        ideal = trial_s / r.concurrency
        stopped = sum(t["status"] == "stopped early" for t in r.trials) / len(r.trials)
        for t in sorted(r.trials, key=lambda t: -t["time_s"]):
            print(f"  trial {t['trial_id']}: {t['status']:<13} {t['iterations']:4d} rounds {t['time_s']:6.2f}s score {t['score']:.5f}")
        print(f"tuner.fit {r.fit_s:.1f}s for {len(r.trials)} trials, {r.concurrency} at a time; ideal {ideal:.1f}s "
              f"(sum of trial times {trial_s:.1f}s / {r.concurrency}); {stopped:.0%} stopped early by ASHA")
        print(f"RESULT ideal_ratio={r.fit_s / ideal:.3f} early_stopped_frac={stopped:.3f} wall_s={r.fit_s:.2f} "
              f"ideal_s={ideal:.2f} trials={len(r.trials)} concurrency={r.concurrency} best_score={r.best_score:.5f} "
              f"rows={args.rows} sample_rows={args.sample_rows}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

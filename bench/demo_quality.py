"""The demo's acceptance run: the demo pipeline (`pipelines/configs/demo.yaml`: time split, derived features,
16 TPE trials tuned on a 200k-row sample, the final fit on all 700k training rows) on 1M generated rows,
against plain `LGBMClassifier()` defaults fitted on the same training rows, on the same test rows.

    python bench/demo_quality.py [--rows 1000000] [--trials 16]

Takes several minutes on 2 cores (it was an integration test; `make test` keeps the same comparison on
smaller data in tests/integration/test_pipeline.py and on the real-data corpus). On this data every good
configuration lands within ~0.002 test AUC of the others (tuned runs: 0.8444-0.8461 against 0.8457 for
the defaults). Ends with:

    RESULT delta=<ours − defaults test AUC> ours_auc=... defaults_auc=... trials=... test_rows=... wall_s=...
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--trials", type=int, default=16)
    args = ap.parse_args()

    import numpy as np
    from lightgbm import LGBMClassifier
    from sklearn.metrics import roc_auc_score

    from raygbm.config import load_config
    from raygbm.pipeline import run_pipeline
    from raygbm.runtime import ensure_ray
    from raygbm.training.train import RunMeta
    from tests.conftest import make_shards

    work = Path(tempfile.mkdtemp(prefix="raygbm-bench-demo-"))
    os.environ["RAYGBM_HOME"] = str(work / "home")
    try:
        data = make_shards(work / "data", rows=args.rows, shards=8, seed=7)
        # One trial at a time: TPE and ASHA then see results in a fixed order, so the run is reproducible.
        cfg = load_config(ROOT / "pipelines" / "configs" / "demo.yaml",
                          ["resources.max_concurrent_trials=1", f"tune.trials={args.trials}"], {"data.source": str(data)})
        ensure_ray(cfg.resources, cfg.serve)
        t0 = time.perf_counter()
        outcome, tuning = run_pipeline(cfg)
        wall = time.perf_counter() - t0
        meta = RunMeta.load(next((work / "home" / "runs").glob("preprocess-*")))
        tr, te = meta.split("train"), meta.split("test")
        cols = [c for c in tr.column_names if c != meta.label]

        def matrix(t):
            return np.column_stack([np.asarray(t[c], dtype=np.float64) for c in cols])

        clf = LGBMClassifier(random_state=0, verbose=-1).fit(
            matrix(tr), np.asarray(tr[meta.label]), categorical_feature=[cols.index(c) for c in meta.categorical])
        defaults = roc_auc_score(np.asarray(te[meta.label]), clf.predict_proba(matrix(te))[:, 1])
        ours = outcome.metrics["roc_auc"]
        print(f"ours {ours:.5f}  defaults {defaults:.5f}  ({len(tuning.trials)} trials, {wall:.0f} s)")
        print(f"RESULT delta={ours - defaults:.5f} ours_auc={ours:.5f} defaults_auc={defaults:.5f} "
              f"trials={len(tuning.trials)} test_rows={outcome.metrics['test_rows']:.0f} wall_s={wall:.0f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

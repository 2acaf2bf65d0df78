"""What the fold ensemble (``train.ensemble``) costs in scoring time, against the refit it replaces.

    python bench/ensemble_latency.py

On three corpus datasets (``bench/corpus.py``): five fold models early-stopped on their folds, averaged into
one LightGBM model (``raygbm.training.ensemble.average_models``), against one model refit on every row for
the folds' mean best round. Both score one row (median of 2,000 calls) and up to 5,000 rows (median of 20),
one thread, as the endpoint does. Ends with

    RESULT one_row_ratio=<median over datasets> batch_ratio=<median> ...
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.corpus import datasets  # noqa: E402
from raygbm.training.ensemble import average_models  # noqa: E402
from raygbm.training.select import fold_indices  # noqa: E402


def _median_us(booster: lgb.Booster, X: np.ndarray, calls: int) -> float:
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        booster.predict(X, num_threads=1)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e6)


def main() -> None:
    one, batch = [], []
    for name, objective in (("breast_cancer", "binary"), ("fair", "binary"), ("randhie", "regression")):
        spec = next(s for s in datasets() if s.name == name)
        t = spec.load(0)
        X = np.column_stack([np.asarray(t.column(c).cast(pa.float64()).fill_null(np.nan))
                             for c in t.column_names if c != spec.label])
        y = np.asarray(t.column(spec.label).cast(pa.float64()))
        params = {"objective": objective, "verbose": -1, "num_threads": 1}
        models, rounds = [], []
        for held in fold_indices(y, 5, 1, objective != "regression"):
            fit = np.setdiff1d(np.arange(len(y)), held)
            b = lgb.train(params, lgb.Dataset(X[fit], y[fit]), 1000, valid_sets=[lgb.Dataset(X[held], y[held])],
                          callbacks=[lgb.early_stopping(50, verbose=False)])
            models.append(b.model_to_string(num_iteration=b.best_iteration))
            rounds.append(b.best_iteration)
        refit = lgb.train(params, lgb.Dataset(X, y), int(round(np.mean(rounds))))
        ensemble = lgb.Booster(model_str=average_models(models))
        rows = min(len(y), 5000)
        r1, e1 = _median_us(refit, X[:1], 2000), _median_us(ensemble, X[:1], 2000)
        rb, eb = _median_us(refit, X[:rows], 20), _median_us(ensemble, X[:rows], 20)
        one.append(e1 / r1)
        batch.append(eb / rb)
        print(f"{name}: trees {refit.num_trees()} (refit) vs {ensemble.num_trees()} (ensemble); one row {r1:.0f} vs "
              f"{e1:.0f} us ({e1 / r1:.2f}x); {rows:,} rows {rb / 1000:.1f} vs {eb / 1000:.1f} ms ({eb / rb:.2f}x)",
              flush=True)
    print(f"RESULT one_row_ratio={float(np.median(one)):.2f} batch_ratio={float(np.median(batch)):.2f} "
          f"one_row_ratio_max={max(one):.2f} batch_ratio_max={max(batch):.2f}")


if __name__ == "__main__":
    main()

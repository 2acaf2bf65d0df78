"""CBPE accuracy offline: train LightGBM on generated rows (80%), fit the calibration on the last 10%, and compare
the estimated with the realized AUC on 10 windows of fresh rows. Usage: bench/cbpe_accuracy.py TRAIN_ROWS WINDOW [SEED]
(prints the gaps with raygbm's calibration map, Platt; then a scikit-learn Platt fit's and the raw scores' mean gap and windows within 0.03)."""
import sys
import tempfile

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raygbm.data.generate import CATEGORICAL, NUMERIC, GeneratorSpec, generate_dataset
from raygbm.metrics import realized_metrics
from raygbm.monitoring.performance import CalibrationMap, estimated_metrics, performance_reference

train_rows = int(sys.argv[1]); W = int(sys.argv[2]); seed = int(sys.argv[3]) if len(sys.argv) > 3 else 11
CATS = {}
def load(rows, s):
    d = tempfile.mkdtemp()
    generate_dataset(d, GeneratorSpec(rows=rows, shards=1, seed=s))
    t = pq.read_table(d)
    for c in CATEGORICAL:
        CATS.setdefault(c, pa.array(sorted(set(t[c].drop_null().to_pylist()))))
    X = np.column_stack([np.asarray(t[c].to_numpy(zero_copy_only=False), dtype=float) for c in NUMERIC] +
                        [np.asarray(pa.compute.index_in(t[c], value_set=pa.array(sorted(set(t[c].drop_null().to_pylist())) if c not in CATS else CATS[c])).fill_null(-1)) for c in CATEGORICAL])
    return X, np.asarray(t["label"])
X, y = load(train_rows, seed)
n = len(y); tr = int(0.8 * n); te = int(0.9 * n)
b = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(X[:tr], y[:tr]), 60)
ref = performance_reference("binary", y[te:], b.predict(X[te:]), 0.5, W)
cal = CalibrationMap.from_json(ref["calibration"])
Xf, yf = load(10 * W, seed + 1)
s = b.predict(Xf)
gaps = []
for k in range(10):
    sl = slice(k * W, (k + 1) * W)
    e = estimated_metrics(cal(s[sl]), s[sl], 0.5)["roc_auc"]; r = realized_metrics("binary", yf[sl], s[sl])["roc_auc"]
    gaps.append(e - r)
print(len(y[te:]), "test rows; gaps:", np.round(gaps, 4), "within 0.03:", sum(abs(g) <= 0.03 for g in gaps), "mean", np.mean(gaps))
from sklearn.linear_model import LogisticRegression

ps = b.predict(X[te:]); lg = lambda p: np.log(np.clip(p,1e-6,1-1e-6)/(1-np.clip(p,1e-6,1-1e-6)))
lr = LogisticRegression(C=1e6).fit(lg(ps)[:, None], y[te:])
g2 = []
for k in range(10):
    sl = slice(k * W, (k + 1) * W)
    q = lr.predict_proba(lg(s[sl])[:, None])[:, 1]
    g2.append(estimated_metrics(q, s[sl], 0.5)["roc_auc"] - realized_metrics("binary", yf[sl], s[sl])["roc_auc"])
g3 = [estimated_metrics(s[k*W:(k+1)*W], s[k*W:(k+1)*W], 0.5)["roc_auc"] - realized_metrics("binary", yf[k*W:(k+1)*W], s[k*W:(k+1)*W])["roc_auc"] for k in range(10)]
print("platt", np.round(np.mean(g2),4), sum(abs(g) <= 0.03 for g in g2), "raw", np.round(np.mean(g3),4), sum(abs(g) <= 0.03 for g in g3), lr.coef_, lr.intercept_)
print(f"RESULT windows_within_0.03={sum(abs(g) <= 0.03 for g in gaps)} windows=10 max_abs_gap={max(abs(g) for g in gaps):.4f} "
      f"mean_gap={np.mean(gaps):.4f} raw_scores_within_0.03={sum(abs(g) <= 0.03 for g in g3)}")

"""The monitor-side cost of the prediction log: rows/s logged (single-record JSON requests, tables), the
replica-side cost of table ids, and a join lookup against a large log. No Ray: ./.venv/bin/python bench/prediction_log.py"""
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from raygbm.monitoring.prediction_log import PredictionLog, RawRows
from raygbm.serving.model_slot import table_ids

fields = [f"num_{i}" for i in range(12)] + [f"cat_{i}" for i in range(5)]
types = {**{f"num_{i}": "double" for i in range(12)}, **{f"cat_{i}": "string" for i in range(5)}}
rec = {**{f"num_{i}": 0.5 * i for i in range(12)}, **{f"cat_{i}": f"v{i}" for i in range(5)}}
log = PredictionLog(Path(tempfile.mkdtemp()), fields, types, flush_s=5, max_rows=200_000)
body = json.dumps(rec).encode()
n = 20_000
t = time.perf_counter()
for k in range(0, n, 64):  # a monitor batch: 64 single-record requests
    parts = [RawRows(body=body, ids=[f"{k}-{j}"]) for j in range(64)]
    log.add("1", time.time(), parts, np.full(64, 0.3), np.zeros(64, int))
log.flush()
dt = time.perf_counter() - t
print(f"single-record JSON requests: {n / dt:,.0f} rows/s logged by the monitor")
table = pa.table({f: pa.array(np.random.random(100_000)) if f.startswith("num") else pa.array(["a"] * 100_000) for f in fields})
t = time.perf_counter(); ids = table_ids(100_000); d1 = time.perf_counter() - t
t = time.perf_counter()
for _ in range(5):
    log.add("1", time.time(), [RawRows(table=table, ids=table_ids(100_000))], np.full(100_000, 0.3), np.zeros(100_000, int))
log.flush()
d2 = time.perf_counter() - t
print(f"table ids: {d1 * 1000:.1f} ms per 100k rows (replica); table rows logged: {500_000 / d2:,.0f} rows/s")
t = time.perf_counter(); q = pa.array([f"{k}-{j}" for k in range(0, 1000, 64) for j in range(64)][:1000]); pos = log.lookup(q); d3 = time.perf_counter() - t
print(f"lookup of 1,000 ids in a {log.summary()['logged_predictions']:,}-row log: {d3 * 1000:.1f} ms")
print(f"RESULT json_rows_per_s={n / dt:.0f} table_rows_per_s={500_000 / d2:.0f} lookup_1000_ms={d3 * 1000:.1f}")

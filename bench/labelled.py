"""The labelled store under re-labelling: one prediction labelled 1,500 times (a client retrying, or
correcting itself), read as the loop reads it every ``retrain.check_s``. Our store (compaction past
``COMPACT_AT`` parts) beside the same store without compaction, in one run.

    python bench/labelled.py [--relabels 1500] [--rows 2000]

Ends with ``RESULT first_read_s=... read_s=... ratio=... uncompacted_read_s=... uncompacted_ratio=...
parts=... uncompacted_parts=...``: ratio is the last read's time over the first read's (the goal: ≤ 2).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from raygbm.monitoring.labelled import (  # noqa: E402
    COMPACT_AT,
    LABELLED_AT,
    MODEL_VERSION,
    PREDICTION_ID,
    SCORE,
    SERVED_AT,
    labelled_dir,
    read_labelled,
    write_labelled,
)


def rows(ids: list[str], labelled_at: float) -> pa.Table:
    n = len(ids)
    rng = np.random.default_rng(len(ids))
    return pa.table({**{f"num_{i}": rng.normal(size=n) for i in range(8)}, "label": rng.integers(0, 2, n),
                     PREDICTION_ID: ids, MODEL_VERSION: ["1"] * n, SERVED_AT: np.arange(n, dtype=float),
                     LABELLED_AT: [labelled_at] * n, SCORE: rng.random(n)})


def read_s(root: Path, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        read_labelled(root, "m")
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run(root: Path, relabels: int, n: int, compact_at: int) -> tuple[float, float, int]:
    write_labelled(root, "m", rows([f"id-{i}" for i in range(n)], 1.0), compact_at=compact_at)  # the traffic
    first = read_s(root)
    for i in range(relabels):
        write_labelled(root, "m", rows(["id-0"], 2.0 + i), compact_at=compact_at)
    return first, read_s(root), len(list(labelled_dir(root, "m").glob("part-*.parquet")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--relabels", type=int, default=1500)
    ap.add_argument("--rows", type=int, default=2000, help="labelled rows before the re-labelling")
    args = ap.parse_args()
    read_labelled(Path(tempfile.gettempdir()), "warm-imports")
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        first, last, parts = run(Path(a), args.relabels, args.rows, compact_at=COMPACT_AT)
        u_first, u_last, u_parts = run(Path(b), args.relabels, args.rows, compact_at=10**9)
    print(f"ours:         first read {first * 1000:.1f} ms, after {args.relabels:,} re-labels {last * 1000:.1f} ms "
          f"({parts} parts)")
    print(f"uncompacted:  first read {u_first * 1000:.1f} ms, after {args.relabels:,} re-labels {u_last * 1000:.1f} ms "
          f"({u_parts} parts)")
    print(f"RESULT first_read_s={first:.4f} read_s={last:.4f} ratio={last / first:.2f} uncompacted_read_s={u_last:.4f} "
          f"uncompacted_ratio={u_last / u_first:.1f} parts={parts} uncompacted_parts={u_parts}")


if __name__ == "__main__":
    main()

"""A dataset with every Arrow column type the data stage accepts, each with missing values, and a label of
each kind the task rule accepts: the type-matrix tests feed it through every surface."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# Feature columns by Arrow type (each has about 5% nulls). The label ``y`` depends on x_num, x_cat and x_int.
LABELS = ("y_int", "y_bool", "y_str", "y_class", "y_float")


def type_matrix(rows: int = 3000, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows)
    cat = rng.choice(["red", "green", "blue", "amber"], rows)
    small = rng.integers(0, 5, rows)
    signal = x + (cat == "red") * 1.5 - (small == 3) * 1.0 + rng.normal(scale=0.5, size=rows)
    null = lambda: rng.random(rows) < 0.05  # noqa: E731

    def col(values, typ):
        return pa.array(values, typ, mask=null())

    def repeating(values):
        """Wide-range integers as a feature holds them: drawn again from the first 250 (index: the value
        mod 250), so they repeat. All different, they would be identifier-like and left out."""
        return values[np.asarray(values % 250, dtype=np.int64)]

    t0 = datetime(2024, 1, 1)
    stamps = [t0 + timedelta(hours=int(h)) for h in rng.integers(0, 24 * 365, rows)]
    cols = {
        "x_int8": col(rng.integers(-100, 100, rows), pa.int8()),
        "x_int16": col(rng.integers(-1000, 1000, rows), pa.int16()),
        "x_int32": col(small, pa.int32()),
        "x_int64": col(repeating(rng.integers(-10**12, 10**12, rows)), pa.int64()),
        "x_uint8": col(rng.integers(0, 255, rows), pa.uint8()),
        "x_uint16": col(rng.integers(0, 65535, rows), pa.uint16()),
        "x_uint32": col(repeating(rng.integers(0, 2**32 - 1, rows)), pa.uint32()),
        "x_uint64": col(repeating(rng.integers(0, 2**62, rows, dtype=np.uint64)), pa.uint64()),
        "x_float32": col(x.astype(np.float32), pa.float32()),
        "x_num": col(x, pa.float64()),
        "x_bool": col(rng.random(rows) < 0.3, pa.bool_()),
        "x_str": col(rng.choice(["a", "b", "c"], rows), pa.string()),
        "x_large_str": col(rng.choice(["p", "q"], rows), pa.large_string()),
        "x_cat": pa.array(cat, mask=null()).dictionary_encode().cast(pa.dictionary(pa.int8(), pa.string())),
        "x_int_cat": pa.array(small * 10, pa.int64(), mask=null()).dictionary_encode(),
        "x_ts": col(stamps, pa.timestamp("us")),
        "x_ts_tz": col(stamps, pa.timestamp("ms", tz="Europe/Paris")),
        "x_date": col([s.date() for s in stamps], pa.date32()),
    }
    cols["y_int"] = pa.array((signal > 0).astype(np.int64))
    cols["y_bool"] = pa.array(signal > 0)
    cols["y_str"] = pa.array(np.where(signal > 0, "yes", "no"))
    cols["y_class"] = pa.array(np.select([signal < -0.5, signal < 0.7], ["low", "mid"], "high"))
    cols["y_float"] = pa.array(signal * 3.0 + 10.0)
    return pa.table(cols)


def write_type_matrix(out: Path, label: str, rows: int = 3000, seed: int = 0, shards: int = 2) -> Path:
    """The matrix with one label (the others dropped) as ``shards`` Parquet files under ``out``."""
    table = type_matrix(rows, seed)
    table = table.drop_columns([c for c in LABELS if c != label])
    out.mkdir(parents=True, exist_ok=True)
    step = -(-rows // shards)
    for i in range(shards):
        pq.write_table(table.slice(i * step, step), out / f"part-{i}.parquet")
    return out


# Times are features through derived features (a raw timestamp is not a model input by itself).
DERIVED = ("[{name: ts_hour, op: hour, inputs: [x_ts]}, {name: tz_dow, op: dayofweek, inputs: [x_ts_tz]},"
           " {name: d_month, op: month, inputs: [x_date]}]")


def json_records(table: pa.Table, fields) -> list[dict]:
    """Rows as /predict's JSON records: times and dates as ISO text, nulls as None."""
    cols = {c: table.column(c).to_pylist() for c in fields}
    return [{c: (v.isoformat() if hasattr(v, "isoformat") else v) for c, v in zip(cols, row)}
            for row in zip(*cols.values())]


def write_pandas_categoricals(out: Path, rows: int = 3000, seed: int = 0) -> Path:
    """What pandas users write: ``category`` columns, a nullable Int64, a nullable boolean and a float."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"age": rng.normal(40, 10, rows),
                       "edu": pd.Categorical(rng.choice(["hs", "college", "phd"], rows)),
                       "sex": pd.Categorical(rng.choice(["m", "f"], rows)),
                       "kids": pd.array(rng.integers(0, 4, rows), dtype="Int64"),
                       "owner": pd.array(rng.random(rows) < 0.4, dtype="boolean")})
    df.loc[rng.random(rows) < 0.05, "kids"] = pd.NA
    df.loc[rng.random(rows) < 0.05, "owner"] = pd.NA
    df["y"] = ((df.age > 40) ^ (df.edu == "phd")).astype(int)
    out.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out / "part-0.parquet")
    return out

"""Synthetic tabular data: numeric and categorical columns, missing values, a learnable non-linear signal,
a configurable class balance, a timestamp, and optional drift from a given row or time on.

Rows are produced in fixed global chunks, each seeded by ``(seed, chunk index)``: the same seed gives the
same rows whatever the shard count, and shards are written one row group at a time, so 50M rows never sit
in memory at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raygbm.errors import ConfigError

CHUNK_ROWS = 65_536
LABEL = "label"
KEY = "id"
TIME = "event_time"
NUMERIC = [f"num_{i}" for i in range(12)]
CATEGORICAL = ["cat_0", "cat_1", "cat_2", "cat_3", "cat_4"]
_CARDINALITY = {"cat_0": 8, "cat_1": 30, "cat_2": 4, "cat_3": 100, "cat_4": 3}
_MISSING = {"num_0": 0.01, "num_6": 0.10, "num_7": 0.03, "cat_3": 0.05}
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
SECONDS_PER_ROW = 15  # 1M rows span about six months
# What drift changes, so monitoring tests know which features must (and must not) be flagged.
DRIFT_SHIFTED_NUMERIC = ["num_1", "num_2"]
DRIFT_SHIFTED_CATEGORICAL = ["cat_0"]


@dataclass(frozen=True)
class DriftSpec:
    """Drift applied to every row with index >= ``start_row``."""

    start_row: int
    shift: float = 1.5  # numeric mean shift, in standard deviations
    categories: bool = True  # cat_0 frequencies reversed
    concept: bool = False  # the num_0 effect flips sign

    @classmethod
    def at_time(cls, when: datetime, **kw: object) -> "DriftSpec":
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        row = int((when - START).total_seconds() // SECONDS_PER_ROW)
        return cls(start_row=max(row, 0), **kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class GeneratorSpec:
    rows: int
    shards: int = 1
    seed: int = 0
    task: str = "binary"
    positive_rate: float = 0.3
    num_classes: int = 3
    drift: DriftSpec | None = None
    row_group_rows: int = 262_144
    _intercept: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        if self.rows < 1 or self.shards < 1 or self.shards > self.rows:
            raise ConfigError("generate: need rows >= shards >= 1")
        if self.task not in ("binary", "multiclass", "regression"):
            raise ConfigError(f"generate: task must be binary, multiclass or regression, not {self.task!r}")
        if not 0.0 < self.positive_rate < 1.0:
            raise ConfigError("generate: positive-rate must be between 0 and 1")


def _category_names(col: str) -> pa.Array:
    return pa.array([f"{col}_{j:03d}" for j in range(_CARDINALITY[col])], pa.string())


def _category_probs(col: str, reverse: bool = False) -> np.ndarray:
    k = _CARDINALITY[col]
    w = 1.0 / np.arange(1, k + 1) ** 1.1  # a Zipf-like long tail, as real categories have
    if reverse:
        w = w[::-1]
    return w / w.sum()


def _effects(col: str) -> np.ndarray:
    """Fixed per-category effect on the target (independent of the data seed: it is the 'world')."""
    rng = np.random.default_rng(sum(map(ord, col)))
    return rng.normal(0.0, 0.8, _CARDINALITY[col])


def _features(rng: np.random.Generator, n: int, drifted: np.ndarray, spec: GeneratorSpec) -> dict[str, np.ndarray]:
    x = {c: rng.normal(0.0, 1.0, n) for c in NUMERIC}
    x["num_3"] = rng.uniform(0.0, 1.0, n)
    x["num_8"] = rng.lognormal(0.0, 1.0, n) * 100.0  # skewed, like amounts
    x["num_11"] = rng.integers(18, 90, n).astype(np.float64)  # integral, like ages
    if spec.drift is not None and drifted.any():
        for c in DRIFT_SHIFTED_NUMERIC:
            x[c] = x[c] + np.where(drifted, spec.drift.shift, 0.0)
    for c in CATEGORICAL:
        idx = rng.choice(_CARDINALITY[c], size=n, p=_category_probs(c))
        if spec.drift is not None and spec.drift.categories and c in DRIFT_SHIFTED_CATEGORICAL and drifted.any():
            alt = rng.choice(_CARDINALITY[c], size=n, p=_category_probs(c, reverse=True))
            idx = np.where(drifted, alt, idx)
        x[c] = idx
    return x


def _signal(x: dict[str, np.ndarray], drifted: np.ndarray, spec: GeneratorSpec) -> np.ndarray:
    sign0 = np.where(drifted, -1.0, 1.0) if spec.drift is not None and spec.drift.concept else 1.0
    return (
        1.2 * sign0 * np.sin(2.0 * x["num_0"])
        + 0.8 * x["num_1"] * x["num_2"]
        + 1.0 * (x["num_3"] > 0.6)
        - 0.35 * x["num_4"] ** 2
        + 0.5 * np.log1p(x["num_8"]) / 3.0
        + 0.6 * x["num_5"] * (x["cat_2"] == 1)
        + 0.02 * (x["num_11"] - 50.0)
        + _effects("cat_0")[x["cat_0"]]
        + _effects("cat_1")[x["cat_1"]]
        + 0.5 * _effects("cat_3")[x["cat_3"]]
    )


def _calibrate_intercept(spec: GeneratorSpec) -> float:
    """Intercept giving the requested positive rate, found on a fixed calibration sample."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 2**31]))
    n = 200_000
    none = np.zeros(n, dtype=bool)
    s = _signal(_features(rng, n, none, spec), none, spec) + rng.logistic(0.0, 1.0, n)
    return float(-np.quantile(s, 1.0 - spec.positive_rate))


def _chunk(spec: GeneratorSpec, intercept: float, chunk: int) -> pa.Table:
    start = chunk * CHUNK_ROWS
    n = min(CHUNK_ROWS, spec.rows - start)
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, chunk]))
    rows = np.arange(start, start + n, dtype=np.int64)
    drifted = rows >= spec.drift.start_row if spec.drift is not None else np.zeros(n, dtype=bool)
    x = _features(rng, n, drifted, spec)
    s = _signal(x, drifted, spec)
    if spec.task == "binary":
        label = pa.array((s + intercept + rng.logistic(0.0, 1.0, n) > 0).astype(np.int64))
    elif spec.task == "multiclass":
        k = spec.num_classes
        scores = np.stack([s * (j - (k - 1) / 2.0) + rng.gumbel(0.0, 1.0, n) for j in range(k)], axis=1)
        label = pa.array(np.argmax(scores, axis=1).astype(np.int64))
    else:
        label = pa.array(10.0 * s + 50.0 + rng.normal(0.0, 1.0, n))
    start_us = int(START.timestamp() * 1_000_000)
    cols: dict[str, pa.Array] = {
        KEY: pa.array(rows),
        TIME: pa.array(start_us + rows * SECONDS_PER_ROW * 1_000_000, pa.timestamp("us", tz="UTC")),
    }
    for c in NUMERIC:
        mask = rng.random(n) < _MISSING[c] if c in _MISSING else None
        cols[c] = pa.array(x[c], pa.float64(), mask=mask)
    for c in CATEGORICAL:
        values = pc.take(_category_names(c), pa.array(x[c].astype(np.int32)))
        if c in _MISSING:
            values = pc.if_else(pa.array(rng.random(n) < _MISSING[c]), pa.scalar(None, pa.string()), values)
        cols[c] = values
    cols[LABEL] = label
    return pa.table(cols)


def generate_dataset(out: str | Path, spec: GeneratorSpec) -> list[Path]:
    """Write ``spec.shards`` Parquet shards to ``out`` and return their paths.

    Each shard is written under a hidden temporary name and renamed when complete, so a crash never
    leaves a half-written shard that looks real.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    intercept = _calibrate_intercept(spec) if spec.task == "binary" else 0.0
    bounds = np.linspace(0, spec.rows, spec.shards + 1).round().astype(np.int64)
    paths: list[Path] = []
    for s in range(spec.shards):
        lo, hi = int(bounds[s]), int(bounds[s + 1])
        final = out / f"part-{s:05d}.parquet"
        tmp = out / f".{final.name}.tmp"
        writer: pq.ParquetWriter | None = None
        pending: list[pa.Table] = []
        pending_rows = 0
        try:
            for chunk in range(lo // CHUNK_ROWS, (hi - 1) // CHUNK_ROWS + 1):
                table = _chunk(spec, intercept, chunk)
                first = chunk * CHUNK_ROWS
                table = table.slice(max(lo - first, 0), min(hi, first + table.num_rows) - max(lo, first))
                pending.append(table)
                pending_rows += table.num_rows
                if pending_rows >= spec.row_group_rows:
                    writer = writer or pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(pa.concat_tables(pending), row_group_size=spec.row_group_rows)
                    pending, pending_rows = [], 0
            if pending:
                writer = writer or pq.ParquetWriter(tmp, pending[0].schema)
                writer.write_table(pa.concat_tables(pending), row_group_size=spec.row_group_rows)
        finally:
            if writer is not None:
                writer.close()
        os.replace(tmp, final)
        paths.append(final)
    return paths

"""Mergeable column statistics: computed per Ray Data block, merged in the driver.

Counts, sums, extremes and category frequencies are exact; quantiles come from a deterministic row
sample (rows chosen by a hash of their content, so the sample does not depend on how shards are cut).
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Cap on distinct values tracked per categorical column and block, so a free-text column cannot blow up
# the driver; the report says when a column hit it.
MAX_TRACKED_CATEGORIES = 100_000
# A numeric label's distinct values are kept while there are at most this many (to tell a 0.0/1.0 or an
# integral few-class label from a continuous one); past it they are dropped and the label is continuous.
MAX_TRACKED_LABEL_VALUES = 64


@dataclass
class NumericStats:
    count: int = 0  # non-null, non-NaN values
    nulls: int = 0  # null or NaN
    nonfinite: int = 0  # +-inf
    total: float = 0.0
    total_sq: float = 0.0
    min: float = float("inf")
    max: float = float("-inf")
    below: int = 0  # under the declared bound
    above: int = 0
    sample: np.ndarray = field(default_factory=lambda: np.empty(0))
    distinct: list[float] | None = None  # finite values, sorted, when tracked and few (labels only)

    def merge(self, o: "NumericStats") -> None:
        self.count += o.count
        self.nulls += o.nulls
        self.nonfinite += o.nonfinite
        self.total += o.total
        self.total_sq += o.total_sq
        self.min = min(self.min, o.min)
        self.max = max(self.max, o.max)
        self.below += o.below
        self.above += o.above
        self.sample = np.concatenate([self.sample, o.sample])
        both = None if self.distinct is None or o.distinct is None else sorted(set(self.distinct) | set(o.distinct))
        self.distinct = both if both is not None and len(both) <= MAX_TRACKED_LABEL_VALUES else None

    @property
    def mean(self) -> float | None:
        finite = self.count - self.nonfinite
        return self.total / finite if finite else None

    @property
    def std(self) -> float | None:
        finite = self.count - self.nonfinite
        if finite < 2:
            return None
        var = max(self.total_sq / finite - (self.total / finite) ** 2, 0.0)
        return float(np.sqrt(var * finite / (finite - 1)))

    def quantiles(self, qs: list[float]) -> list[float | None]:
        if self.sample.size == 0:
            return [None for _ in qs]
        return [float(v) for v in np.quantile(self.sample, qs, method="linear")]


@dataclass
class CategoricalStats:
    nulls: int = 0
    counts: Counter = field(default_factory=Counter)
    truncated: bool = False

    def merge(self, o: "CategoricalStats") -> None:
        self.nulls += o.nulls
        self.counts.update(o.counts)
        self.truncated = self.truncated or o.truncated


def _as_float(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """float64 numpy with NaN for nulls (bool, integers and decimals included)."""
    if not pa.types.is_floating(arr.type):
        arr = pc.cast(arr, pa.float64())
    return np.asarray(pc.fill_null(pc.cast(arr, pa.float64()), np.nan), dtype=np.float64)


def numeric_stats(arr: pa.ChunkedArray | pa.Array, sample_mask: np.ndarray | None, bounds: Any = None,
                  distinct: bool = False) -> NumericStats:
    x = _as_float(arr)
    nan = np.isnan(x)
    inf = np.isinf(x)
    finite = x[~(nan | inf)]
    s = NumericStats(
        count=int(x.size - nan.sum()),
        nulls=int(nan.sum()),
        nonfinite=int(inf.sum()),
        total=float(finite.sum()),
        total_sq=float(np.dot(finite, finite)),
        min=float(x[~nan].min()) if x.size > nan.sum() else float("inf"),
        max=float(x[~nan].max()) if x.size > nan.sum() else float("-inf"),
    )
    if bounds is not None:
        if bounds.min is not None:
            s.below = int((x < bounds.min).sum())
        if bounds.max is not None:
            s.above = int((x > bounds.max).sum())
    if sample_mask is not None:
        picked = x[sample_mask]
        s.sample = picked[np.isfinite(picked)]
    if distinct:
        values = np.unique(finite)
        s.distinct = [float(v) for v in values] if len(values) <= MAX_TRACKED_LABEL_VALUES else None
    return s


def categorical_stats(arr: pa.ChunkedArray | pa.Array) -> CategoricalStats:
    if pa.types.is_dictionary(arr.type):
        arr = pc.cast(arr, arr.type.value_type)
    vc = pc.value_counts(arr)
    values = vc.field("values").to_pylist()
    counts = vc.field("counts").to_pylist()
    out = CategoricalStats()
    for v, c in zip(values, counts):
        if v is None:
            out.nulls += c
        else:
            out.counts[v] = c
    if len(out.counts) > MAX_TRACKED_CATEGORIES:
        out.counts = Counter(dict(out.counts.most_common(MAX_TRACKED_CATEGORIES)))
        out.truncated = True
    return out


@dataclass
class TableStats:
    """Statistics of a set of rows: per numeric and categorical column, plus the label."""

    rows: int = 0
    numeric: dict[str, NumericStats] = field(default_factory=dict)
    categorical: dict[str, CategoricalStats] = field(default_factory=dict)
    label: CategoricalStats | NumericStats | None = None

    @classmethod
    def of(
        cls,
        table: pa.Table,
        numeric: list[str],
        categorical: list[str],
        label: str | None,
        label_is_numeric: bool,
        sample_mask: np.ndarray | None,
        bounds: dict[str, Any] | None = None,
    ) -> "TableStats":
        bounds = bounds or {}
        out = cls(rows=table.num_rows)
        for c in numeric:
            out.numeric[c] = numeric_stats(table.column(c), sample_mask, bounds.get(c))
        for c in categorical:
            out.categorical[c] = categorical_stats(table.column(c))
        if label is not None:
            col = table.column(label)
            out.label = numeric_stats(col, sample_mask, distinct=True) if label_is_numeric else categorical_stats(col)
        return out

    def merge(self, o: "TableStats") -> "TableStats":
        self.rows += o.rows
        for name, group in (("numeric", self.numeric), ("categorical", self.categorical)):
            for c, s in getattr(o, name).items():
                if c in group:
                    group[c].merge(s)
                else:
                    group[c] = s
        if o.label is not None:
            if self.label is None:
                self.label = o.label
            else:
                self.label.merge(o.label)  # type: ignore[arg-type]
        return self

    # Transport between Ray tasks and the driver as plain JSON bytes (no pickle of our own objects).
    def to_bytes(self) -> bytes:
        return json.dumps(_encode(self)).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "TableStats":
        return _decode(json.loads(data))


def _enc_num(s: NumericStats) -> dict[str, Any]:
    d = {k: getattr(s, k) for k in ("count", "nulls", "nonfinite", "total", "total_sq", "below", "above")}
    d["min"], d["max"] = repr(s.min), repr(s.max)
    d["sample"] = base64.b64encode(np.ascontiguousarray(s.sample, dtype="<f8").tobytes()).decode()
    d["distinct"] = s.distinct
    return {"kind": "num", **d}


def _enc_cat(s: CategoricalStats) -> dict[str, Any]:
    return {"kind": "cat", "nulls": s.nulls, "truncated": s.truncated, "counts": [[k, v] for k, v in s.counts.items()]}


def _dec(d: dict[str, Any]) -> NumericStats | CategoricalStats:
    if d["kind"] == "cat":
        return CategoricalStats(d["nulls"], Counter({k: v for k, v in d["counts"]}), d["truncated"])
    s = NumericStats(**{k: d[k] for k in ("count", "nulls", "nonfinite", "total", "total_sq", "below", "above")})
    s.min, s.max = float(d["min"]), float(d["max"])
    s.sample = np.frombuffer(base64.b64decode(d["sample"]), dtype="<f8").copy()
    s.distinct = d.get("distinct")
    return s


def _encode(t: TableStats) -> dict[str, Any]:
    enc = lambda s: _enc_cat(s) if isinstance(s, CategoricalStats) else _enc_num(s)  # noqa: E731
    return {
        "rows": t.rows,
        "numeric": {c: _enc_num(s) for c, s in t.numeric.items()},
        "categorical": {c: _enc_cat(s) for c, s in t.categorical.items()},
        "label": enc(t.label) if t.label is not None else None,
    }


def _decode(d: dict[str, Any]) -> TableStats:
    return TableStats(
        rows=d["rows"],
        numeric={c: _dec(s) for c, s in d["numeric"].items()},  # type: ignore[misc]
        categorical={c: _dec(s) for c, s in d["categorical"].items()},  # type: ignore[misc]
        label=_dec(d["label"]) if d["label"] is not None else None,
    )

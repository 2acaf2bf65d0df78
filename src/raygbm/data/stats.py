"""Mergeable column statistics: computed per read block (a Ray task), merged in the driver.

Counts, sums, extremes and category frequencies are exact; quantiles come from a deterministic row
sample (rows chosen by a hash of their content, so the sample does not depend on how shards are cut).
"""

from __future__ import annotations

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


def to_float64(arr: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """A numeric column as float64, as LightGBM sees it. Unchecked: Arrow's safe cast refuses integers
    beyond 2**53 (any int64 id, hash or nanosecond count), which float64 rounds to the nearest value, as
    Python's ``float()`` does for a request's number."""
    return arr if pa.types.is_float64(arr.type) else pc.cast(arr, pa.float64(), safe=False)


def _as_float(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """float64 numpy with NaN for nulls (bool, integers and decimals included)."""
    arr = to_float64(arr)
    return np.asarray(pc.fill_null(arr, np.nan) if arr.null_count else arr, dtype=np.float64)


def numeric_stats(arr: pa.ChunkedArray | pa.Array | np.ndarray, sample: np.ndarray | None, bounds: Any = None,
                  distinct: bool = False) -> NumericStats:
    """``arr``: an Arrow column, or one already converted by ``_as_float``; ``sample``: the rows kept for
    quantiles, as a mask or (cheaper to apply) their positions.

    Written for speed (it runs per column, per block, twice): no boolean indexing of the values, which
    costs ten times a gather; missing and infinite values are zeroed for the sums instead of removed."""
    x = arr if isinstance(arr, np.ndarray) else _as_float(arr)
    nan = np.isnan(x)
    inf = np.isinf(x)
    n_nan, n_inf = int(np.count_nonzero(nan)), int(np.count_nonzero(inf))
    finite = np.where(nan | inf, 0.0, x) if n_nan or n_inf else x
    present = x.size - n_nan
    s = NumericStats(
        count=present,
        nulls=n_nan,
        nonfinite=n_inf,
        total=float(finite.sum()),
        total_sq=float(np.dot(finite, finite)),
        min=float("inf") if not present else float(np.nanmin(x) if n_nan else x.min()),
        max=float("-inf") if not present else float(np.nanmax(x) if n_nan else x.max()),
    )
    if bounds is not None:
        if bounds.min is not None:
            s.below = int(np.count_nonzero(x < bounds.min))
        if bounds.max is not None:
            s.above = int(np.count_nonzero(x > bounds.max))
    if sample is not None:
        picked = x[sample]
        s.sample = picked[np.isfinite(picked)]
    if distinct:  # a hash pass (Arrow's unique) before sorting: labels are long, their values few
        values = pc.unique(pa.array(x[~(nan | inf)] + 0.0)).to_numpy(zero_copy_only=False)  # + 0.0: -0.0 is 0.0
        s.distinct = [float(v) for v in np.sort(values)] if len(values) <= MAX_TRACKED_LABEL_VALUES else None
    return s


def categorical_stats(arr: pa.ChunkedArray | pa.Array, rows: np.ndarray | None = None) -> CategoricalStats:
    """Counts of the values of ``arr`` (of its ``rows``, a mask or positions, when given)."""
    if pa.types.is_dictionary(arr.type):
        codes, values = dictionary_codes(arr)
        return counts_of_codes(codes if rows is None else codes[rows], values)
    if rows is not None:
        arr = arr.filter(pa.array(rows)) if rows.dtype == bool else arr.take(pa.array(rows))
    vc = pc.value_counts(arr)
    out = CategoricalStats()
    for v, c in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
        if v is None:
            out.nulls += c
        else:
            out.counts[v] = c
    return _capped(out)


def dictionary_codes(arr: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list]:
    """A dictionary column as one integer code per row into a list of values (the chunks' dictionaries one
    after another); a null row gets ``len(values)``. Counting codes is a bincount, not a hash per row."""
    if isinstance(arr, pa.ChunkedArray):
        # One dictionary for all chunks (Arrow unifies them, remapping the indices): then the codes are
        # the indices themselves, with no copy when there is no null.
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], arr.type)
    values = arr.dictionary.to_pylist()
    indices = arr.indices
    codes = np.asarray(pc.fill_null(indices, len(values)) if indices.null_count else indices)
    return codes, values


def counts_of_codes(codes: np.ndarray, values: list) -> CategoricalStats:
    """Counts by value of codes from ``dictionary_codes``."""
    out = CategoricalStats()
    counts = np.bincount(codes, minlength=len(values) + 1).tolist()
    for v, c in zip(values + [None], counts):
        if c == 0:
            continue
        if v is None:
            out.nulls += c
        else:
            out.counts[v] += c
    return _capped(out)


def _capped(out: CategoricalStats) -> CategoricalStats:
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
        """The statistics of every row of ``table`` (``of_all_and`` with an empty subset)."""
        empty = np.zeros(table.num_rows, dtype=bool)
        return cls.of_all_and(table, empty, numeric, categorical, label, label_is_numeric, sample_mask, bounds)[0]

    @classmethod
    def of_all_and(
        cls,
        table: pa.Table,
        subset: np.ndarray,
        numeric: list[str],
        categorical: list[str],
        label: str | None,
        label_is_numeric: bool,
        sample_mask: np.ndarray | None,
        bounds: dict[str, Any] | None = None,
    ) -> tuple["TableStats", "TableStats"]:
        """The statistics of every row (with ``bounds``) and of the rows in the mask ``subset``, each
        column converted once: the same as ``of`` on the table and on the filtered table, cheaper."""
        bounds = bounds or {}
        every, part = cls(rows=table.num_rows), cls(rows=int(np.count_nonzero(subset)))
        rows = np.flatnonzero(subset)  # positions: gathering by them is ~10x cheaper than by a mask
        picked = None if sample_mask is None else np.flatnonzero(sample_mask)
        part_picked = None if sample_mask is None else np.flatnonzero(sample_mask[rows])
        for c in numeric:
            x = _as_float(table.column(c))
            every.numeric[c] = numeric_stats(x, picked, bounds.get(c))
            part.numeric[c] = numeric_stats(x.take(rows), part_picked)
        for c in categorical + ([label] if label is not None and not label_is_numeric else []):
            col = table.column(c)
            if pa.types.is_dictionary(col.type):
                codes, values = dictionary_codes(col)
                pair = counts_of_codes(codes, values), counts_of_codes(codes.take(rows), values)
            else:
                pair = categorical_stats(col), categorical_stats(col, rows)
            if c == label:
                every.label, part.label = pair
            else:
                every.categorical[c], part.categorical[c] = pair
        if label is not None and label_is_numeric:
            y = _as_float(table.column(label))
            every.label = numeric_stats(y, picked, distinct=True)
            part.label = numeric_stats(y.take(rows), part_picked, distinct=True)
        return every, part

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

    # Transport between Ray tasks and the driver as plain bytes, no pickle of our own objects: an 8-byte
    # header length, a JSON header, then every quantile sample as raw little-endian float64 (the samples
    # are most of the bytes; base64 in JSON cost the driver ~10 ms a block to decode).
    def to_bytes(self) -> bytes:
        samples: list[np.ndarray] = []
        header = json.dumps(_encode(self, samples)).encode()
        return len(header).to_bytes(8, "little") + header + b"".join(a.tobytes() for a in samples)

    @classmethod
    def from_bytes(cls, data: bytes) -> "TableStats":
        n = int.from_bytes(data[:8], "little")
        return _decode(json.loads(data[8:8 + n]), np.frombuffer(data, dtype="<f8", offset=8 + n))


def _enc_num(s: NumericStats, samples: list[np.ndarray]) -> dict[str, Any]:
    d = {k: getattr(s, k) for k in ("count", "nulls", "nonfinite", "total", "total_sq", "below", "above")}
    d["min"], d["max"] = repr(s.min), repr(s.max)
    d["sample"] = [sum(a.size for a in samples), int(s.sample.size)]  # offset and length in the float64 tail
    samples.append(np.ascontiguousarray(s.sample, dtype="<f8"))
    d["distinct"] = s.distinct
    return {"kind": "num", **d}


def _enc_cat(s: CategoricalStats) -> dict[str, Any]:
    return {"kind": "cat", "nulls": s.nulls, "truncated": s.truncated, "counts": [[k, v] for k, v in s.counts.items()]}


def _dec(d: dict[str, Any], tail: np.ndarray) -> NumericStats | CategoricalStats:
    if d["kind"] == "cat":
        return CategoricalStats(d["nulls"], Counter({k: v for k, v in d["counts"]}), d["truncated"])
    s = NumericStats(**{k: d[k] for k in ("count", "nulls", "nonfinite", "total", "total_sq", "below", "above")})
    s.min, s.max = float(d["min"]), float(d["max"])
    offset, size = d["sample"]
    s.sample = tail[offset:offset + size].astype(np.float64)  # a copy, in native order
    s.distinct = d.get("distinct")
    return s


def _encode(t: TableStats, samples: list[np.ndarray]) -> dict[str, Any]:
    enc = lambda s: _enc_cat(s) if isinstance(s, CategoricalStats) else _enc_num(s, samples)  # noqa: E731
    return {
        "rows": t.rows,
        "numeric": {c: _enc_num(s, samples) for c, s in t.numeric.items()},
        "categorical": {c: _enc_cat(s) for c, s in t.categorical.items()},
        "label": enc(t.label) if t.label is not None else None,
    }


def _decode(d: dict[str, Any], tail: np.ndarray) -> TableStats:
    return TableStats(
        rows=d["rows"],
        numeric={c: _dec(s, tail) for c, s in d["numeric"].items()},  # type: ignore[misc]
        categorical={c: _dec(s, tail) for c, s in d["categorical"].items()},  # type: ignore[misc]
        label=_dec(d["label"], tail) if d["label"] is not None else None,
    )

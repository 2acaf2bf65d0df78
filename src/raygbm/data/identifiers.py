"""Identifier-like columns: a row id, a row number or an order id left in the data would otherwise become
a feature that carries no signal (a tree splits on it to memorise rows) and that drifts by construction
when traffic arrives in id order. The data stage finds them in its profile pass and leaves them out of
the features unless ``data.keep_identifiers`` (or an explicit ``data.numeric``/``data.categorical``) keeps
them.

A feature column is identifier-like when, with at least ``MIN_ROWS`` values (missing ones left aside: the
loop's staged traffic carries no id, and a column that is sometimes missing is still an id):

- it holds integers or text and no value repeats ("unique per row"). Floats are never judged by this
  rule: a continuous measurement is unique per row too;
- it holds numbers that strictly increase, or strictly decrease, in row order over the whole input:
  shards in their read order, rows in file order ("monotonic in row order"). Ties break it, so a sorted
  low-cardinality column (a year, a count) is not flagged; no real float feature is strictly ordered
  over a thousand rows unless the file was sorted by it, and then it encodes the row order too.

Both are computed per read block alongside the other statistics and merged in block order: per column
the count of values, the block's first and last value and whether it is strictly ordered, and the hashes
of its values. The hashes kept are those of a sample of the values chosen by value hash (a value repeated
is kept with all its repeats), so the driver holds at most about ``MAX_HASHES`` per column whatever the
input size: uniqueness is exact up to that many rows, and beyond it a column with more than a handful of
repeated values is still caught. A block whose values repeat sends no hashes at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raygbm.data.split import column_hash

MIN_ROWS = 1_000  # fewer values than this: no judgement (a small table's integer codes can all differ)
MAX_HASHES = 1_000_000  # value hashes the driver holds per column, about
UNIQUE = "unique per row"
MONOTONIC = "monotonic in row order"

# What each kind of column is checked for.
INTEGER, FLOAT, TEXT = "integer", "float", "text"
_CHECKS = {INTEGER: (UNIQUE, MONOTONIC), FLOAT: (MONOTONIC,), TEXT: (UNIQUE,)}


def kind_of(t: pa.DataType) -> str | None:
    """The checks a column of this Arrow type gets, as a kind (None: not checked, e.g. booleans)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t):
        return INTEGER
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return FLOAT
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return TEXT
    return None


def candidates(arrow: pa.Schema, columns: list[str]) -> dict[str, str]:
    """The kind of each of ``columns`` that gets a check (the features the lint may leave out)."""
    kinds = {c: kind_of(arrow.field(c).type) for c in columns if c in arrow.names}
    return {c: k for c, k in kinds.items() if k is not None}


@dataclass
class IdentifierStats:
    """One column over a run of consecutive rows (a block, or blocks merged in order)."""

    kind: str
    values: int = 0  # non-missing values
    unique: bool = True  # no value repeats (within each block; across blocks: ``hashes``)
    hashes: list[np.ndarray] = field(default_factory=list)  # uint64, the sampled values' hashes
    increasing: bool = True  # strictly, over the non-missing values
    decreasing: bool = True
    first: int | float | None = None
    last: int | float | None = None

    def merge(self, o: "IdentifierStats") -> None:
        """``o``: the rows right after these."""
        if o.values == 0:
            return
        if self.values:
            self.increasing = self.increasing and o.increasing and self.last < o.first  # type: ignore[operator]
            self.decreasing = self.decreasing and o.decreasing and self.last > o.first  # type: ignore[operator]
        else:
            self.increasing, self.decreasing, self.first = o.increasing, o.decreasing, o.first
        self.last = o.last
        self.values += o.values
        self.unique = self.unique and o.unique
        self.hashes = self.hashes + o.hashes if self.unique else []

    def reasons(self) -> list[str]:
        """Why the column is identifier-like (empty: it is not)."""
        if self.values < MIN_ROWS:
            return []
        checks = _CHECKS[self.kind]
        out = []
        if UNIQUE in checks and self.unique:
            h = np.concatenate(self.hashes) if self.hashes else np.empty(0, np.uint64)
            if np.unique(h).size == h.size:
                out.append(UNIQUE)
        if MONOTONIC in checks and (self.increasing or self.decreasing):
            out.append(MONOTONIC)
        return out


def sample_rate(rows: int) -> float:
    """The share of values whose hashes are kept, for an input of ``rows`` rows."""
    return min(1.0, MAX_HASHES / max(rows, 1))


def block_stats(table: pa.Table, kinds: dict[str, str], rate: float) -> dict[str, IdentifierStats]:
    """Each column's statistics over one block's rows (in their order); ``rate``: ``sample_rate``."""
    return {c: column_stats(table.column(c), kind, rate) for c, kind in kinds.items()}


def column_stats(col: pa.ChunkedArray | pa.Array, kind: str, rate: float) -> IdentifierStats:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if pa.types.is_dictionary(col.type):
        if len(col.dictionary) < len(col) - col.null_count:  # more values than distinct ones: repeats
            return IdentifierStats(kind, values=len(col) - col.null_count, unique=False, increasing=False,
                                   decreasing=False)
        col = col.dictionary_decode()
    if kind == FLOAT and col.null_count < len(col):
        col = pc.cast(col, pa.float64())
        col = col.filter(pc.invert(pc.is_nan(col)))  # NaN is missing, as in the features
    if col.null_count:
        col = col.drop_null()
    s = IdentifierStats(kind, values=len(col))
    if not s.values:
        return s
    checks = _CHECKS[kind]
    if MONOTONIC in checks:
        x = col.to_numpy()  # int64/uint64 stay exact (no float rounding of large ids)
        s.increasing = bool(np.all(x[1:] > x[:-1]))
        s.decreasing = bool(np.all(x[1:] < x[:-1]))
        s.first, s.last = x[0].item(), x[-1].item()
    else:
        s.increasing = s.decreasing = False
    if UNIQUE in checks:
        # A hash count first (exact within the block, no sort): most columns repeat and stop here.
        s.unique = s.increasing or s.decreasing or pc.count_distinct(col).as_py() == s.values
        if s.unique:
            h = column_hash(col)
            if rate < 1.0:
                h = h[h < np.uint64(int(rate * 2.0**64))]
            s.hashes = [h]
    else:
        s.unique = False
    return s


# Transport as bytes, as ``TableStats``: an 8-byte header length, a JSON header, then the hashes (uint64).
def to_bytes(stats: dict[str, IdentifierStats]) -> bytes:
    header: dict[str, Any] = {}
    tails: list[np.ndarray] = []
    offset = 0
    for c, s in stats.items():
        h = np.concatenate(s.hashes).astype("<u8") if s.hashes else np.empty(0, "<u8")
        header[c] = {"kind": s.kind, "values": s.values, "unique": s.unique, "increasing": s.increasing,
                     "decreasing": s.decreasing, "first": s.first, "last": s.last, "hashes": [offset, int(h.size)]}
        tails.append(h)
        offset += h.size
    head = json.dumps(header).encode()
    return len(head).to_bytes(8, "little") + head + b"".join(t.tobytes() for t in tails)


def from_bytes(data: bytes) -> dict[str, IdentifierStats]:
    n = int.from_bytes(data[:8], "little")
    tail = np.frombuffer(data, dtype="<u8", offset=8 + n)
    out = {}
    for c, d in json.loads(data[8:8 + n]).items():
        offset, size = d.pop("hashes")
        out[c] = IdentifierStats(**d, hashes=[tail[offset:offset + size].astype(np.uint64)] if size else [])
    return out


def merge_blocks(blocks: list[bytes], kinds: dict[str, str]) -> dict[str, IdentifierStats]:
    """Every block's statistics merged in block (row) order."""
    merged = {c: IdentifierStats(k) for c, k in kinds.items()}
    for b in blocks:
        for c, s in from_bytes(b).items():
            merged[c].merge(s)
    return merged

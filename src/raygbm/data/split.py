"""Deterministic train/validation/test assignment, computed row by row so that any read block can
assign its own rows without seeing the others:

- ``key``: a hash of the key column (a key's rows always land together, stable when shards are re-cut);
- ``time``: global time cut-offs (train on the past, test on the most recent);
- otherwise a seeded hash of the whole row (identical rows land in the same split: no leakage).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from raygbm.config import SplitConfig
from raygbm.data.stats import to_float64

TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "validation", "test")
RAW_TEST = "test_raw"  # the test rows before preprocessing (for scoring a champion with its own preprocessor)

_NULL = np.uint64(0x6A09E667F3BCC908)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, vectorised (uint64 arithmetic wraps in numpy, as intended)."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def column_hash(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A well-mixed uint64 per value that depends only on the value, never on its position."""
    return _mix(_column_bits(arr))


def _column_bits(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A uint64 per value, equal for equal values (nulls alike): raw bits for numbers, a hash for text."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    t = arr.type
    valid = np.asarray(pc.is_valid(arr), dtype=bool) if arr.null_count else None
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        x = pc.cast(arr, pa.float64())
        x = np.asarray(pc.fill_null(x, 0.0) if arr.null_count else x, dtype=np.float64) + 0.0  # -0.0 → 0.0
        nan = np.isnan(x)
        if nan.any():
            x[nan] = np.nan  # one NaN bit pattern
        h = x.view(np.uint64)
    elif pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_temporal(t):
        if pa.types.is_temporal(t):
            arr = arr.view(pa.int64()) if t.bit_width == 64 else pc.cast(arr.view(pa.int32()), pa.int64())
        h = np.asarray(pc.fill_null(pc.cast(arr, pa.int64()), 0), dtype=np.int64).view(np.uint64)
    elif pa.types.is_nested(t) or pa.types.is_fixed_size_binary(t):
        # Lists, structs, maps (never features, but part of the row): hashed by their Python value's text.
        return _mix_none(np.asarray(pd.util.hash_array(np.asarray([repr(v) for v in arr.to_pylist()], dtype=object)),
                                    dtype=np.uint64), valid)
    else:
        if pa.types.is_dictionary(t):
            dictionary, indices = arr.dictionary, arr.indices
        else:
            enc = pc.dictionary_encode(arr)
            dictionary, indices = enc.dictionary, enc.indices
        dict_hash = pd.util.hash_array(np.asarray(dictionary.to_pylist(), dtype=object))
        h = dict_hash[np.asarray(pc.fill_null(indices, 0), dtype=np.int64)] if len(dictionary) else np.zeros(len(arr), np.uint64)
    return _mix_none(np.asarray(h, dtype=np.uint64), valid)


def _mix_none(h: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Nulls hash alike (``_NULL``), whatever the column's type."""
    return h if valid is None else np.where(valid, h, _NULL)


_ROW_PRIME = np.uint64(0x9FB21C651E98DF25)


def row_hash(table: pa.Table, columns: list[str]) -> np.ndarray:
    """A uint64 per row from the given columns' values: equal rows hash equal, wherever they are.

    Per column a multiply-xorshift step (cheap: this runs over every row twice per stage), then one
    full splitmix finaliser.
    """
    h = np.full(table.num_rows, _GOLDEN, dtype=np.uint64)
    for c in columns:
        np.bitwise_xor(h, _column_bits(table.column(c)), out=h)
        np.multiply(h, _ROW_PRIME, out=h)
        np.bitwise_xor(h, h >> np.uint64(29), out=h)
    return _mix(h)


def to_unit(h: np.ndarray, seed: int) -> np.ndarray:
    """Map hashes to uniform floats in [0, 1), reseeded so different seeds give independent splits."""
    z = _mix(h ^ _mix(np.full(1, seed & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def time_values(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A time (or numeric) column as float64 for ordering; nulls become -inf (oldest: they train)."""
    t = arr.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        arr = pc.cast(arr, pa.int64()) if not pa.types.is_date32(t) else pc.cast(pc.cast(arr, pa.int32()), pa.int64())
    return np.asarray(pc.fill_null(to_float64(arr), -np.inf), dtype=np.float64)


def time_cutoffs(times: np.ndarray, split: SplitConfig) -> tuple[float, float]:
    """Cut-offs so the oldest ``train`` fraction trains and the newest ``test`` fraction tests."""
    s = np.sort(times)
    n = len(s)
    if n == 0:
        return (0.0, 0.0)
    i1 = min(int(np.floor(n * split.train)), n - 1)
    i2 = min(int(np.floor(n * (split.train + split.validation))), n - 1)
    return float(s[i1]), float(s[i2])


def assign_split(
    table: pa.Table,
    split: SplitConfig,
    row_hashes: np.ndarray | None = None,
    cutoffs: tuple[float, float] | None = None,
) -> np.ndarray:
    """int8 split code per row (TRAIN, VALIDATION, TEST)."""
    if split.time is not None:
        if cutoffs is None:
            raise ValueError("time split needs cut-offs from the whole dataset")
        t = time_values(table.column(split.time))
        return np.where(t < cutoffs[0], TRAIN, np.where(t < cutoffs[1], VALIDATION, TEST)).astype(np.int8)
    if split.key is not None:
        u = to_unit(column_hash(table.column(split.key)), split.seed)
    else:
        if row_hashes is None:
            raise ValueError("random split needs row hashes")
        u = to_unit(row_hashes, split.seed)
    lo, hi = split.train, split.train + split.validation
    return np.where(u < lo, TRAIN, np.where(u < hi, VALIDATION, TEST)).astype(np.int8)

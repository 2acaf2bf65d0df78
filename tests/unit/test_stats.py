import numpy as np
import pyarrow as pa
import pytest

from raygbm.config import Bounds
from raygbm.data.stats import TableStats


def _t(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x[::10] = np.nan
    x[5] = np.inf
    return pa.table({
        "x": pa.array(x, mask=np.arange(n) % 17 == 0),
        "c": pa.array(rng.choice(["a", "b", "c"], n).tolist()),
        "y": pa.array(rng.integers(0, 2, n)),
    })


def test_merge_equals_whole_and_survives_bytes():
    a, b = _t(1000, 1), _t(1500, 2)
    whole = pa.concat_tables([a, b])
    args = (["x"], ["c"], "y", False)
    bounds = {"x": Bounds(min=-1, max=1)}
    s1 = TableStats.of(a, *args, np.ones(a.num_rows, bool), bounds)
    s2 = TableStats.of(b, *args, np.ones(b.num_rows, bool), bounds)
    merged = TableStats.from_bytes(s1.to_bytes()).merge(TableStats.from_bytes(s2.to_bytes()))
    ref = TableStats.of(whole, *args, np.ones(whole.num_rows, bool), bounds)
    m, r = merged.numeric["x"], ref.numeric["x"]
    assert (m.count, m.nulls, m.nonfinite, m.below, m.above) == (r.count, r.nulls, r.nonfinite, r.below, r.above)
    assert m.mean == pytest.approx(r.mean) and m.std == pytest.approx(r.std)
    assert m.min == r.min and m.max == r.max == float("inf")
    assert m.quantiles([0.5]) == pytest.approx(r.quantiles([0.5]))
    assert merged.categorical["c"].counts == ref.categorical["c"].counts
    assert merged.label.counts == ref.label.counts
    assert merged.rows == 2500
    x = np.asarray(whole["x"].to_numpy(zero_copy_only=False), dtype=float)
    assert r.nulls == int(np.isnan(x).sum())
    assert r.below == int((x < -1).sum()) and r.above == int((x > 1).sum())


@pytest.mark.parametrize("label_numeric", [False, True])
def test_all_and_subset_in_one_pass_equal_two_passes(label_numeric):
    t = _t(3000, 3)
    t = t.append_column("d", pa.chunked_array([t["c"].combine_chunks().slice(0, 1000).dictionary_encode(),
                                              t["c"].combine_chunks().slice(1000).dictionary_encode()]))
    subset = np.random.default_rng(4).random(t.num_rows) < 0.7
    sample = np.random.default_rng(5).random(t.num_rows) < 0.5
    args = (["x"], ["c", "d"], "y", label_numeric)
    bounds = {"x": Bounds(min=-1, max=1)}
    every, part = TableStats.of_all_and(t, subset, *args, sample, bounds)
    ref_every = TableStats.of(t, *args, sample, bounds)
    ref_part = TableStats.of(t.filter(pa.array(subset)), *args, sample[subset])
    for got, ref in ((every, ref_every), (part, ref_part)):
        assert got.to_bytes() == ref.to_bytes()
        assert got.categorical["d"].counts == got.categorical["c"].counts  # dictionary and text alike
    assert part.rows == int(subset.sum()) and every.rows == t.num_rows


def test_dictionary_columns_count_like_text_across_chunks_with_different_dictionaries():
    from raygbm.data.stats import categorical_stats

    text = pa.chunked_array([pa.array(["a", "b", None]), pa.array(["c", "a", "c"]), pa.array([None], pa.string())])
    as_dict = pa.chunked_array([ch.dictionary_encode() for ch in text.chunks])
    for rows in (None, np.array([0, 3, 4, 6]), np.array([True, False, True, True, False, True, True])):
        a, b = categorical_stats(text, rows), categorical_stats(as_dict, rows)
        assert (a.counts, a.nulls) == (b.counts, b.nulls)
    assert categorical_stats(as_dict).counts == {"a": 2, "b": 1, "c": 2}

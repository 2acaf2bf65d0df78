import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raygbm.config import SplitConfig
from raygbm.data.split import TEST, TRAIN, VALIDATION, assign_split, column_hash, row_hash, time_cutoffs, time_values
from tests.conftest import make_shards


def _table(tmp_path, rows=20_000):
    make_shards(tmp_path / "d", rows=rows, shards=1)
    return pq.read_table(tmp_path / "d")


def test_random_split_fractions_and_seed(tmp_path):
    t = _table(tmp_path)
    h = row_hash(t, t.column_names)
    a = assign_split(t, SplitConfig(seed=1), row_hashes=h)
    b = assign_split(t, SplitConfig(seed=1), row_hashes=h)
    c = assign_split(t, SplitConfig(seed=2), row_hashes=h)
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.3
    frac = np.bincount(a, minlength=3) / len(a)
    np.testing.assert_allclose(frac, [0.7, 0.15, 0.15], atol=0.015)


def test_row_hash_depends_on_content_not_position(tmp_path):
    t = _table(tmp_path, rows=2000)
    h = row_hash(t, t.column_names)
    rev = t.take(pa.array(np.arange(t.num_rows)[::-1]))
    np.testing.assert_array_equal(row_hash(rev, rev.column_names)[::-1], h)
    assert len(np.unique(h)) == t.num_rows  # distinct rows, distinct hashes
    dup = pa.concat_tables([t.slice(0, 10), t.slice(0, 10)])
    hd = row_hash(dup, dup.column_names)
    np.testing.assert_array_equal(hd[:10], hd[10:])


def test_column_hash_types_and_nulls():
    ints = column_hash(pa.array([1, 2, None, 1]))
    assert ints[0] == ints[3] and ints[0] != ints[1]
    floats = column_hash(pa.array([0.0, -0.0, float("nan"), None]))
    assert floats[0] == floats[1] and floats[2] != floats[3]
    strs = column_hash(pa.array(["a", "b", None, "a"]))
    assert strs[0] == strs[3] and strs[2] == ints[2]  # nulls hash alike
    dict_strs = column_hash(pa.array(["a", "b", None, "a"]).dictionary_encode())
    np.testing.assert_array_equal(dict_strs, strs)


def test_key_split_keeps_keys_together_and_is_stable(tmp_path):
    t = _table(tmp_path)
    t = t.append_column("user", pa.array(np.asarray(t["id"]) % 500))
    cfg = SplitConfig(key="user")
    codes = assign_split(t, cfg)
    users = np.asarray(t["user"])
    for u in range(500):
        assert len(set(codes[users == u])) == 1
    half = t.slice(0, 7000)  # re-cut: a different block of the same rows
    np.testing.assert_array_equal(assign_split(half, cfg), codes[:7000])


def test_time_split_trains_on_the_past(tmp_path):
    t = _table(tmp_path)
    cfg = SplitConfig(time="event_time")
    cut = time_cutoffs(time_values(t["event_time"]), cfg)
    codes = assign_split(t, cfg, cutoffs=cut)
    times = time_values(t["event_time"])
    assert times[codes == TRAIN].max() < times[codes == VALIDATION].min()
    assert times[codes == VALIDATION].max() < times[codes == TEST].min()
    np.testing.assert_allclose(np.bincount(codes) / len(codes), [0.7, 0.15, 0.15], atol=0.001)


def test_row_hash_reads_nested_and_binary_columns_equal_rows_alike():
    t = pa.table({"l": pa.array([[1, 2], [1, 2], [3], None]), "s": pa.array([{"a": 1}, {"a": 1}, {"a": 2}, None]),
                  "b": pa.array([b"x", b"x", b"y", None])})
    h = row_hash(t, t.column_names)
    assert h[0] == h[1] and len({int(h[0]), int(h[2]), int(h[3])}) == 3

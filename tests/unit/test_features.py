"""The preprocessor's two paths (a pyarrow batch, one JSON record) must give identical features."""

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from raygbm.config import DataConfig, DerivedFeature, FeaturesConfig, SplitConfig
from raygbm.data.features import UNSEEN, Preprocessor
from raygbm.data.schema import infer_schema
from raygbm.errors import DataError
from tests.conftest import make_shards

DERIVED = [
    DerivedFeature(name="r", op="ratio", inputs=["num_0", "num_zero"]),
    DerivedFeature(name="d", op="difference", inputs=["num_1", "num_6"]),
    DerivedFeature(name="s", op="sum", inputs=["num_2", "num_11"]),
    DerivedFeature(name="p", op="product", inputs=["num_3", "num_4"]),
    DerivedFeature(name="h", op="hour", inputs=["event_time"]),
    DerivedFeature(name="w", op="dayofweek", inputs=["event_time"]),
    DerivedFeature(name="m", op="month", inputs=["event_time"]),
]


def _table(tmp_path, rows=10_000, seed=0):
    make_shards(tmp_path / f"d{seed}", rows=rows, shards=1, seed=seed)
    t = pq.read_table(tmp_path / f"d{seed}")
    # A column with zeros, NaNs and infinities to exercise ratio, imputation and clipping edge cases.
    rng = np.random.default_rng(seed)
    z = rng.choice([0.0, 1.0, -2.5, np.nan, np.inf, -np.inf, 3.25], size=t.num_rows)
    mask = rng.random(t.num_rows) < 0.05
    return t.append_column("num_zero", pa.array(z, mask=mask))


def _fitted(table, **cfg):
    schema = infer_schema(table.schema, DataConfig(label="label", drop=["id"]), SplitConfig(time="event_time"), ["event_time"])
    return Preprocessor(schema, FeaturesConfig(**cfg), max_categories=20).fit(table)


def _records(table):
    records = table.to_pylist()  # what a JSON request carries: None for missing, str for categories
    for r in records:
        r["event_time"] = r["event_time"].isoformat()
    return records


@pytest.mark.parametrize("impute, clip", [("median", None), ("mean", (0.05, 0.95)), ("none", (0.0, 1.0))])
def test_record_path_equals_table_path_on_10k_rows(tmp_path, impute, clip):
    train = _table(tmp_path, seed=0)
    pre = _fitted(train, impute=impute, clip_quantiles=clip, derived=DERIVED)
    test = _table(tmp_path, seed=1)
    # Unseen categories and missing values in the scored data.
    test = test.set_column(test.column_names.index("cat_0"), "cat_0", pc.if_else(pc.equal(test["cat_0"], "cat_0_002"), "never-seen", test["cat_0"]))
    batch = pre.transform_table(test, with_label=False)
    from_table = np.column_stack([np.asarray(batch[c], dtype=np.float64) for c in pre.feature_names_])
    from_records = pre.transform_records(_records(test))
    assert from_table.shape == (10_000, len(pre.feature_names_))
    np.testing.assert_array_equal(from_records, from_table)  # bit-identical, NaN where NaN
    if impute != "none":
        assert not np.isnan(from_table).any()
    else:
        assert np.isnan(from_table).any()


def test_categories_codes_and_unseen(tmp_path):
    t = _table(tmp_path)
    pre = _fitted(t)
    assert pre.categorical_features_ == ["cat_0", "cat_1", "cat_2", "cat_3", "cat_4"]
    assert len(pre.categories_["cat_3"]) == 20  # max_categories keeps the most frequent
    out = pre.transform_table(t)
    assert out.schema.field("cat_0").type == pa.int32()
    codes = np.asarray(out["cat_3"])
    assert codes.min() == UNSEEN and codes.max() == 20
    # Missing categories share the reserved code with unseen ones.
    missing = np.asarray(pc.is_null(t["cat_3"]))
    assert (codes[missing] == UNSEEN).all()
    assert pre.transform_record({"cat_0": "zzz"})[pre.feature_names_.index("cat_0")] == UNSEEN
    top = pre.categories_["cat_0"][0]
    assert pre.transform_record({"cat_0": top})[pre.feature_names_.index("cat_0")] == 1
    # The public lookup table gives the same codes: 1..K in the order of categories_.
    assert pre.category_codes["cat_3"] == {v: i + 1 for i, v in enumerate(pre.categories_["cat_3"])}
    assert set(pre.category_codes) == set(pre.categorical_features_)


def test_imputation_uses_training_statistics(tmp_path):
    t = _table(tmp_path)
    pre = _fitted(t, impute="median")
    med = float(np.nanmedian(np.asarray(t["num_6"].to_numpy(zero_copy_only=False), dtype=float)))
    assert pre.impute_["num_6"] == pytest.approx(med)
    row = pre.transform_record({})
    assert row[pre.feature_names_.index("num_6")] == pre.impute_["num_6"]


def test_label_encoding(tmp_path):
    t = _table(tmp_path)
    pre = _fitted(t)
    assert pre.task_ == "binary" and pre.label_classes_ == [0, 1]
    np.testing.assert_array_equal(np.asarray(pre.transform_table(t)["label"]), np.asarray(t["label"]))
    strings = t.set_column(t.column_names.index("label"), "label", pc.if_else(pc.equal(t["label"], 1), "yes", "no"))
    pre2 = _fitted(strings)
    assert pre2.label_classes_ == ["no", "yes"]
    assert set(np.asarray(pre2.transform_table(strings)["label"]).tolist()) == {0, 1}


def test_json_round_trip_no_pickle(tmp_path):
    t = _table(tmp_path)
    pre = _fitted(t, clip_quantiles=(0.01, 0.99), derived=DERIVED)
    text = pre.to_json()
    json.loads(text)  # plain JSON
    back = Preprocessor.from_json(text)
    assert back.feature_names_ == pre.feature_names_
    assert back.transform_table(t).equals(pre.transform_table(t))
    rec = _records(t.slice(0, 5))
    np.testing.assert_array_equal(back.transform_records(rec), pre.transform_records(rec))


def test_rejects_foreign_json():
    with pytest.raises(DataError, match="not a raygbm preprocessor"):
        Preprocessor.from_json('{"format": "other"}')


def test_unfitted_raises(tmp_path):
    t = _table(tmp_path, rows=1000)
    schema = infer_schema(t.schema, DataConfig(label="label"), SplitConfig())
    with pytest.raises(RuntimeError, match="not fitted"):
        Preprocessor(schema).transform_table(t)


def test_ratio_by_zero_is_missing():
    from raygbm.data.features import derived_record

    d = [DerivedFeature(name="r", op="ratio", inputs=["a", "b"])]
    assert math.isnan(derived_record({"a": 1.0, "b": 0.0}, d, {})["r"])
    assert derived_record({"a": 1.0, "b": 4.0}, d, {})["r"] == 0.25


def test_text_categories_read_as_dictionaries_transform_like_strings(tmp_path):
    """The data stage reads text categoricals as dictionary arrays (one per row group); the features must
    be the same as from plain strings, nulls and unseen values included."""
    train = _table(tmp_path, seed=0)
    pre = _fitted(train, derived=DERIVED)
    test = _table(tmp_path, seed=1)
    test = test.set_column(test.column_names.index("cat_0"), "cat_0", pc.if_else(
        pc.equal(test["cat_0"], "cat_0_002"), pa.scalar(None, pa.string()), test["cat_0"]))
    test = test.set_column(test.column_names.index("cat_1"), "cat_1", pc.if_else(
        pc.equal(test["cat_1"], "cat_1_001"), "never-seen", test["cat_1"]))
    half = test.num_rows // 2
    as_dict = test
    for c in ("cat_0", "cat_1", "cat_2"):
        col = test[c].combine_chunks()
        chunks = [col.slice(0, half).dictionary_encode(), col.slice(half).dictionary_encode()]  # two dictionaries
        as_dict = as_dict.set_column(as_dict.column_names.index(c), c, pa.chunked_array(chunks))
    assert pa.types.is_dictionary(as_dict.schema.field("cat_0").type)
    assert pre.transform_table(as_dict).equals(pre.transform_table(test))

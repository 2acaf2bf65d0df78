"""The identifier lint of the data stage (``raygbm.data.identifiers``): columns unique per row or monotonic
in row order are found in the profile pass, reported, and left out of the features unless kept; the
endpoint accepts and ignores them in requests. One process (``LocalRunner``), no Ray."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bench.corpus import datasets
from raygbm.config import load_config
from raygbm.data.features import Preprocessor
from raygbm.data.identifiers import MIN_ROWS, MONOTONIC, UNIQUE, block_stats, merge_blocks, to_bytes
from raygbm.data.preprocess import LocalRunner, identifier_line, preprocess
from raygbm.errors import DataError
from tests.conftest import make_shards
from tests.helpers import raygbm_home


def _stage(tmp_path, data, *sets: str, label: str = "label"):
    """The data stage's report, its schema and its progress lines."""
    lines: list[str] = []
    cfg = load_config(None, list(sets), {"data.source": str(data), "data.label": label})
    with raygbm_home(tmp_path / "home"):
        result = preprocess(cfg, runner=LocalRunner(), progress=lines.append)
    schema = json.loads((result.run_dir / "schema.json").read_text())
    return result.report, schema, lines


def _write(table: pa.Table, out, shards: int = 3, row_group: int = 1000):
    """``table`` as ``shards`` Parquet files, in row order (read back in path order)."""
    out.mkdir(parents=True)
    step = -(-table.num_rows // shards)
    for i in range(shards):
        pq.write_table(table.slice(i * step, step), out / f"part-{i:02d}.parquet", row_group_size=row_group)
    return out


def test_the_generators_id_is_unique_per_row_and_left_out_of_the_features(tmp_path):
    data = make_shards(tmp_path / "data", rows=3000, shards=3, seed=1)
    report, schema, lines = _stage(tmp_path, data)
    found = report["features"]["identifiers"]
    assert list(found) == ["id"]  # the float features are unique per row too, and not flagged
    assert found["id"] == {"reasons": [UNIQUE, MONOTONIC], "kept": False}
    assert "id" not in report["features"]["numeric"] and "id" in report["features"]["dropped"]
    assert "id" not in report["columns"] and "id" not in schema["numeric"]
    assert schema["identifiers"] == ["id"] and "id" in schema["ignored"] and "label" not in schema["ignored"]
    line = [m for m in lines if m.startswith("identifier-like")]
    assert line == ["identifier-like column left out of the features: id (unique per row and monotonic in row "
                    "order); data.keep_identifiers=[id] keeps it"]
    assert identifier_line(report) == line[0]  # also said when the run is reused


@pytest.mark.parametrize("keep", ["data.keep_identifiers=[id]", "data.numeric=[id, num_0]"])
def test_a_kept_identifier_stays_a_feature_and_is_still_reported(tmp_path, keep):
    data = make_shards(tmp_path / "data", rows=3000, shards=3, seed=1)
    report, schema, lines = _stage(tmp_path, data, keep)
    assert "id" in report["features"]["numeric"] and "id" in schema["numeric"] and "id" not in schema["ignored"]
    assert report["features"]["identifiers"]["id"] == {"reasons": [UNIQUE, MONOTONIC], "kept": True}
    assert not [m for m in lines if m.startswith("identifier-like")]


def test_an_identifier_a_derived_feature_reads_stays_an_input(tmp_path):
    data = make_shards(tmp_path / "data", rows=3000, shards=2, seed=1)
    report, schema, _ = _stage(tmp_path, data, "features.derived=[{name: idx, op: product, inputs: [id, num_0]}]")
    assert report["features"]["identifiers"]["id"]["kept"] is False
    assert "id" not in schema["numeric"] and "id" in schema["derived_inputs"] and "id" not in schema["ignored"]
    assert schema["types"]["id"] == "int64" and "idx" in report["features"]["numeric"]


def test_keeping_and_dropping_one_column_is_refused(tmp_path):
    data = make_shards(tmp_path / "data", rows=1000, shards=1)
    with pytest.raises(DataError, match="id listed in data.drop and data.keep_identifiers"):
        _stage(tmp_path, data, "data.drop=[id]", "data.keep_identifiers=[id]")
    with pytest.raises(DataError, match="data.keep_identifiers names unknown column"):
        _stage(tmp_path, data, "data.keep_identifiers=[nope]")


def test_a_float_the_rows_are_sorted_by_is_flagged_and_an_unsorted_unique_float_is_not(tmp_path):
    rows = 6000
    table = pq.read_table(make_shards(tmp_path / "gen", rows=rows, shards=2, seed=2)).drop_columns(["id"])
    assert pc.count_distinct(table["num_1"]).as_py() == rows  # unique per row, as continuous values are
    table = table.sort_by([("num_0", "descending")])  # across shards and row groups: 6 read blocks
    assert table["num_0"].null_count > 0  # missing values (sorted last) are left aside
    report, schema, _ = _stage(tmp_path, _write(table, tmp_path / "data"), "resources.read_chunk_rows=1000")
    assert report["features"]["identifiers"] == {"num_0": {"reasons": [MONOTONIC], "kept": False}}
    assert "num_0" not in schema["numeric"] and "num_1" in schema["numeric"]


def test_a_column_sorted_within_each_shard_but_not_across_them_is_not_flagged(tmp_path):
    table = pq.read_table(make_shards(tmp_path / "gen", rows=4000, shards=2, seed=3)).drop_columns(["id"])
    halves = [table.slice(0, 2000).sort_by("num_1"), table.slice(2000).sort_by("num_1")]
    data = tmp_path / "data"
    data.mkdir()
    for i, half in enumerate(halves):  # each shard ascending; the second starts below where the first ends
        pq.write_table(half, data / f"part-{i}.parquet", row_group_size=1000)
    report, schema, _ = _stage(tmp_path, data)
    assert report["features"]["identifiers"] == {}
    assert "num_1" in schema["numeric"]


def test_a_small_dataset_is_not_judged(tmp_path):
    data = make_shards(tmp_path / "data", rows=MIN_ROWS - 100, shards=2)
    report, schema, lines = _stage(tmp_path, data)
    assert report["features"]["identifiers"] == {} and "id" in schema["numeric"]
    assert not [m for m in lines if m.startswith("identifier-like")]


def test_text_ids_and_ids_with_missing_values_are_flagged_and_repeated_values_are_not(tmp_path):
    rows = 3000
    rng = np.random.default_rng(0)
    order = rng.permutation(rows)
    table = pa.table({
        "order_id": pa.array([f"o-{i:06d}" for i in order]),  # text, unique, in no order
        "user": pa.array(rng.integers(0, 10**12, rows), mask=rng.random(rows) < 0.2),  # unique where present
        "amount_cents": pa.array(rng.integers(0, 50_000, rows)),  # integers that repeat
        "city": pa.array(rng.choice(["a", "b", "c"], rows)),
        "x": pa.array(rng.normal(size=rows)),
        "y": pa.array(rng.integers(0, 2, rows)),
    })
    report, schema, _ = _stage(tmp_path, _write(table, tmp_path / "data", shards=2), label="y")
    assert report["features"]["identifiers"] == {"order_id": {"reasons": [UNIQUE], "kept": False},
                                                 "user": {"reasons": [UNIQUE], "kept": False}}
    assert schema["numeric"] == ["amount_cents", "x"] and schema["categorical"] == ["city"]


def test_uniqueness_is_checked_across_blocks_on_sampled_hashes():
    ids = pa.table({"i": pa.array(np.arange(4000, dtype=np.int64))})
    repeat = pa.table({"i": pa.array(np.arange(2000, 6000, dtype=np.int64)[::-1].copy())})  # overlaps the first
    kinds = {"i": "integer"}
    unique = merge_blocks([to_bytes(block_stats(ids.slice(0, 2000), kinds, 1.0)),
                           to_bytes(block_stats(ids.slice(2000), kinds, 1.0))], kinds)["i"]
    assert unique.reasons() == [UNIQUE, MONOTONIC]
    both = merge_blocks([to_bytes(block_stats(t, kinds, 1.0)) for t in (ids, repeat)], kinds)["i"]
    assert both.reasons() == []  # each block unique and ordered; together neither
    sampled = merge_blocks([to_bytes(block_stats(t, kinds, 0.5)) for t in (ids, repeat)], kinds)["i"]
    assert sampled.reasons() == []  # a repeated value is sampled with its repeats
    assert 1000 < sum(h.size for h in block_stats(ids, kinds, 0.5)["i"].hashes) < 3000


REAL = [s for s in datasets() if not s.generated]


@pytest.mark.parametrize("spec", REAL, ids=[s.name for s in REAL])
def test_nothing_real_is_flagged_in_the_public_datasets_and_a_row_number_is(tmp_path, spec):
    table = spec.load(0)
    table = table.append_column("row", pa.array(np.arange(table.num_rows)))  # the one identifier
    report, schema, _ = _stage(tmp_path, _write(table, tmp_path / "data", shards=2), *spec.sets, label=spec.label)
    found = report["features"]["identifiers"]
    if table.num_rows < MIN_ROWS:
        assert found == {} and "row" in schema["numeric"]
    else:
        assert found == {"row": {"reasons": [UNIQUE, MONOTONIC], "kept": False}}
        assert "row" not in schema["numeric"] and "row" in schema["ignored"]


def test_the_corpus_has_public_datasets_large_enough_to_be_judged():
    judged = [s.name for s in REAL if s.load(0).num_rows >= MIN_ROWS]
    assert {"fair", "randhie", "titanic"} <= set(judged)


def test_requests_carry_the_left_out_and_dropped_columns_but_not_unknown_ones(tmp_path):
    from raygbm.serving.request import RequestError, RequestSchema

    data = make_shards(tmp_path / "data", rows=3000, shards=2, seed=4)
    cfg = load_config(None, ["data.drop=[cat_4]"], {"data.source": str(data), "data.label": "label"})
    with raygbm_home(tmp_path / "home"):
        run = preprocess(cfg, runner=LocalRunner()).run_dir
    schema = RequestSchema(Preprocessor.from_json((run / "preprocessor.json").read_text()))
    assert {"id", "cat_4", "event_time"} <= schema.ignored and not {"id", "cat_4", "label"} & set(schema.fields)
    raw = pq.read_table(data).slice(0, 3).to_pylist()
    rows = [{k: v for k, v in r.items() if k != "label"} for r in raw]
    rows = [{**r, "event_time": r["event_time"].isoformat()} for r in rows]
    features = [{k: r[k] for k in schema.fields} for r in rows]
    np.testing.assert_array_equal(schema.parse_records(rows).features, schema.parse_records(features).features)
    for extra in ({"label": 1}, {"row_number": 1}, {"ID": 1}):
        with pytest.raises(RequestError, match="1 unknown field"):
            schema.parse_records([{**rows[0], **extra}])
    # The OpenAPI schema: the fields stay the properties; the ignored columns are allowed by name.
    from jsonschema import Draft202012Validator

    record = schema.json_schema()["oneOf"][0]
    assert list(record["properties"]) == list(schema.fields)
    validator = Draft202012Validator(schema.json_schema())
    good = rows[0]
    assert validator.is_valid(good) and validator.is_valid([good, good])
    assert not validator.is_valid({**good, "idx": 1}) and not validator.is_valid({**good, "i": 1})


def test_ignored_names_are_matched_literally_by_the_openapi_pattern():
    import re

    from raygbm.serving.request import _regex_literal

    names = ["a.b", "x-y", "p(q)|r", "über", "$ref", "back\\slash", "sp ace"]
    pattern = re.compile(f"^(?:{'|'.join(_regex_literal(n) for n in names)})$")
    assert all(pattern.match(n) for n in names)
    assert not any(pattern.match(n) for n in ("aXb", "x", "p(q)", "r", "uber", "ref", "back", "sp"))

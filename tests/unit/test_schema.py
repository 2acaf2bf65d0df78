"""Shard checks run in the driver before any data is produced; Ray is not needed for them."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raygbm.config import DataConfig, SplitConfig
from raygbm.data.schema import check_shards, infer_schema, list_shards
from raygbm.errors import DataError


def _retype(path: Path, column: str, type_: pa.DataType) -> None:
    t = pq.read_table(path)
    i = t.column_names.index(column)
    pq.write_table(t.set_column(i, column, t.column(column).cast(type_)), path)


def test_good_shards(shards_dir):
    s = check_shards(str(shards_dir), label="label")
    assert len(s.shards) == 4 and s.num_rows == 4000
    assert not s.quarantined
    assert s.fingerprint() == check_shards(str(shards_dir), label="label").fingerprint()


def test_fingerprint_changes_with_content(shards_dir):
    before = check_shards(str(shards_dir), label="label").fingerprint()
    _retype(shards_dir / "part-00001.parquet", "num_0", pa.float64())  # rewrite, same schema
    t = pq.read_table(shards_dir / "part-00001.parquet")
    pq.write_table(t.slice(1), shards_dir / "part-00001.parquet")
    assert check_shards(str(shards_dir), label="label", quarantine=True).fingerprint() != before


def test_corrupt_shard_named(shards_dir):
    p = shards_dir / "part-00002.parquet"
    p.write_bytes(p.read_bytes()[:-100])  # truncated: footer gone
    with pytest.raises(DataError, match=r"part-00002\.parquet: .*(corrupt|not a Parquet)"):
        check_shards(str(shards_dir), label="label")


def test_garbage_shard_named(shards_dir):
    (shards_dir / "part-00002.parquet").write_bytes(b"PAR1" + b"\x00" * 50 + b"\xff\xff\x00\x00PAR1")
    with pytest.raises(DataError, match=r"part-00002\.parquet: corrupt Parquet file"):
        check_shards(str(shards_dir), label="label")


def test_lossless_type_change_is_caught(shards_dir):
    # pyarrow would silently cast int32 -> int64 when reading the dataset: we refuse it.
    _retype(shards_dir / "part-00003.parquet", "id", pa.int32())
    with pytest.raises(DataError, match=r"part-00003\.parquet: column type changed: id is int32, expected int64"):
        check_shards(str(shards_dir), label="label")


def test_missing_column_and_extra_column(shards_dir):
    t = pq.read_table(shards_dir / "part-00000.parquet")
    pq.write_table(t.drop_columns(["num_3"]), shards_dir / "part-00000.parquet")
    with pytest.raises(DataError, match=r"part-00000\.parquet: missing column num_3"):
        check_shards(str(shards_dir), label="label")
    pq.write_table(t.append_column("extra", pa.array([1] * t.num_rows)), shards_dir / "part-00000.parquet")
    with pytest.raises(DataError, match=r"part-00000\.parquet: unexpected column extra"):
        check_shards(str(shards_dir), label="label")


def test_missing_label_column(shards_dir):
    with pytest.raises(DataError, match=r"part-00000\.parquet: label column 'target' not found"):
        check_shards(str(shards_dir), label="target")


def test_empty_directory_and_missing_source(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no Parquet shards found in .*empty"):
        check_shards(str(tmp_path / "empty"), label="label")
    with pytest.raises(DataError, match="data source not found"):
        check_shards(str(tmp_path / "nothing"), label="label")


def test_stray_file_named_hidden_files_ignored(shards_dir):
    (shards_dir / "_SUCCESS").write_text("")
    (shards_dir / ".part-00000.parquet.crc").write_text("x")
    assert len(check_shards(str(shards_dir), label="label").shards) == 4
    (shards_dir / "README.txt").write_text("notes")
    with pytest.raises(DataError, match=r"README\.txt: not a Parquet file"):
        check_shards(str(shards_dir), label="label")


def test_quarantine_skips_and_lists(shards_dir):
    (shards_dir / "notes.txt").write_text("notes")
    _retype(shards_dir / "part-00003.parquet", "num_1", pa.float32())
    s = check_shards(str(shards_dir), label="label", quarantine=True)
    assert [Path(p.path).name for p in s.quarantined] == ["notes.txt", "part-00003.parquet"]
    assert len(s.shards) == 3


def test_majority_schema_wins(shards_dir):
    # The first shard is the odd one out: it is named, not the three good ones.
    _retype(shards_dir / "part-00000.parquet", "num_2", pa.float32())
    with pytest.raises(DataError, match=r"part-00000\.parquet"):
        check_shards(str(shards_dir), label="label")


def test_glob_and_single_file_and_file_uri(shards_dir):
    assert len(list_shards(str(shards_dir / "part-0000[01].parquet"))[1]) == 2
    assert len(list_shards(str(shards_dir / "part-00000.parquet"))[1]) == 1
    assert len(list_shards(f"file://{shards_dir}")[1]) == 4


def test_infer_schema_roles(shards_dir):
    arrow = check_shards(str(shards_dir), label="label").schema
    s = infer_schema(arrow, DataConfig(label="label", drop=["id"]), SplitConfig(time="event_time"))
    assert s.label == "label" and s.time == "event_time"
    assert "id" not in s.features and "event_time" not in s.features and "label" not in s.features
    assert s.categorical == ["cat_0", "cat_1", "cat_2", "cat_3", "cat_4"]
    assert len(s.numeric) == 12
    # Overrides: an integer column as categorical, and an explicit numeric list.
    s2 = infer_schema(arrow, DataConfig(label="label", categorical=["id"], numeric=["num_0"]), SplitConfig())
    assert s2.numeric == ["num_0"] and s2.categorical == ["id"]


@pytest.mark.parametrize(
    "data, split, match",
    [
        (DataConfig(label="nope"), SplitConfig(), "label column 'nope' not found"),
        (DataConfig(label="label"), SplitConfig(key="nokey"), "split.key column 'nokey' not found"),
        (DataConfig(label="label"), SplitConfig(time="cat_0"), "not a time or number"),
        (DataConfig(label="label", numeric=["cat_0"]), SplitConfig(), "not a number"),
        (DataConfig(label="label", drop=["ghost"]), SplitConfig(), "data.drop names unknown column"),
    ],
)
def test_infer_schema_errors(shards_dir, data, split, match):
    arrow = check_shards(str(shards_dir), label="label").schema
    with pytest.raises(DataError, match=match):
        infer_schema(arrow, data, split)

"""The labelled-traffic store the loop's parts share: staged parts, the last label wins, filters."""

import pyarrow as pa
import pytest

from raygbm.monitoring.labelled import (
    LABELLED_AT,
    MODEL_VERSION,
    PREDICTION_ID,
    SCORE,
    SERVED_AT,
    labelled_dir,
    read_labelled,
    training_rows,
    write_labelled,
)


def _rows(ids, labels, versions, served, labelled):
    return pa.table({"x": [float(i) for i in range(len(ids))], "y": labels, PREDICTION_ID: ids,
                     MODEL_VERSION: versions, SERVED_AT: served, LABELLED_AT: labelled, SCORE: [0.5] * len(ids)})


def test_the_last_label_of_a_prediction_wins_and_rows_come_in_serving_order(tmp_path):
    write_labelled(tmp_path, "m", _rows(["c", "a", "b"], [0, 1, 1], ["1", "1", "2"], [3.0, 1.0, 2.0], [5.0] * 3))
    write_labelled(tmp_path, "m", _rows(["a"], [0], ["1"], [1.0], [6.0]))
    table = read_labelled(tmp_path, "m")
    assert table[PREDICTION_ID].to_pylist() == ["a", "b", "c"]
    assert table["y"].to_pylist() == [0, 1, 0]
    assert read_labelled(tmp_path, "m", versions=["2"])[PREDICTION_ID].to_pylist() == ["b"]
    assert read_labelled(tmp_path, "m", since=2.5)[PREDICTION_ID].to_pylist() == ["c"]
    assert training_rows(table).column_names == ["x", "y"]


def test_parts_are_renamed_into_place_and_empty_or_incomplete_tables_write_nothing(tmp_path):
    assert read_labelled(tmp_path, "m") is None
    assert write_labelled(tmp_path, "m", _rows([], [], [], [], [])) is None
    with pytest.raises(ValueError, match="_score"):
        write_labelled(tmp_path, "m", _rows(["a"], [1], ["1"], [1.0], [1.0]).drop_columns([SCORE]))
    part = write_labelled(tmp_path, "m", _rows(["a"], [1], ["1"], [1.0], [1.0]))
    assert [p.name for p in labelled_dir(tmp_path, "m").iterdir()] == [part.name]


def test_relabelling_one_id_many_times_keeps_few_parts_and_the_last_label(tmp_path):
    """1,500 labels for one prediction (and one other row): compaction keeps the store at most COMPACT_AT
    parts, with each prediction's last label; without it the store would hold 1,501 parts."""
    from raygbm.monitoring.labelled import COMPACT_AT

    write_labelled(tmp_path, "m", _rows(["other"], [1], ["1"], [0.5], [0.5]))
    for i in range(1500):
        write_labelled(tmp_path, "m", _rows(["a"], [i % 2], ["1"], [1.0], [2.0 + i]))
    parts = list(labelled_dir(tmp_path, "m").glob("part-*.parquet"))
    assert 1 <= len(parts) <= COMPACT_AT
    assert not list(labelled_dir(tmp_path, "m").glob(".*"))  # no staged file left behind
    table = read_labelled(tmp_path, "m")
    assert table[PREDICTION_ID].to_pylist() == ["other", "a"] and table["y"].to_pylist() == [1, 1499 % 2]
    assert table[LABELLED_AT].to_pylist() == [0.5, 2.0 + 1499]


def test_a_compaction_cut_short_leaves_rows_twice_which_readers_resolve(tmp_path):
    """A crash after the merged part is renamed into place but before the old parts are deleted: every row
    is then in two parts, and a read still gives each prediction once with its last label."""
    import shutil

    from raygbm.monitoring.labelled import compact

    write_labelled(tmp_path, "m", _rows(["a", "b"], [0, 0], ["1", "1"], [1.0, 2.0], [3.0, 3.0]), compact_at=100)
    write_labelled(tmp_path, "m", _rows(["a"], [1], ["1"], [1.0], [4.0]), compact_at=100)
    folder = labelled_dir(tmp_path, "m")
    saved = tmp_path / "saved"
    shutil.copytree(folder, saved)
    merged = compact(tmp_path, "m")
    assert [p.name for p in folder.glob("part-*.parquet")] == [merged.name]
    for p in saved.glob("part-*.parquet"):  # the deletions that did not happen
        shutil.copy(p, folder / p.name)
    table = read_labelled(tmp_path, "m")
    assert table[PREDICTION_ID].to_pylist() == ["a", "b"] and table["y"].to_pylist() == [1, 0]

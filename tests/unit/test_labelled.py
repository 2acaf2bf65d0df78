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

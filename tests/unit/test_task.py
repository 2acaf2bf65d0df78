"""Which task a label means, as scikit-learn's type_of_target decides: two distinct values are binary
whatever their type; the data stage (block statistics merged) and Preprocessor.fit agree, and the
predictions come back in the label's own values."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raygbm.config import TrainConfig, load_config
from raygbm.data.features import Preprocessor
from raygbm.data.preprocess import LocalRunner, preprocess
from raygbm.data.stats import MAX_TRACKED_LABEL_VALUES, TableStats, numeric_stats
from raygbm.data.task import explain_task, resolve_task
from raygbm.errors import DataError
from raygbm.registry.bundle import Bundle
from raygbm.training.train import RunMeta, train_in_process
from tests.conftest import make_shards


def _task(values: list, type_: pa.DataType | None = None) -> str:
    table = pa.table({"y": pa.array(values, type_)})
    stats = TableStats.of(table, [], [], "y", pa.types.is_floating(table.schema.field("y").type), None)
    return explain_task(table.schema.field("y").type, stats.label)[0]


@pytest.mark.parametrize("values, type_, task", [
    ([0.0, 1.0, 1.0, None, 0.0], pa.float64(), "binary"),  # what pandas gives for a CSV column with a gap
    ([0.0, 1.0, 0.5, 1.0], pa.float64(), "regression"),  # three values, one not integral
    ([1.5, 2.5] * 3, pa.float32(), "binary"),  # two values are binary, even non-integral ones
    ([0.0, 1.0, 2.0, 3.0], pa.float64(), "multiclass"),
    (list(np.linspace(0, 1, 1000)), pa.float64(), "regression"),
    ([True, False, True], pa.bool_(), "binary"),
    (["yes", "no", "no"], pa.string(), "binary"),
    ([3, 7, 3], pa.int64(), "binary"),
    ([0, 1, 2], pa.int64(), "multiclass"),
    (list(range(60)), pa.int64(), "regression"),
    (list(range(60)), pa.float64(), "regression"),  # integral but more classes than multiclass takes
])
def test_the_task_of_a_label(values, type_, task):
    assert _task(values, type_) == task


def test_a_constant_label_is_an_error():
    with pytest.raises(DataError, match="1 distinct value"):
        _task([1.0, 1.0, None], pa.float64())


def test_distinct_values_merge_across_blocks_and_survive_transport():
    a, b = (numeric_stats(pa.array(v), None, distinct=True) for v in ([0.0, 1.0], [1.0, 0.0, None]))
    a.merge(b)
    assert a.distinct == [0.0, 1.0]
    back = TableStats.from_bytes(TableStats(rows=5, label=a).to_bytes()).label
    assert back.distinct == [0.0, 1.0]
    many = numeric_stats(pa.array(np.arange(MAX_TRACKED_LABEL_VALUES, dtype=float)), None, distinct=True)
    more = numeric_stats(pa.array([1000.0]), None, distinct=True)
    many.merge(more)
    assert many.distinct is None  # too many to be classes: continuous
    task, classes, why = resolve_task("auto", "y", pa.float64(), a)
    assert (task, classes) == ("binary", [0.0, 1.0]) and "2 distinct values" in why
    with pytest.raises(DataError, match="discrete label"):
        resolve_task("binary", "y", pa.float64(), many)
    assert resolve_task("regression", "y", pa.float64(), a)[0] == "regression"  # data.task overrides


@pytest.mark.parametrize("cast", [pa.float64(), pa.bool_(), "yes/no"])
def test_the_data_stage_trains_float_bool_and_string_two_value_labels_as_binary(tmp_path, home, cast):
    data = make_shards(tmp_path / "data", rows=3000, shards=2)
    for part in sorted(data.glob("*.parquet")):
        t = pq.read_table(part)
        y = t.column("label")
        y = pc_yes_no(y) if cast == "yes/no" else y.cast(cast)
        pq.write_table(t.set_column(t.column_names.index("label"), "label", y), part)
    said: list[str] = []
    cfg = load_config(None, ["data.drop=[id]"], {"data.source": str(data), "data.label": "label"})
    meta = RunMeta.load(preprocess(cfg, runner=LocalRunner(), progress=said.append).run_dir)
    assert meta.task == "binary" and "task: binary (" in " ".join(said)
    pre = Preprocessor.from_json((meta.run_dir / "preprocessor.json").read_text())
    expected = {"yes/no": ["no", "yes"], pa.bool_(): [False, True], pa.float64(): [0.0, 1.0]}[cast]
    assert pre.label_classes_ == expected
    booster = train_in_process(meta, TrainConfig(num_boost_round=5, early_stopping_rounds=None)).booster
    prediction, _ = Bundle(meta.run_dir, booster, pre, {}).labelled(np.array([0.1, 0.9]))
    assert prediction == expected  # in the label's own values


def pc_yes_no(y: pa.ChunkedArray) -> pa.ChunkedArray:
    import pyarrow.compute as pc

    return pc.if_else(pc.equal(y, 1), "yes", "no")

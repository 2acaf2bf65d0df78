"""Training in-process on a run directory made by the local (no-Ray) runner."""

import sys
import time

import lightgbm as lgb
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from raygbm.config import TrainConfig, load_config
from raygbm.data.preprocess import LocalRunner, preprocess
from raygbm.errors import ConfigError
from raygbm.training.train import ReportEveryK, RunMeta, lgb_datasets, lgb_params, train_in_process
from tests.conftest import make_shards


@pytest.fixture
def run_dir(tmp_path, home):
    data = make_shards(tmp_path / "data", rows=12_000, shards=2)
    cfg = load_config(None, ["data.drop=[id]"], {"data.source": str(data), "data.label": "label"})
    return preprocess(cfg, runner=LocalRunner()).run_dir


def test_in_process_training_learns_and_stops_early(run_dir):
    meta = RunMeta.load(run_dir)
    assert meta.task == "binary" and meta.categorical == ["cat_0", "cat_1", "cat_2", "cat_3", "cat_4"]
    r = train_in_process(meta, TrainConfig(num_boost_round=400, early_stopping_rounds=10, params={"learning_rate": 0.3}))
    assert r.best_iteration < 400  # early stopping on validation ended it
    test = meta.split("test")
    X = test.drop_columns(["label"])
    auc = roc_auc_score(np.asarray(test["label"]), r.booster.predict(X))
    assert auc > 0.75
    assert r.metrics["score"] == r.metrics["validation-binary_logloss"] < 0.6


def _splits(node: dict):
    if "split_feature" in node:
        yield node
        yield from _splits(node["left_child"])
        yield from _splits(node["right_child"])


def test_categorical_features_are_split_as_categories(run_dir):
    # The generator gives every cat_0 and cat_1 category its own effect on the label, so a model that
    # sees them as categorical splits on them by category sets ('=='), never by threshold ('<=').
    meta = RunMeta.load(run_dir)
    r = train_in_process(meta, TrainConfig(num_boost_round=60, early_stopping_rounds=None, params={"learning_rate": 0.3}))
    dumped = r.booster.dump_model()
    names = dumped["feature_names"]
    splits = [(names[n["split_feature"]], n["decision_type"]) for t in dumped["tree_info"] for n in _splits(t["tree_structure"])]
    assert {f for f, kind in splits if kind == "=="} >= {"cat_0", "cat_1"}
    assert all(kind == "==" for f, kind in splits if f in meta.categorical)
    assert all(kind == "<=" for f, kind in splits if f not in meta.categorical)
    # LightGBM records the categorical columns (by index) and their category codes in the model itself.
    indices = ",".join(str(names.index(c)) for c in meta.categorical)
    assert f"[categorical_feature: {indices}]" in r.booster.model_to_string()
    assert all(dumped["feature_infos"][c]["values"] for c in meta.categorical)
    assert dumped["pandas_categorical"] is None  # codes come from our preprocessor, not pandas categories


def test_report_every_k_rounds_only(run_dir):
    meta = RunMeta.load(run_dir)
    calls = []
    cb = ReportEveryK(10, 25, lambda m, model: calls.append((m["iteration"], model is not None)))
    tr = meta.split("train")
    params = lgb_params(TrainConfig(), meta.task, meta.num_classes, 1)
    dtrain, dvalid = lgb_datasets(tr, meta.split("validation"), meta.label, meta.categorical)
    lgb.train(params, dtrain, num_boost_round=53, valid_sets=[dvalid], valid_names=["validation"], callbacks=[cb])
    assert calls == [(10, False), (20, False), (25, True), (30, False), (40, False), (50, True), (53, True)]


def test_objectives():
    t = TrainConfig()
    assert lgb_params(t, "binary", 2, 1)["objective"] == "binary"
    p = lgb_params(t, "multiclass", 3, 2)
    assert p["objective"] == "multiclass" and p["num_class"] == 3 and p["num_threads"] == 2
    assert lgb_params(t, "regression", None, 1)["metric"] == "rmse"


def test_reserved_params_rejected():
    with pytest.raises(ConfigError, match="train.params: .*num_threads"):
        load_config(None, ["train.params={num_threads: 8}"])
    cfg = load_config(None, ["train.params={num_leaves: 7}"])
    assert cfg.train.params["num_leaves"] == 7 and cfg.train.params["learning_rate"] == 0.05


def test_not_a_run_dir(tmp_path):
    from raygbm.errors import DataError

    with pytest.raises(DataError, match="not a preprocess run"):
        RunMeta.load(tmp_path)


def test_background_reporter_keeps_order_and_surfaces_errors():
    import threading

    from raygbm.training.train import BackgroundReporter

    seen = []
    release = threading.Event()

    def blocked_send(metrics, text):
        assert release.wait(10), "the test never released the sender"
        seen.append((metrics["i"], text))

    r = BackgroundReporter(blocked_send)
    for i in range(5):
        r.submit({"i": i}, "m" if i % 2 else None)  # returns while the first send is still blocked
    assert seen == []
    release.set()
    r.close()
    assert seen == [(0, None), (1, "m"), (2, None), (3, "m"), (4, None)]

    def failing(metrics, text):
        raise RuntimeError("storage unreachable")

    bad = BackgroundReporter(failing)
    bad.submit({"i": 0}, None)
    with pytest.raises(RuntimeError, match="storage unreachable"):
        bad.close()


def test_part_slices_cut_every_row_into_contiguous_shards_of_near_equal_size():
    from raygbm.errors import DataError
    from raygbm.training.train import part_slices

    parts = [("a", 5), ("b", 0), ("c", 7), ("d", 3)]
    shards = part_slices(parts, 4)
    assert shards == [[("a", 0, 3)], [("a", 3, 2), ("c", 0, 2)], [("c", 2, 4)], [("c", 6, 1), ("d", 0, 3)]]
    for workers in (1, 2, 3, 15):
        sizes = [sum(n for _, _, n in s) for s in part_slices(parts, workers)]
        assert sum(sizes) == 15 and max(sizes) - min(sizes) <= 1
    with pytest.raises(DataError, match="15 training rows for 16 workers"):
        part_slices(parts, 16)


def test_each_workers_slices_read_exactly_its_rows_across_files_and_row_groups(tmp_path):
    # read_rows is what each of a worker's Ray Data read tasks runs on one slice (engine.ParquetSlices).
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raygbm.data.blocks import read_rows
    from raygbm.training.train import part_slices, split_parts

    split = tmp_path / "train"
    split.mkdir()
    for i, (lo, hi) in enumerate([(0, 25), (25, 40), (40, 70)]):
        pq.write_table(pa.table({"x": list(range(lo, hi)), "y": [v * 2 for v in range(lo, hi)]}),
                       split / f"part-{i}.parquet", row_group_size=4)
    parts = split_parts([split])
    assert [rows for _, rows in parts] == [25, 15, 30]
    shards = [pa.concat_tables([read_rows(path, first, n, ["x"]) for path, first, n in s]) for s in part_slices(parts, 3)]
    assert [t.column_names for t in shards] == [["x"]] * 3
    assert [t["x"].to_pylist() for t in shards] == [list(range(0, 23)), list(range(23, 46)), list(range(46, 70))]


def test_the_ingest_groups_a_workers_slices_into_few_read_tasks_that_keep_their_order(tmp_path):
    # Each read task boots a Ray worker process: consecutive slices share one up to task_rows rows.
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raygbm.data.engine import ParquetSlices

    for i, (lo, hi) in enumerate([(0, 40), (40, 80), (80, 120), (120, 130)]):
        pq.write_table(pa.table({"x": list(range(lo, hi))}), tmp_path / f"part-{i}.parquet", row_group_size=7)
    slices = [(str(tmp_path / f"part-{i}.parquet"), 0, n) for i, n in enumerate([40, 40, 40, 10])]
    tasks = ParquetSlices(slices, ["x"], task_rows=100).get_read_tasks(1)
    assert [t.metadata.num_rows for t in tasks] == [120, 10]  # a task fills past task_rows, then a new one
    blocks = [block for t in tasks for block in t.read_fn()]
    assert [b.num_rows for b in blocks] == [40, 40, 40, 10]  # a block per slice, in the slices' order
    assert pa.concat_tables(blocks)["x"].to_pylist() == list(range(130))
    assert len(ParquetSlices(slices, ["x"]).get_read_tasks(1)) == 1  # 130 rows: one task by default


def test_the_loop_clock_counts_this_threads_cpu_and_its_wait_for_a_core():
    from raygbm.training.train import loop_clock, thread_clock

    start, t, cpu = thread_clock(), time.perf_counter(), time.thread_time()
    while time.thread_time() - cpu < 0.1:  # busy: CPU time, not sleep
        pass
    clock, wall = loop_clock(start), time.perf_counter() - t
    assert 0.1 <= clock["loop_cpu_s"] <= wall + 0.01
    if sys.platform == "linux":  # on a core or waiting for one: never more than the wall time between
        assert 0.0 <= clock["loop_runqueue_s"] and clock["loop_cpu_s"] + clock["loop_runqueue_s"] <= wall + 0.01

"""The data stage end to end on a real local Ray, real Parquet files, real run directories."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raygbm.config import load_config
from raygbm.data.features import Preprocessor
from raygbm.data.preprocess import preprocess
from raygbm.data.split import SPLIT_NAMES, assign_split, row_hash, time_cutoffs, time_values
from raygbm.errors import DataError
from tests.conftest import make_shards


def _cfg(data: Path, *sets: str):
    return load_config(None, list(sets), {"data.source": str(data), "data.label": "label"})


def _matrix(t: pa.Table) -> np.ndarray:
    m = np.column_stack([np.asarray(t[c], dtype=np.float64) for c in t.column_names])
    return m[np.lexsort(m.T[::-1])]


def test_outputs_match_an_independent_single_process_computation(tmp_path, home):
    data = make_shards(tmp_path / "data", rows=20_000, shards=4)
    cfg = _cfg(data, "data.drop=[id]", "features.derived=[{name: pq, op: product, inputs: [num_1, num_2]}]",
               "data.bounds={num_11: {min: 20, max: 80}}")
    r = preprocess(cfg)
    run = r.run_dir
    assert run.parent == home / "runs" and not r.cached
    for f in ("preprocessor.json", "schema.json", "data_report.json", "config.yaml", "manifest.json"):
        assert (run / f).is_file()
    rep = r.report
    assert rep["rows_read"] == 20_000 and rep["rows_out_total"] == 20_000 and rep["task"] == "binary"
    assert rep["columns"]["num_11"]["below_bounds"] > 0 and "num_11" in rep["out_of_bounds"]
    assert rep["columns"]["pq"]["role"] == "derived"
    # Every file listed in the manifest, with its sha256.
    manifest = json.loads((run / "manifest.json").read_text())["sha256"]
    files = [p for p in run.rglob("*") if p.is_file() and p.name != "manifest.json"]
    assert sorted(str(p.relative_to(run)) for p in files) == sorted(manifest)
    for p in files:
        assert hashlib.sha256(p.read_bytes()).hexdigest() == manifest[str(p.relative_to(run))]
    # Recompute the split and the features in one process from the raw shards.
    raw = pq.read_table(data)
    pre = Preprocessor.from_json((run / "preprocessor.json").read_text())
    codes = assign_split(raw, cfg.split, row_hashes=row_hash(raw, raw.column_names))
    expected = pre.transform_table(raw)
    for code, name in enumerate(SPLIT_NAMES):
        got = pq.read_table(run / name)
        assert got.num_rows == rep["rows_out"][name] > 0
        assert got.column_names == pre.feature_names_ + ["label"]
        np.testing.assert_array_equal(_matrix(got), _matrix(expected.filter(pa.array(codes == code))))
    # The preprocessor was fitted on the training rows only.
    train_raw = raw.filter(pa.array(codes == 0))
    med = float(np.nanmedian(np.asarray(train_raw["num_6"].to_numpy(zero_copy_only=False), dtype=float)))
    assert pre.impute_["num_6"] == pytest.approx(med, abs=1e-12)


def test_rerun_is_reused_and_changes_are_not(tmp_path, home):
    data = make_shards(tmp_path / "data", rows=5000, shards=2)
    first = preprocess(_cfg(data))
    again = preprocess(_cfg(data))
    assert again.cached and again.run_dir == first.run_dir
    other_seed = preprocess(_cfg(data, "split.seed=3"))
    assert not other_seed.cached and other_seed.run_dir != first.run_dir
    t = pq.read_table(data / "part-00001.parquet")
    pq.write_table(t.slice(0, t.num_rows - 1), data / "part-00001.parquet")
    changed = preprocess(_cfg(data))
    assert not changed.cached and changed.report["rows_read"] == 4999
    assert not [p for p in (home / "runs").iterdir() if p.name.startswith(".staging")]


def test_time_split_and_derived_time_features(tmp_path, home):
    data = make_shards(tmp_path / "data", rows=8000, shards=4)
    r = preprocess(_cfg(data, "split.time=event_time", "features.derived=[{name: hour, op: hour, inputs: [event_time]}]"))
    assert r.report["split_method"] == "time"
    assert r.report["rows_out"] == {"train": 5600, "validation": 1200, "test": 1200}
    pre = Preprocessor.from_json((r.run_dir / "preprocessor.json").read_text())
    raw = pq.read_table(data)
    times = time_values(raw["event_time"])
    codes = assign_split(raw, load_config(None, ["split.time=event_time"]).split, cutoffs=time_cutoffs(times, load_config(None, ["split.time=event_time"]).split))
    assert times[codes == 0].max() < times[codes == 2].min()  # train is the past, test the most recent
    expected = pre.transform_table(raw)
    for code, name in enumerate(SPLIT_NAMES):
        got = pq.read_table(r.run_dir / name)
        np.testing.assert_array_equal(_matrix(got), _matrix(expected.filter(pa.array(codes == code))))
    hours = np.asarray(pq.read_table(r.run_dir / "train")["hour"])
    assert hours.min() >= 0 and hours.max() <= 23 and len(np.unique(hours)) == 24


def test_key_split_is_stable_when_shards_are_recut(tmp_path, home):
    a = make_shards(tmp_path / "a", rows=9000, shards=3)
    b = make_shards(tmp_path / "b", rows=9000, shards=5)  # same rows, cut differently
    ra = preprocess(_cfg(a, "split.key=id"))
    rb = preprocess(_cfg(b, "split.key=id"))
    for name in SPLIT_NAMES:
        np.testing.assert_array_equal(_matrix(pq.read_table(ra.run_dir / name)), _matrix(pq.read_table(rb.run_dir / name)))


def test_missing_labels_dropped_and_duplicates_counted_then_dropped(tmp_path, home):
    data = make_shards(tmp_path / "data", rows=6000, shards=3)
    p0 = data / "part-00000.parquet"
    t = pq.read_table(p0)
    t = t.set_column(t.column_names.index("label"), "label", pa.array(np.asarray(t["label"]), mask=np.arange(t.num_rows) < 25))
    pq.write_table(t, p0)
    # 40 rows of shard 1 appear again in shard 2 (exact duplicates across shards), 10 of them twice more.
    t1 = pq.read_table(data / "part-00001.parquet")
    t2 = pq.read_table(data / "part-00002.parquet")
    pq.write_table(pa.concat_tables([t2, t1.slice(0, 40), t1.slice(0, 10)]), data / "part-00002.parquet")
    counted = preprocess(_cfg(data))
    assert counted.report["rows_missing_label"] == 25
    assert counted.report["rows_duplicate"] == 50
    assert counted.report["rows_out_total"] == 6050 - 25
    dropped = preprocess(_cfg(data, "data.duplicates=drop"))
    assert dropped.report["rows_out_total"] == 6050 - 25 - 50
    # Exactly the unlabelled rows went, and every kept row kept its own label: with no data.drop the row
    # id is a feature, so the runs' (id, label) pairs must be the labelled raw rows' pairs (once each when
    # duplicates are dropped).
    raw = pq.read_table(data)
    labelled = _id_label_pairs(raw.filter(raw["label"].is_valid()))
    assert len(labelled) == 6050 - 25 and not {i for i, _ in labelled} & set(range(25))
    assert _id_label_pairs(_all_splits(counted.run_dir)) == labelled
    assert _id_label_pairs(_all_splits(dropped.run_dir)) == sorted(set(labelled))


def _all_splits(run: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(run / name) for name in SPLIT_NAMES])


def _id_label_pairs(t: pa.Table) -> list[tuple[int, int]]:
    ids = np.asarray(t["id"], dtype=np.float64)
    labels = t["label"]
    assert labels.null_count == 0
    return sorted(zip(ids.astype(np.int64).tolist(), np.asarray(labels, dtype=np.int64).tolist()))


def test_quarantine_skips_bad_shards(tmp_path, home):
    data = make_shards(tmp_path / "data", rows=6000, shards=3)
    (data / "junk.bin").write_bytes(b"\x00" * 100)
    r = preprocess(_cfg(data, "data.quarantine=true"))
    assert [Path(q["path"]).name for q in r.report["quarantined"]] == ["junk.bin"]
    assert r.report["rows_read"] == 6000
    with pytest.raises(DataError, match="junk.bin"):
        preprocess(_cfg(data))


def test_corrupt_data_page_found_while_reading(tmp_path, home, capfd):
    # The footer is intact, so the checks pass; the damage shows only when a read task reads the pages.
    data = make_shards(tmp_path / "data", rows=6000, shards=3)
    p = data / "part-00001.parquet"
    raw = bytearray(p.read_bytes())
    meta = pq.ParquetFile(p).metadata
    col = meta.row_group(0).column(5)
    start = col.data_page_offset
    raw[start + 20 : start + 4000] = b"\xff" * (4000 - 20)
    p.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"part-00001\.parquet: corrupt Parquet data") as e:
        preprocess(_cfg(data))
    # One line: neither Ray's remote trace nor Ray Data's retry advice, and no trace on the console.
    assert "\n" not in str(e.value) and type(e.value) is DataError
    printed = capfd.readouterr()
    assert "Traceback" not in printed.out + printed.err
    runs = home / "runs"
    assert not runs.exists() or not any(runs.iterdir())


@pytest.mark.parametrize("task, expected", [("multiclass", "multiclass"), ("regression", "regression")])
def test_task_inference(tmp_path, home, task, expected):
    data = make_shards(tmp_path / "data", rows=4000, shards=2, task=task)
    r = preprocess(_cfg(data))
    assert r.report["task"] == expected
    pre = Preprocessor.from_json((r.run_dir / "preprocessor.json").read_text())
    train = pq.read_table(r.run_dir / "train")
    if expected == "multiclass":
        assert pre.label_classes_ == [0, 1, 2] and train.schema.field("label").type == pa.int32()
    else:
        assert pre.label_classes_ is None and train.schema.field("label").type == pa.float64()


def test_job_entry_point(tmp_path, home, capsys):
    from pipelines.preprocess import main

    data = make_shards(tmp_path / "data", rows=4000, shards=2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  source: {data}\n  label: label\n  drop: [id]\n")
    with pytest.raises(SystemExit) as e:
        main(["--config", str(cfg), "--set", "split.seed=5"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "run directory:" in out and "4,000 rows in 2 shards" in out
    assert len([p for p in (home / "runs").iterdir()]) == 1


def test_ray_and_local_runners_write_identical_runs(tmp_path, home):
    from raygbm.data.preprocess import LocalRunner

    data = make_shards(tmp_path / "data", rows=6000, shards=3)
    cfg = _cfg(data, "split.time=event_time", "data.duplicates=drop")
    ray_run = preprocess(cfg)
    ray_manifest = json.loads((ray_run.run_dir / "manifest.json").read_text())["sha256"]
    local_run = preprocess(cfg, runner=LocalRunner(), force=True)
    assert local_run.run_dir == ray_run.run_dir
    local_manifest = json.loads((local_run.run_dir / "manifest.json").read_text())["sha256"]
    parquet = {k: v for k, v in ray_manifest.items() if k.endswith(".parquet")}
    assert parquet and parquet == {k: v for k, v in local_manifest.items() if k.endswith(".parquet")}
    assert ray_manifest["preprocessor.json"] == local_manifest["preprocessor.json"]


def test_ray_data_progress_reaches_our_progress_lines_and_no_bar_is_printed(tmp_path, home, capfd, monkeypatch):
    from raygbm.data import blocks

    monkeypatch.setattr(blocks, "PROGRESS_EVERY_S", 0.0)
    data = make_shards(tmp_path / "data", rows=6000, shards=3)
    lines: list[str] = []
    preprocess(_cfg(data, "resources.read_chunk_rows=1000"), progress=lines.append)
    profiling = [line for line in lines if line.startswith("profiling:")]
    # Six blocks of 1,000 rows; blocks finish in any order, each counted once, the last without a line.
    assert profiling and profiling[-1] == "profiling: 5 of 6 blocks (83%)", lines
    assert [int(line.split()[1]) for line in profiling] == sorted({int(line.split()[1]) for line in profiling})
    printed = capfd.readouterr()
    assert "Running Dataset" not in printed.out + printed.err and "row/s" not in printed.out + printed.err


def test_an_empty_shard_keeps_every_blocks_place_on_ray_data(tmp_path, home):
    # An empty shard is a read block Ray Data never hands to a map function; the profile pass's split codes
    # still reach the right blocks, and the run is the one LocalRunner writes.
    from raygbm.data.preprocess import LocalRunner

    data = make_shards(tmp_path / "data", rows=6000, shards=3)
    first = data / "part-00000.parquet"
    pq.write_table(pq.read_table(first).slice(0, 0), data / "part-00000-empty.parquet")
    cfg = _cfg(data, "data.duplicates=drop", "resources.read_chunk_rows=1000")
    ray_run = preprocess(cfg)
    local_run = preprocess(cfg, runner=LocalRunner(), force=True)
    assert ray_run.report["rows_read"] == 6000 and ray_run.report["shards"] == 4
    manifests = [json.loads((r.run_dir / "manifest.json").read_text())["sha256"] for r in (ray_run, local_run)]
    assert manifests[0] == {**manifests[1], "data_report.json": manifests[0]["data_report.json"]}

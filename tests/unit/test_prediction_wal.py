"""The prediction log's write-ahead files (``monitoring.wal``): what a replica wrote before answering
comes back into the log after the monitor lost it, once, and the files go once settled. No Ray."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pyarrow as pa
import pytest

from raygbm.monitoring import wal as walmod
from raygbm.monitoring.feedback import LabelSpec, join
from raygbm.monitoring.labelled import PREDICTION_ID, SCORE, WINDOW
from raygbm.monitoring.prediction_log import PredictionLog, RawRows
from raygbm.monitoring.wal import WalReader, WalWriter, frame, read_records, wal_dir

FIELDS = ["x", "c"]
TYPES = {"x": "double", "c": "string"}


def _part(start: int, n: int) -> RawRows:
    records = [{"x": float(i), "c": f"c{i % 3}"} for i in range(start, start + n)]
    return RawRows(ids=[f"id{i}" for i in range(start, start + n)], body=json.dumps(records).encode())


def _served(writer: WalWriter, start: int, n: int, ts: float | None = None) -> RawRows:
    part = _part(start, n)
    writer.append(frame("1", time.time() if ts is None else ts, part, np.arange(start, start + n) / 1e4))
    return part


def _log(tmp_path, **kw) -> PredictionLog:
    return PredictionLog(tmp_path / "m" / "predictions", FIELDS, TYPES, flush_s=3600, wal=wal_dir(tmp_path, "m"), **kw)


def test_records_of_every_kind_round_trip_and_a_torn_tail_ends_the_file(tmp_path):
    w = WalWriter(wal_dir(tmp_path, "m"))
    _served(w, 0, 3)
    table = pa.table({"x": [1.5, 2.5], "c": ["a", None]})
    w.append(frame("2", 5.0, RawRows(ids=pa.array(["t.0", "t.1"]), table=table), np.array([0.25, 0.75])))
    w.append(frame("2", 6.0, RawRows(ids=["o1"], records=[{"x": 3, "c": "b"}]), np.array([[0.2, 0.8]])))
    (path,) = WalReader(wal_dir(tmp_path, "m")).files()
    with open(path, "ab") as f:  # a record cut short by a crash
        f.write(frame("2", 7.0, _part(9, 1), np.array([0.5]))[:-3])
    records, end = read_records(path)
    assert [r.kind for r in records] == ["body", "table", "records"] and end == path.stat().st_size - len(
        frame("2", 7.0, _part(9, 1), np.array([0.5]))) + 3
    assert records[0].ids == ["id0", "id1", "id2"] and records[0].scores.tolist() == [0.0, 1e-4, 2e-4]
    back = RawRows(**records[1].parts())
    assert back.table.equals(table) and back.ids.to_pylist() == ["t.0", "t.1"]
    assert records[2].parts()["records"] == [{"x": 3, "c": "b"}] and records[2].scores.shape == (1, 2)
    # A corrupted byte (CRC) also ends the reading there.
    data = bytearray(path.read_bytes())
    data[30] ^= 0xFF
    path.write_bytes(bytes(data))
    assert read_records(path)[0] == []


def test_a_restarted_monitor_puts_back_exactly_the_rows_it_lost(tmp_path):
    w = WalWriter(wal_dir(tmp_path, "m"))
    log = _log(tmp_path)
    for start in (0, 10, 20):  # served and written ahead; the first two also reached the log, and one was written
        part = _served(w, start, 10)
        if start < 20:
            log.add("1", time.time(), [part], np.arange(start, start + 10) / 1e4, np.zeros(10))
        if start == 0:
            log.flush()
    # The monitor dies here: its buffer (ids 10-19) and the batch on its way (20-29) are gone.
    again = _log(tmp_path)
    summary = again.summary()
    assert summary["logged_predictions"] == 30 and summary["recovered_rows"] == 20
    pos = again.lookup(pa.array([f"id{i}" for i in range(30)]))
    assert (pos >= 0).all() and len(set(pos.tolist())) == 30  # each once
    rows, _ = again.rows(again.lookup(pa.array(["id25"])))
    assert rows.column("x").to_pylist() == [25.0] and rows.column(SCORE).to_pylist() == [25 / 1e4]
    assert rows.column(WINDOW).to_pylist() == [None]  # its drift window is not known
    # The batch that was on its way arrives after all: not logged twice.
    again.add("1", time.time(), [_part(20, 10)], np.arange(20, 30) / 1e4, np.zeros(10))
    assert again.summary()["logged_predictions"] == 30 and "id20" not in again.recovered


def test_a_label_for_a_row_still_on_its_way_is_joined(tmp_path):
    w = WalWriter(wal_dir(tmp_path, "m"))
    log = _log(tmp_path)
    _served(w, 0, 5)  # answered; its batch has not reached the monitor yet
    joined = join(log, pa.array(["id3", "nope"]), pa.array([1, 0]), LabelSpec("label", "int64", "binary", [0, 1]))
    assert joined.counts()["accepted"] == 1 and joined.counts()["unknown_ids"] == 1


def test_settled_files_go_after_their_rows_are_written_and_young_ones_stay(tmp_path, monkeypatch):
    w = WalWriter(wal_dir(tmp_path, "m"))
    log = _log(tmp_path)
    old = _served(w, 0, 4, ts=time.time() - 100)
    log.add("1", time.time(), [old], np.zeros(4), np.zeros(4))
    w.close()
    (first,) = log.wal.files()
    settled = time.time() - walmod.ROTATE_S - walmod.GRACE_S - 1
    os.rename(first, first.with_name(f"{int(settled * 1000):013d}-{first.name.split('-', 1)[1]}"))
    lost = _served(w, 100, 3, ts=time.time() - 60)  # a batch the monitor never got, in a newer file
    young = _served(w, 200, 2)  # just answered: left to the normal path by the sweep
    log._last_sweep = 0.0
    log.flush()
    names = [p.name for p in log.wal.files()]
    assert len(names) == 1 and not names[0].startswith(f"{int(settled * 1000):013d}")
    assert (log.lookup(pa.array(lost.ids)) >= 0).all() and (log.lookup(pa.array(young.ids)) < 0).all()
    assert log.summary()["recovered_rows"] == 3 and log.summary()["parts"] == 1


def test_sampling_is_by_id_so_recovery_keeps_the_same_rows(tmp_path):
    w = WalWriter(wal_dir(tmp_path, "m"))
    parts = [_served(w, k * 100, 100) for k in range(10)]
    log = _log(tmp_path, sample_rate=0.3)
    kept = log.summary()["logged_predictions"]
    assert 200 < kept < 400
    for p in parts:  # the normal path's copies of the same rows: nothing more is kept
        log.add("1", time.time(), [p], np.zeros(100), np.zeros(100))
    assert log.summary()["logged_predictions"] == kept


def test_a_writer_rotates_and_a_write_failure_is_kept_not_raised(tmp_path, monkeypatch):
    w = WalWriter(wal_dir(tmp_path, "m"))
    _served(w, 0, 1)
    monkeypatch.setattr(walmod, "ROTATE_S", 0.0)
    _served(w, 1, 1)
    assert len(WalReader(wal_dir(tmp_path, "m")).files()) == 2
    blocked = WalWriter(tmp_path / "file-not-folder" / "wal")
    (tmp_path / "file-not-folder").write_text("")
    assert blocked.append(b"x") is None and "write-ahead" in blocked.error


@pytest.mark.parametrize("fsync", [False, True])
def test_append_returns_the_fd_to_sync_only_when_asked(tmp_path, fsync):
    w = WalWriter(wal_dir(tmp_path, "m"), fsync=fsync)
    fd = w.append(frame("1", 1.0, _part(0, 1), np.array([0.5])))
    assert (fd is not None) == fsync
    assert [r.ids for r in WalReader(wal_dir(tmp_path, "m")).read()] == [["id0"]]
    assert PREDICTION_ID == "_prediction_id"
